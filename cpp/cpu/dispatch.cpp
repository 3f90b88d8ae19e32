// The CPU entry points of kernels.h: one table of function pointers per instruction-set
// level built into this library, and the choice among them, made once from CPUID and
// STEEPEST_CPU_ISA. Compiled once, for the baseline CPU. The levels listed here are the
// ones CMakeLists.txt compiles (STEEPEST_CPU_LEVELS).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

#include "isa_level.h"
#include "steepest/kernels.h"

namespace steepest::cpu {

// The definitions of every level, each compiled from the same kernel files.
#define KERNEL(name, params) void name params;
#if defined(STEEPEST_CPU_NATIVE)
namespace native {
#include "steepest/kernels.def"
}
#else
namespace baseline {
#include "steepest/kernels.def"
}
#if STEEPEST_X86
namespace avx2 {
#include "steepest/kernels.def"
}
namespace avx512 {
#include "steepest/kernels.def"
}
#endif
#endif
#undef KERNEL

namespace {

struct Table {
#define KERNEL(name, params) void(*name) params;
#include "steepest/kernels.def"
#undef KERNEL
};

struct Level {
  const char* name;
  Table table;
  bool (*supported)();
};

#define KERNEL(name, params) &STEEPEST_TABLE_LEVEL::name,
#if defined(STEEPEST_CPU_NATIVE)
#define STEEPEST_TABLE_LEVEL native
// Built for the building CPU: there is nothing to choose.
const Level kLevels[] = {{"native", {
#include "steepest/kernels.def"
                                    },
                          [] { return true; }}};
#undef STEEPEST_TABLE_LEVEL
#else
#define STEEPEST_TABLE_LEVEL baseline
const Level kLevels[] = {{"baseline", {
#include "steepest/kernels.def"
                                      },
                          [] { return true; }},
#undef STEEPEST_TABLE_LEVEL
#if STEEPEST_X86
// The feature sets of cpp/cpu/isa_begin.h. __builtin_cpu_supports also checks that the
// operating system saves the AVX and AVX-512 registers.
#define STEEPEST_TABLE_LEVEL avx2
                         {"avx2", {
#include "steepest/kernels.def"
                                  },
                          [] {
                            return __builtin_cpu_supports("avx2") &&
                                   __builtin_cpu_supports("fma") &&
                                   __builtin_cpu_supports("f16c");
                          }},
#undef STEEPEST_TABLE_LEVEL
#define STEEPEST_TABLE_LEVEL avx512
                         {"avx512", {
#include "steepest/kernels.def"
                                    },
                          [] {
                            return __builtin_cpu_supports("avx2") &&
                                   __builtin_cpu_supports("fma") &&
                                   __builtin_cpu_supports("f16c") &&
                                   __builtin_cpu_supports("avx512f") &&
                                   __builtin_cpu_supports("avx512bw") &&
                                   __builtin_cpu_supports("avx512vl") &&
                                   __builtin_cpu_supports("avx512dq") &&
                                   __builtin_cpu_supports("avx512cd");
                          }},
#undef STEEPEST_TABLE_LEVEL
#endif
};
#endif
#undef KERNEL

constexpr int kLevelCount = sizeof(kLevels) / sizeof(kLevels[0]);

struct Choice {
  const Level* level;
  std::string warning;
};

// The best level the CPU supports, capped by STEEPEST_CPU_ISA: a level above the CPU's
// falls back to the CPU's best (a cap, not a demand); an unknown name is ignored with a
// warning, as is the variable in a native build.
Choice choose() {
#if STEEPEST_X86
  __builtin_cpu_init();
#endif
  int best = 0;
  while (best + 1 < kLevelCount && kLevels[best + 1].supported()) ++best;
  const char* cap = std::getenv("STEEPEST_CPU_ISA");
  if (!cap || !*cap) return {&kLevels[best], {}};
#if defined(STEEPEST_CPU_NATIVE)
  return {&kLevels[best], std::string("STEEPEST_CPU_ISA=") + cap +
                              " is ignored: this build of steepest is compiled for the CPU "
                              "it was built on (STEEPEST_NATIVE=ON)"};
#else
  std::string names;
  for (int i = 0; i < kLevelCount; ++i) {
    if (std::strcmp(cap, kLevels[i].name) == 0) return {&kLevels[std::min(i, best)], {}};
    names += std::string(i ? ", " : "") + kLevels[i].name;
  }
  return {&kLevels[best], std::string("STEEPEST_CPU_ISA=") + cap + " is not one of " + names +
                              "; using " + kLevels[best].name +
                              ", the best level this CPU supports"};
#endif
}

const Choice& chosen();

// Points every entry at the chosen level's kernel.
void install(const Table& table) {
#define KERNEL(name, params) ::steepest::cpu::name = table.name;
#include "steepest/kernels.def"
#undef KERNEL
}

const Choice& chosen() {
  static const Choice choice = [] {
    Choice c = choose();
    install(c.level->table);
    return c;
  }();
  return choice;
}

// An entry's value before the choice is made (a call from another static initialiser):
// makes the choice, then calls the chosen kernel.
template <class F, F Table::*Entry>
struct FirstCall;
template <class... Args, void (*Table::*Entry)(Args...)>
struct FirstCall<void (*)(Args...), Entry> {
  static void call(Args... args) { (chosen().level->table.*Entry)(std::forward<Args>(args)...); }
};

// The choice is made while the library loads, before any kernel is called from Python.
const bool kChosenAtLoad = (chosen(), true);

}  // namespace

#define KERNEL(name, params) \
  void(*name) params = &FirstCall<void(*) params, &Table::name>::call;
#include "steepest/kernels.def"
#undef KERNEL

const char* cpu_isa_name() { return chosen().level->name; }
const char* cpu_isa_warning() { return chosen().warning.c_str(); }

}  // namespace steepest::cpu
