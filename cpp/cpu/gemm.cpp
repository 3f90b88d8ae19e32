// GEMM in the Goto/BLIS structure: for each KC×NC panel of op(B) (packed by each thread
// for its own use, or once and shared, see run_panels) and each MC×KC block of op(A)
// (packed per thread), a register-blocked micro-kernel computes MR×NR tiles of C.
// Packing absorbs the four transpose combinations and zero-pads the ragged edges, so the
// kernel has no slow path; partial tiles go through a small buffer. When C fits one MC
// block (the batch-sized products of training), each B sliver is packed just before use
// instead, or read in place. The micro-kernel is picked once at run time: AVX-512F, else
// AVX2+FMA, else portable C++, within what the file's instruction-set level allows
// (isa_level.h; the kernel files are built with x86 flags, so other CPUs have the
// portable one only). Threads split C into row blocks × column slivers; products too
// small to repay waking the OpenMP team run on the calling thread, and batches of such
// products run one per thread. float16/bfloat16 operands are widened to float while they
// are packed, so the product runs the float kernel with float accumulation and no widened
// copy of A or B ever exists; C is accumulated in a float block and rounded once.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "gemm_kernels.h"
#include "gemm_microkernel.h"
#include "gemm_source.h"
#include "loops.h"
#include "steepest/kernels.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {
namespace {

using gemm_detail::Isa;
using gemm_detail::Shape;

// Below this many multiply-adds per thread (about 2 µs of work) a product runs on fewer
// threads: waking the team costs more than the split saves. Measured on 2 cores: 64³ and
// 80³ are no faster on two threads, 32×256×64 (the digits MLP's first layer) is 1.5x.
constexpr int64_t kMinWorkPerThread = int64_t{1} << 18;

template <class Tp>
struct ScalarOps {
  using T = Tp;
  using V = Tp;
  static constexpr int kLanes = 1;
  static V zero() { return V(0); }
  static V load(const T* p) { return *p; }
  static void store(T* p, V v) { *p = v; }
  static V broadcast(T x) { return x; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V mul(V a, V b) { return a * b; }
};

template <class T>
void micro_kernel_scalar(int64_t kc, const T* a, const T* b, int64_t ldb, T* c, int64_t ldc,
                         T alpha, T beta) {
  using S = Shape<T, Isa::Scalar>;
  gemm_detail::micro_kernel<ScalarOps<T>, S::kMr, S::kNr>(kc, a, b, ldb, c, ldc, alpha, beta);
}

// The best micro-kernel this file's level may run (isa_level.h): each level calls only
// kernels whose instructions it requires of the CPU; a native build, compiled for the
// building CPU, may call them all. Avx512Bf16 also needs AVX512_BF16, which the level
// does not require, so it is checked at run time (as in a native build).
#if !STEEPEST_X86 || STEEPEST_ISA_LEVEL == STEEPEST_ISA_BASELINE
constexpr Isa kLevelIsa = Isa::Scalar;
#elif STEEPEST_ISA_LEVEL == STEEPEST_ISA_AVX2
constexpr Isa kLevelIsa = Isa::Avx2;
#else
constexpr Isa kLevelIsa = Isa::Avx512Bf16;
#endif

// The best kernel the CPU runs within the level (Avx512Bf16 only serves bfloat16
// operands; the others then use Avx512). Avx512Bf16 is taken only where its instruction
// outpaces FMA (bf16_dot_outpaces_fma), unless STEEPEST_GEMM_ISA=avx512bf16 asks for it;
// STEEPEST_GEMM_ISA=avx512|avx2|scalar caps the choice, so the tests can check every
// kernel on a machine that has more.
Isa detect_isa() {
  Isa isa = Isa::Scalar;
  const char* cap = std::getenv("STEEPEST_GEMM_ISA");
#if STEEPEST_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f"))
    isa = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16")
              ? Isa::Avx512Bf16
              : Isa::Avx512;
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    isa = Isa::Avx2;
#endif
  isa = std::min(isa, kLevelIsa);
  if constexpr (kLevelIsa >= Isa::Avx512Bf16) {
    const bool pairs_asked = cap && std::strcmp(cap, "avx512bf16") == 0;
    if (isa == Isa::Avx512Bf16 && !pairs_asked && !gemm_detail::bf16_dot_outpaces_fma())
      isa = Isa::Avx512;
  }
  if (!cap) return isa;
  const Isa capped = std::strcmp(cap, "scalar") == 0  ? Isa::Scalar
                     : std::strcmp(cap, "avx2") == 0  ? Isa::Avx2
                     : std::strcmp(cap, "avx512") == 0 ? Isa::Avx512
                                                       : isa;
  return std::min(isa, capped);
}

template <class T>
class PackBuffer {
 public:
  T* get(size_t count) {
    if (count > capacity_) {
      data_.reset(static_cast<T*>(::operator new(count * sizeof(T), std::align_val_t{64})));
      capacity_ = count;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(T* p) const { ::operator delete(p, std::align_val_t{64}); }
  };
  std::unique_ptr<T, Free> data_;
  size_t capacity_ = 0;
};

// One product C = alpha · op(A) · op(B) + beta · C, computed in T from operands stored
// as S (T itself, or a 16-bit type widened to T by the packing). B may instead be stored
// as SB = T holding values of any precision (a float32 master weight) that the packing
// rounds to S, so the product is the one with B cast to S, without that copy.
template <class T, class S = T, class SB = S>
struct Product {
  using Storage = S;
  const S* a;
  int64_t lda;
  bool trans_a;
  const SB* b;
  int64_t ldb;
  bool trans_b;
  T* c;
  int64_t ldc;
  int64_t m, n, k;
  T alpha, beta;
  const GemmSource<T>* b_source;  // when set, op(B) comes from it instead of b
};

// [begin, end) of part `i` of `parts` near-equal pieces of `count` units.
struct Range {
  int64_t begin, end;
};
Range split(int64_t count, int64_t i, int64_t parts) {
  return {count * i / parts, count * (i + 1) / parts};
}

// C = beta · C, with beta == 0 writing zeros (C may hold NaN or garbage).
template <class T, class S, class SB>
void scale_c(const Product<T, S, SB>& p) {
  for (int64_t i = 0; i < p.m; ++i) {
    T* row = p.c + i * p.ldc;
    if (p.beta == T(0))
      std::fill(row, row + p.n, T(0));
    else if (p.beta != T(1))
      for (int64_t j = 0; j < p.n; ++j) row[j] *= p.beta;
  }
}

template <class T, Isa isa>
struct Driver {
  using Blocking = Shape<T, isa>;
  static constexpr int kMr = Blocking::kMr, kNr = Blocking::kNr;
  // Avx512Bf16 packs bfloat16 bits as k-pairs (gemm_avx512.cpp), padding an odd depth.
  static constexpr bool kPairs = isa == Isa::Avx512Bf16;
  using Packed = std::conditional_t<kPairs, uint16_t, T>;
  static int64_t packed_depth(int64_t kc) { return kPairs ? (kc + 1) / 2 * 2 : kc; }

