// The instruction-set level a CPU kernel file is compiled for. CMakeLists.txt compiles
// each kernel file once per level through a generated wrapper that defines
// STEEPEST_ISA_NS (the level's inline namespace: baseline, avx2, avx512, or native for a
// STEEPEST_NATIVE build) and STEEPEST_ISA_LEVEL, then includes isa_begin.h, the file and
// isa_end.h. Every function of a kernel file and of the headers here lives in
// steepest::cpu::STEEPEST_ISA_NS, so no symbol built for one level can be picked by the
// linker for another; dispatch.cpp chooses the level at run time (see kernels.h).
#pragma once

#define STEEPEST_ISA_BASELINE 0
#define STEEPEST_ISA_AVX2 1
#define STEEPEST_ISA_AVX512 2
// Whatever the compiler's own flags allow (-march=native, or a header included on its
// own, as tests/test_vmath.py does).
#define STEEPEST_ISA_NATIVE 3

#ifndef STEEPEST_ISA_NS
#define STEEPEST_ISA_NS native
#define STEEPEST_ISA_LEVEL STEEPEST_ISA_NATIVE
#endif

#if defined(__x86_64__) || defined(__i386__)
#define STEEPEST_X86 1
#else
#define STEEPEST_X86 0
#endif

// F16C's conversions may be used without a run-time check: the AVX2 and AVX-512 levels
// require it of the CPU.
#if STEEPEST_X86 && (STEEPEST_ISA_LEVEL == STEEPEST_ISA_AVX2 ||   \
                     STEEPEST_ISA_LEVEL == STEEPEST_ISA_AVX512 || \
                     (STEEPEST_ISA_LEVEL == STEEPEST_ISA_NATIVE && defined(__F16C__)))
#define STEEPEST_ISA_F16C 1
#else
#define STEEPEST_ISA_F16C 0
#endif