  static const uint16_t* bits(const BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }

  // Operands stored as float (holding bfloat16 values, GemmArgs::bf16_products) are
  // rounded into a per-thread bfloat16 block first: rows × cols of src into dst with
  // row stride dst_ld. Rows past `rows` up to `pad_rows` are zero.
  static const uint16_t* narrowed(const float* src, int64_t ld, int64_t rows, int64_t pad_rows,
                                  int64_t cols, int64_t dst_ld) {
    thread_local PackBuffer<BFloat16> block;
    BFloat16* dst = block.get(static_cast<size_t>(std::max<int64_t>(pad_rows, 1) * dst_ld));
    for (int64_t r = 0; r < rows; ++r) store_compute(src + r * ld, dst + r * dst_ld, cols);
    std::fill(dst + rows * dst_ld, dst + pad_rows * dst_ld, BFloat16{});
    return bits(dst);
  }

  static void kernel(int64_t kc, const Packed* a, const Packed* b, int64_t ldb, T* c,
                     int64_t ldc, T alpha, T beta) {
    if constexpr (kPairs)
      gemm_detail::micro_kernel_avx512_bf16(kc, a, b, c, ldc, alpha, beta);
    else if constexpr (isa == Isa::Avx512)
      gemm_detail::micro_kernel_avx512(kc, a, b, ldb, c, ldc, alpha, beta);
    else if constexpr (isa == Isa::Avx2)
      gemm_detail::micro_kernel_avx2(kc, a, b, ldb, c, ldc, alpha, beta);
    else
      micro_kernel_scalar<T>(kc, a, b, ldb, c, ldc, alpha, beta);
  }

  // A row-major B is read in place, without packing, when C is at most this many rows:
  // each sliver of B then feeds too few tiles to repay copying it (measured with the
  // digits MLP's 32-row products; beyond 4·MR rows packing wins on 1024-wide B).
  // Except, with AVX2 (measured on Zen 3; AVX-512 not measured), rows a multiple of
  // 4 KiB apart: a sliver's KC rows then fall into a few sets of L1 and L2 and evict each
  // other between the tiles that reuse them (24×1024·1024×1024: 42 GFLOP/s in place, 72
  // packed; 512- and 768-wide B stay faster in place).
  static constexpr int64_t kDirectRows = 4 * kMr;
  template <class S, class SB>
  static bool direct_b(const Product<T, S, SB>& p) {
    if (isa == Isa::Avx2 && p.ldb * int64_t{sizeof(T)} % 4096 == 0) return false;
    return std::is_same_v<S, T> && std::is_same_v<SB, T> && !kPairs && !p.b_source &&
           !p.trans_b && p.m <= kDirectRows;
  }

  // dst[k·width + i] = src[i·ld + k] for k < kc, i < rows; 0 for rows <= i < width.
  static void pack_transposed(const T* src, int64_t ld, int64_t rows, int width, int64_t kc,
                              T* dst) {
    if constexpr (isa == Isa::Avx512 || isa == Isa::Avx2) {
      constexpr int lanes = (isa == Isa::Avx512 ? 64 : 32) / sizeof(T);
      for (int i0 = 0; i0 < width; i0 += lanes) {
        const int64_t valid = std::max<int64_t>(0, rows - i0);
        const int part = std::min(lanes, width - i0);
        if constexpr (isa == Isa::Avx512)
          gemm_detail::pack_transposed_avx512(src + i0 * ld, ld, valid, part, kc, dst + i0, width);
        else
          gemm_detail::pack_transposed_avx2(src + i0 * ld, ld, valid, part, kc, dst + i0, width);
      }
    } else {
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t k = 0; k < kc; ++k) dst[k * width + i] = src[i * ld + k];
      for (int64_t i = rows; i < width; ++i)
        for (int64_t k = 0; k < kc; ++k) dst[k * width + i] = T(0);
    }
  }

  // n values of an operand stored as Src, in T at the precision of S: widened from 16
  // bits, or rounded to S when Src is T (Product's SB).
  template <class S, class Src>
  static void load_operand(const Src* src, T* dst, int64_t n) {
    if constexpr (std::is_same_v<Src, T> && !std::is_same_v<S, T>)
      round_compute<S>(src, dst, n);
    else
      load_compute(src, dst, n);
  }

  // pack_transposed from rows stored as Src and read at the precision of S; unless both
  // are T, the rows go through a per-thread scratch of rows × kc first (load_operand).
  template <class S, class Src>
  static void pack_transposed_as(const Src* src, int64_t ld, int64_t rows, int width,
                                 int64_t kc, T* dst) {
    if constexpr (std::is_same_v<S, T> && std::is_same_v<Src, T>) {
      pack_transposed(src, ld, rows, width, kc, dst);
    } else {
      thread_local PackBuffer<T> scratch;
      T* widened = scratch.get(static_cast<size_t>(std::max<int64_t>(rows, 1) * kc));
      for (int64_t i = 0; i < rows; ++i) load_operand<S>(src + i * ld, widened + i * kc, kc);
      pack_transposed(static_cast<const T*>(widened), kc, rows, width, kc, dst);
    }
  }

  // Slivers [s0, s1) of `width` columns each, from a row-major source whose first `cols`
  // columns are valid (the rest pack as 0): dst[(s·kc + k)·width + i] = src[k·ld + s·width + i],
  // read at the precision of S (load_operand). The slivers go in groups whose share of a
  // row is about 512 contiguous bytes, each group reading its rows in order: a whole panel
  // at once would write one stream per sliver, KC·NR apart (64 for 1024 columns), more
  // than L1's ways and the store buffer merge.
  template <int width, class S, class Src>
  static void pack_copied(const Src* src, int64_t ld, int64_t cols, int64_t s0, int64_t s1,
                          int64_t kc, T* dst) {
    constexpr int64_t kGroup = std::max<int64_t>(1, 512 / (width * sizeof(Src)));
    // A group's run of a row is too short for the hardware prefetcher to pick up, so the
    // run kAhead rows on is fetched while this one is copied.
    constexpr int64_t kAhead = 8, kLine = 64 / sizeof(Src);
    for (int64_t g0 = s0; g0 < s1; g0 += kGroup) {
      const int64_t g1 = std::min(g0 + kGroup, s1);
      const int64_t run = std::min((g1 - g0) * width, cols - g0 * width);
      const Src* rows = src + g0 * width;
      for (int64_t k = 0; k < kc; ++k, rows += ld) {
        if (k + kAhead < kc)
          for (int64_t i = 0; i < run; i += kLine) __builtin_prefetch(rows + kAhead * ld + i);
        for (int64_t s = g0; s < g1; ++s) {
          T* d = dst + (s * kc + k) * width;
          const Src* row = rows + (s - g0) * width;
          const int64_t valid = std::min<int64_t>(width, cols - s * width);
          if constexpr (std::is_same_v<S, T> && std::is_same_v<Src, T>) {
            // memcpy: the element loop, whose pointers may alias, compiles to scalar moves.
            if (valid == width) {
              std::memcpy(d, row, width * sizeof(T));
              continue;
            }
            for (int64_t i = 0; i < valid; ++i) d[i] = row[i];
          } else {
            load_operand<S>(row, d, valid);
          }
          for (int64_t i = valid; i < width; ++i) d[i] = T(0);
        }
      }
    }
  }

  // Rows [i0, i0+mc) × depth [k0, k0+kc) of op(A) as MR-row slivers, k-major.
  template <class S, class SB>
  static void pack_a(const Product<T, S, SB>& p, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
                     Packed* dst) {
    const int64_t slivers = (mc + kMr - 1) / kMr;
    if constexpr (kPairs) {
      const int64_t depth = packed_depth(kc);
      for (int64_t s = 0; s < slivers; ++s) {
        const int64_t rows = std::min<int64_t>(kMr, mc - s * kMr), i = i0 + s * kMr;
        Packed* out = dst + s * kMr * depth;
        if (p.trans_a) {
          if constexpr (std::is_same_v<S, float>)
            gemm_detail::pack_pairs_across_rows_avx512(
                narrowed(p.a + k0 * p.lda + i, p.lda, kc, kc, rows, kMr), kMr, rows, kMr, kc, out);
          else
            gemm_detail::pack_pairs_across_rows_avx512(bits(p.a) + k0 * p.lda + i, p.lda, rows,
                                                       kMr, kc, out);
        } else {
          if constexpr (std::is_same_v<S, float>)
            gemm_detail::pack_pairs_along_rows_avx512(
                narrowed(p.a + i * p.lda + k0, p.lda, rows, rows, kc, kc), kc, rows, kMr, kc,
                out, kMr);
          else
            gemm_detail::pack_pairs_along_rows_avx512(bits(p.a) + i * p.lda + k0, p.lda, rows,
                                                      kMr, kc, out, kMr);
        }
      }
    } else {
      pack_a_widened(p, i0, mc, k0, kc, slivers, dst);
    }
  }

  template <class S, class SB>
  static void pack_a_widened(const Product<T, S, SB>& p, int64_t i0, int64_t mc, int64_t k0,
                             int64_t kc, int64_t slivers, T* dst) {
    // op(A)(i, k) is A(k, i) when transposed: each step of k is then a row of A.
    if (p.trans_a) {
      pack_copied<kMr, S>(p.a + k0 * p.lda + i0, p.lda, mc, 0, slivers, kc, dst);
      return;
    }
    for (int64_t s = 0; s < slivers; ++s)
      pack_transposed_as<S>(p.a + (i0 + s * kMr) * p.lda + k0, p.lda,
                            std::min<int64_t>(kMr, mc - s * kMr), kMr, kc, dst + s * kMr * kc);
  }

  // Slivers [s0, s1) of the depth [k0, k0+kc) × columns [j0, j0+nc) panel of op(B), each
  // NR columns wide, k-major.
  template <class S, class SB>
  static void pack_b(const Product<T, S, SB>& p, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
                     int64_t s0, int64_t s1, Packed* panel) {
    if constexpr (kPairs) {
      const int64_t depth = packed_depth(kc);
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t cols = std::min<int64_t>(kNr, nc - s * kNr), j = j0 + s * kNr;
        Packed* dst = panel + s * kNr * depth;
        if (p.b_source) {
          thread_local PackBuffer<T> sliver;
          T* values = sliver.get(static_cast<size_t>(kc * kNr));
          p.b_source->pack(k0, kc, j, cols, kNr, values);
          gemm_detail::pack_pairs_across_rows_avx512(narrowed(values, kNr, kc, kc, kNr, kNr),
                                                     kNr, kNr, kNr, kc, dst);
          continue;
        }
        const uint16_t* b = nullptr;
        int64_t ldb = p.ldb;
        if constexpr (std::is_same_v<SB, float>) {
          b = p.trans_b ? narrowed(p.b + j * p.ldb + k0, p.ldb, cols, kNr, kc, kc)
                        : narrowed(p.b + k0 * p.ldb + j, p.ldb, kc, kc, cols, kNr);
          ldb = p.trans_b ? kc : kNr;
        } else {
          b = bits(p.b) + (p.trans_b ? j * p.ldb + k0 : k0 * p.ldb + j);
        }
        if (!p.trans_b) {
          gemm_detail::pack_pairs_across_rows_avx512(b, ldb, cols, kNr, kc, dst);
          continue;
        }
        // Along rows, one call packs at most 16 columns.
        for (int64_t h = 0; h < kNr; h += 16)
          gemm_detail::pack_pairs_along_rows_avx512(
              b + h * ldb, ldb, std::clamp<int64_t>(cols - h, 0, 16), 16, kc, dst + 2 * h, kNr);
      }
    } else {
      pack_b_widened(p, k0, kc, j0, nc, s0, s1, panel);
    }
  }

  template <class S, class SB>
  static void pack_b_widened(const Product<T, S, SB>& p, int64_t k0, int64_t kc, int64_t j0,
                             int64_t nc, int64_t s0, int64_t s1, T* panel) {
    if constexpr (std::is_same_v<S, T>) {
      if (p.b_source) {
        for (int64_t s = s0; s < s1; ++s)
          p.b_source->pack(k0, kc, j0 + s * kNr, std::min<int64_t>(kNr, nc - s * kNr), kNr,
                           panel + s * kNr * kc);
        return;
      }
    }
    if (!p.trans_b) {
      pack_copied<kNr, S>(p.b + k0 * p.ldb + j0, p.ldb, nc, s0, s1, kc, panel);
      return;
    }
    for (int64_t s = s0; s < s1; ++s)
      pack_transposed_as<S>(p.b + (j0 + s * kNr) * p.ldb + k0, p.ldb,
                            std::min<int64_t>(kNr, nc - s * kNr), kNr, kc,
                            panel + s * kNr * kc);
  }

  // Threads form a tm × tn grid: tm row blocks of C, tn shares of each B panel's slivers,
  // chosen to keep each thread's part of C near square; ties go to rows (each thread then
  // reuses its own A block across the whole panel).
  static int row_parts(int threads, int64_t m, int64_t n) {
    int best = threads;
    double best_cost = 1e300;
    for (int tm = threads; tm >= 1; --tm) {
      if (threads % tm) continue;
      const int tn = threads / tm;
      const double rows = std::ceil(double(m) / (tm * kMr)) * kMr;
      const double cols = std::ceil(double(n) / (tn * kNr)) * kNr;
      const double cost = std::abs(std::log(rows / cols));
      if (cost < best_cost - 1e-9) {
        best = tm;
        best_cost = cost;
      }
    }
    return best;
  }

  static size_t panel_size(int64_t n, int64_t k) {
    const int64_t nc = std::min<int64_t>(Blocking::kNc, (n + kNr - 1) / kNr * kNr);
    return static_cast<size_t>(packed_depth(std::min<int64_t>(Blocking::kKc, k)) * nc);
  }

  // C fits one MC block: each thread packs all of A once per depth step and then its B
  // slivers, kStreamSlivers at a time (Shape), just before the tiles that use them, so B
  // goes from packing to the kernel through L2 instead of through a KC×NC panel in
  // memory, and threads never wait for each other. Packing several slivers together
  // reads each row of B in longer runs. A row-major B with few rows of C is not packed.
  static constexpr int64_t kStreamSlivers = Blocking::kStreamSlivers;
  template <class S, class SB>
  static void run_streamed(const Product<T, S, SB>& p, int t, int threads) {
    thread_local PackBuffer<Packed> a_buffer, b_buffer;
    const int64_t max_depth = packed_depth(std::min<int64_t>(Blocking::kKc, p.k));
    Packed* ap = a_buffer.get(static_cast<size_t>(Blocking::kMc * max_depth));
    Packed* bp = b_buffer.get(static_cast<size_t>(kStreamSlivers * kNr * max_depth));
    const bool direct = direct_b(p);
    const Range mine = split((p.n + kNr - 1) / kNr, t, threads);
    for (int64_t pc = 0; pc < p.k; pc += Blocking::kKc) {
      const int64_t kc = std::min<int64_t>(Blocking::kKc, p.k - pc), depth = packed_depth(kc);
      // Later depth steps add onto the partial sums already in C.
      const T beta = pc == 0 ? p.beta : T(1);
      pack_a(p, 0, p.m, pc, kc, ap);
      for (int64_t g0 = mine.begin; g0 < mine.end; g0 += kStreamSlivers) {
        const int64_t g1 = std::min(g0 + kStreamSlivers, mine.end);
        if (!direct)
          pack_b(p, pc, kc, g0 * kNr, std::min(g1 * kNr, p.n) - g0 * kNr, 0, g1 - g0, bp);
        for (int64_t s = g0; s < g1; ++s) {
          const int64_t j = s * kNr, cols = std::min<int64_t>(kNr, p.n - j);
          const Packed* b = bp + (s - g0) * kNr * depth;
          int64_t ldb = kNr;
          if constexpr (std::is_same_v<S, T> && std::is_same_v<SB, T> && !kPairs) {
            if (direct) {
              if (cols == kNr) {
                b = p.b + pc * p.ldb + j;
                ldb = p.ldb;
              } else {
                pack_b(p, pc, kc, j, cols, 0, 1, bp);
                b = bp;
              }
            }
          }
          for (int64_t ir = 0; ir < p.m; ir += kMr)
            tile(kc, ap + ir * depth, b, ldb, std::min<int64_t>(kMr, p.m - ir), cols,
                 p.c + ir * p.ldc + j, p.ldc, p.alpha, beta);
        }
      }
    }
  }

  // The share of thread t in the tm × tn grid: for each KC×NC panel of B and each MC
  // block of its rows, the tiles of its column slivers. With panels (a grid of both
  // several row blocks and several column shares), the threads pack each panel together
  // and panels[0..1] alternate between consecutive panels so that one barrier per panel
  // keeps packing and compute apart. Without, each thread packs the slivers it uses into
  // a panel of its own and never waits for another: a row split then packs B once per
  // thread, a small price next to a barrier per panel, which on a loaded machine can
  // wait for a descheduled thread to be woken.
  template <class S, class SB>
  static void run_panels(const Product<T, S, SB>& p, int t, int threads, int tm,
                         Packed* const panels[2]) {
    thread_local PackBuffer<Packed> a_buffer, own_panel;
    Packed* const own = panels ? nullptr : own_panel.get(panel_size(p.n, p.k));
    const int tn = threads / tm;
    const Range rows = split((p.m + kMr - 1) / kMr, t / tn, tm);
    const int64_t row_begin = rows.begin * kMr, row_end = std::min(p.m, rows.end * kMr);
    Packed* ap = a_buffer.get(
        static_cast<size_t>(Blocking::kMc * packed_depth(std::min<int64_t>(Blocking::kKc, p.k))));
    // The rows split into equal blocks of at most MC: a short last block would reuse each
    // B sliver over few tiles (256 rows: 128 + 128, not 192 + 64).
    const int64_t blocks = (row_end - row_begin + Blocking::kMc - 1) / Blocking::kMc;
    const int64_t mc_step = std::max<int64_t>(
        kMr, ((row_end - row_begin + blocks - 1) / blocks + kMr - 1) / kMr * kMr);
    int parity = 0;
    for (int64_t jc = 0; jc < p.n; jc += Blocking::kNc) {
      const int64_t nc = std::min<int64_t>(Blocking::kNc, p.n - jc);
      const int64_t slivers = (nc + kNr - 1) / kNr;
      const Range mine = split(slivers, t % tn, tn);
      for (int64_t pc = 0; pc < p.k; pc += Blocking::kKc) {
        const int64_t kc = std::min<int64_t>(Blocking::kKc, p.k - pc);
        Packed* bp = own ? own : panels[parity];
        parity ^= 1;
        const Range packed = own ? mine : split(slivers, t, threads);
        pack_b(p, pc, kc, jc, nc, packed.begin, packed.end, bp);
        if (!own) {
#pragma omp barrier
        }
        const T beta = pc == 0 ? p.beta : T(1);
        for (int64_t ic = row_begin; ic < row_end; ic += mc_step) {
          const int64_t mc = std::min<int64_t>(mc_step, row_end - ic);
          pack_a(p, ic, mc, pc, kc, ap);
          for (int64_t s = mine.begin; s < mine.end; ++s) {
            const int64_t j = jc + s * kNr, cols = std::min<int64_t>(kNr, jc + nc - j);
            for (int64_t ir = 0; ir < mc; ir += kMr)
              tile(kc, ap + ir * packed_depth(kc), bp + s * kNr * packed_depth(kc), kNr,
                   std::min<int64_t>(kMr, mc - ir),
                   cols, p.c + (ic + ir) * p.ldc + j, p.ldc, p.alpha, beta);
          }
        }
      }
    }
  }

  // One MR×NR tile. A partial tile is computed in full into a buffer (the packing made
  // the missing rows and columns zero) and only its valid part is merged into C, except
  // that AVX2 has kernels for the last rows of full-width tiles.
  static void tile(int64_t kc, const Packed* a, const Packed* b, int64_t ldb, int64_t rows,
                   int64_t cols,
                   T* c, int64_t ldc, T alpha, T beta) {
    if (rows == kMr && cols == kNr) {
      kernel(kc, a, b, ldb, c, ldc, alpha, beta);
      return;
    }
    if constexpr (isa == Isa::Avx2) {
      if (cols == kNr) {
        gemm_detail::micro_kernel_avx2_rows(static_cast<int>(rows), kc, a, b, ldb, c, ldc, alpha,
                                            beta);
        return;
      }
    }
    alignas(64) T buffer[kMr * kNr];
    kernel(kc, a, b, ldb, buffer, kNr, alpha, T(0));
    for (int64_t i = 0; i < rows; ++i) {
      T* dst = c + i * ldc;
      const T* src = buffer + i * kNr;
      if (beta == T(0))
        for (int64_t j = 0; j < cols; ++j) dst[j] = src[j];
      else
        for (int64_t j = 0; j < cols; ++j) dst[j] = src[j] + beta * dst[j];
    }
  }

  template <class S, class SB>
  static void product(const Product<T, S, SB>& p, int threads) {
    if (p.m == 0 || p.n == 0) return;
    if (p.k == 0 || p.alpha == T(0)) {
      scale_c(p);
      return;
    }
    if (p.m <= Blocking::kMc) {
      // Threads share out the column slivers; more threads than slivers would only wait.
      threads = static_cast<int>(std::min<int64_t>(threads, (p.n + kNr - 1) / kNr));
      if (threads <= 1) {
        run_streamed(p, 0, 1);
        return;
      }
#pragma omp parallel num_threads(threads)
      run_streamed(p, omp_get_thread_num(), omp_get_num_threads());
      return;
    }
    if (threads <= 1) {
      run_panels(p, 0, 1, 1, nullptr);
      return;
    }
    const int tm = row_parts(threads, p.m, p.n);
    if (tm == 1 || tm == threads) {
#pragma omp parallel num_threads(threads)
      run_panels(p, omp_get_thread_num(), omp_get_num_threads(), tm, nullptr);
      return;
    }
    thread_local PackBuffer<Packed> b_buffer;
    const size_t size = panel_size(p.n, p.k);
    Packed* const base = b_buffer.get(2 * size);
    Packed* const panels[2] = {base, base + size};
#pragma omp parallel num_threads(threads)
    run_panels(p, omp_get_thread_num(), omp_get_num_threads(), tm, panels);
  }
};

// Threads worth using for `work` multiply-adds.
int threads_for(double work) {
  if (omp_in_parallel()) return 1;
  const double useful = std::max(1.0, work / double(kMinWorkPerThread));
  return static_cast<int>(std::min<double>(omp_get_max_threads(), useful));
}

// The batch of products, each on `threads` threads or, when products are too small to
// split, one per thread; A is stored as S, B as SB (Product) and C as SC. With a 16-bit C
// each running product accumulates in its own float block (allocated here, so
// memory_stats sees it) and rounds it into C once. A product of more than one row block
// does that for each half of its rows in turn, so that its block is no larger than its
// 16-bit C (each half packs B again: measured at most a few % on 256 to 4096 rows).
template <class T, class S, class SB, class SC, class D>
void gemm_batched(D, const GemmArgs& g) {
  const S* a = static_cast<const S*>(g.a);
  const SB* b = static_cast<const SB*>(g.b);
  SC* c = static_cast<SC*>(g.c);
  const T alpha = static_cast<T>(g.alpha), beta = static_cast<T>(g.beta);
  const double work = double(g.m) * double(g.n) * double(g.k);
  const int per_product = threads_for(work);
  const int over_batch = std::min<int64_t>(threads_for(work * double(g.batch)), g.batch);
  const bool split_batch = g.batch > 1 && over_batch > per_product;
  constexpr bool kWidens = !std::is_same_v<SC, T>;
  const int64_t pass_rows = g.m > D::Blocking::kMc ? (g.m + 1) / 2 : g.m;
  Tensor blocks;
  if constexpr (kWidens)
    blocks = Tensor::empty({split_batch ? over_batch : 1, pass_rows, g.n}, DTypeOf<T>::value,
                           Device{});
  auto run = [&](int64_t i, int slot, int threads) {
    const S* ai = a + i * g.stride_a;
    const SB* bi = b + i * g.stride_b;
    SC* ci = c + i * g.stride_c;
    if constexpr (kWidens) {
      T* block = static_cast<T*>(blocks.data_ptr()) + slot * pass_rows * g.n;
      for (int64_t r0 = 0; r0 < g.m; r0 += pass_rows) {
        const int64_t rows = std::min(pass_rows, g.m - r0);
        SC* c_rows = ci + r0 * g.ldc;
        if (beta != T(0))
          for (int64_t r = 0; r < rows; ++r) load_compute(c_rows + r * g.ldc, block + r * g.n, g.n);
        D::product(Product<T, S, SB>{ai + (g.trans_a ? r0 : r0 * g.lda), g.lda, g.trans_a, bi,
                                     g.ldb, g.trans_b, block, g.n, rows, g.n, g.k, alpha, beta,
                                     nullptr},
                   threads);
        for (int64_t r = 0; r < rows; ++r) store_compute(block + r * g.n, c_rows + r * g.ldc, g.n);
      }
    } else {
      D::product(Product<T, S, SB>{ai, g.lda, g.trans_a, bi, g.ldb, g.trans_b, ci, g.ldc, g.m,
                                   g.n, g.k, alpha, beta, nullptr},
                 threads);
    }
  };
  if (split_batch) {
#pragma omp parallel for num_threads(over_batch) schedule(static)
    for (int64_t i = 0; i < g.batch; ++i) run(i, omp_get_thread_num(), 1);
    return;
  }
  for (int64_t i = 0; i < g.batch; ++i) run(i, 0, per_product);
}

// Calls fn(Driver<T, isa>{}) for the kernel this CPU runs on operands stored as S;
// bf16_products: float operands that hold bfloat16 values (GemmArgs).
template <class T, class S = T, class Fn>
void with_driver(Fn&& fn, bool bf16_products = false) {
  static const Isa isa = detect_isa();
  // Only the drivers of kernels the level may call are instantiated (the x86 kernel files
  // are not built for other CPUs): detect_isa never returns a higher one.
  switch (isa) {
    case Isa::Avx512Bf16:
      if constexpr (kLevelIsa >= Isa::Avx512Bf16) {
        if constexpr (std::is_same_v<S, BFloat16> || std::is_same_v<S, float>)
          if (std::is_same_v<S, BFloat16> || bf16_products)
            return fn(Driver<float, Isa::Avx512Bf16>{});
        return fn(Driver<T, Isa::Avx512>{});
      }
      [[fallthrough]];
    case Isa::Avx512:
      if constexpr (kLevelIsa >= Isa::Avx512) return fn(Driver<T, Isa::Avx512>{});
      [[fallthrough]];
    case Isa::Avx2:
      if constexpr (kLevelIsa >= Isa::Avx2) return fn(Driver<T, Isa::Avx2>{});
      [[fallthrough]];
    case Isa::Scalar:
      return fn(Driver<T, Isa::Scalar>{});
  }
}

template <class T>
void gemm_from_source(const GemmArgs& g, const GemmSource<T>& b) {
  const Product<T> p{static_cast<const T*>(g.a), g.lda, g.trans_a, nullptr, 0, false,
                     static_cast<T*>(g.c), g.ldc, g.m, g.n, g.k,
                     static_cast<T>(g.alpha), static_cast<T>(g.beta), &b};
  const int threads = threads_for(double(g.m) * double(g.n) * double(g.k));
  with_driver<T>([&](auto driver) { driver.product(p, threads); }, g.bf16_products);
}

}  // namespace

void gemm(const GemmArgs& args) {
  check_float32_operands(args);
  dispatch_float_storage("matmul", args.dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    using T = typename decltype(tag)::compute;
    with_driver<T, S>(
        [&](auto driver) {
          if constexpr (std::is_same_v<S, T>) {
            gemm_batched<T, S, S, S>(driver, args);
          } else if (args.float32_b) {
            gemm_batched<T, S, float, S>(driver, args);
          } else if (args.float32_c) {
            gemm_batched<T, S, S, float>(driver, args);
          } else {
            gemm_batched<T, S, S, S>(driver, args);
          }
        },
        args.bf16_products);
  });
}

void gemm(const GemmArgs& args, const GemmSource<float>& b) { gemm_from_source(args, b); }
void gemm(const GemmArgs& args, const GemmSource<double>& b) { gemm_from_source(args, b); }

void pack_transposed(const float* src, int64_t ld, int64_t rows, int width, int64_t kc,
                     float* dst) {
  with_driver<float>([&](auto driver) { driver.pack_transposed(src, ld, rows, width, kc, dst); });
}
void pack_transposed(const double* src, int64_t ld, int64_t rows, int width, int64_t kc,
                     double* dst) {
  with_driver<double>([&](auto driver) { driver.pack_transposed(src, ld, rows, width, kc, dst); });
}

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
