// The GEMM micro-kernels and their shapes: the contract between the blocking driver
// (gemm.cpp) and the instruction-set files (gemm_avx2.cpp, gemm_avx512.cpp, compiled
// with their own -m flags and called only after a run-time CPU check).
//
// A micro-kernel computes one MR×NR tile of C from packed panels:
//   C[i, j] = alpha · Σ_k a[k·MR + i] · b[k·ldb + j] + beta · C[i, j]
// a holds kc steps of MR rows of op(A), zero-padded to full height; b holds kc steps of
// NR columns of op(B): a packed, zero-padded sliver (ldb = NR) or full columns of a
// row-major B read in place (ldb = its row stride). The kernel never branches on edges.
// beta == 0 does not read C (it may be uninitialised memory).
#pragma once

#include <cstdint>

namespace steepest::cpu::gemm_detail {

// Avx512Bf16: float32 products of bfloat16 operands with AVX512_BF16's pair-wise dot
// products (operands packed as k-pairs, see gemm_avx512.cpp).
enum class Isa { Scalar, Avx2, Avx512, Avx512Bf16 };

// MR × NR of each kernel, and the cache blocking around it: the MC×KC block of A stays in
// L2 while the KC×NC panel of B streams from L3. NR is two vector registers. With
// AVX-512, 8 rows (16 accumulators) measured as fast as 12 on large products and faster
// on the short ones training produces (C of 32 or 64 rows is then an exact number of
// tiles). The kernel reads about 20 bytes per cycle, which this CPU's L2 delivers, so KC
// is sized to cut the passes over C rather than to keep a KC×NR sliver of B in L1
// (measured: KC 512 beats 256 at 2048²). MC 192 makes the GPT's weight gradients
// (192 rows of C, Xᵀ·G over 2048 rows) one row block: C then goes the streamed way
// (gemm.cpp), each B sliver feeding 24 tiles instead of 12 and the threads never waiting
// for each other (on a shared 2-core Xeon, 1 thread: 0 to 8% faster, within the noise;
// 2 threads: the median call about 15% faster; the square and forward products
// unchanged); the block is 384 KiB of a 2 MiB L2.
// kStreamSlivers: how many B slivers the driver packs at a time when C fits one row block
// (gemm.cpp, run_streamed); measured on AVX2 only, so AVX-512 keeps packing one.
template <class T, Isa isa>
struct Shape;
template <class T>
struct Shape<T, Isa::Avx512> {
  static constexpr int kMr = 8, kNr = 128 / sizeof(T);
  static constexpr int64_t kKc = 2048 / sizeof(T), kMc = 192, kNc = 2048, kStreamSlivers = 1;
};
// The packed bfloat16 operands take half the bytes of float32 ones: twice the depth in
// the same cache footprint.
template <class T>
struct Shape<T, Isa::Avx512Bf16> {
  static constexpr int kMr = 8, kNr = 32;
  static constexpr int64_t kKc = 1024, kMc = 144, kNc = 2048, kStreamSlivers = 1;
};
// AVX2 (Zen 3): eight slivers are 128 KiB of B at KC = 256, a quarter of L2; measured
// 1.11x over four and ahead of sixteen on 32×1024·1024×1024.
template <class T>
struct Shape<T, Isa::Avx2> {
  static constexpr int kMr = 6, kNr = 64 / sizeof(T);
  static constexpr int64_t kKc = 256, kMc = 192, kNc = 4096, kStreamSlivers = 8;
};
template <class T>
struct Shape<T, Isa::Scalar> {
  static constexpr int kMr = 4, kNr = 32 / sizeof(T);
  static constexpr int64_t kKc = 256, kMc = 128, kNc = 2048, kStreamSlivers = 1;
};

void micro_kernel_avx512(int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                         int64_t ldc, float alpha, float beta);
void micro_kernel_avx512(int64_t kc, const double* a, const double* b, int64_t ldb, double* c,
                         int64_t ldc, double alpha, double beta);
// The transposing pack: dst[k·dst_stride + i] = src[i·ld + k] for k < kc, i < rows, and
// 0 for rows <= i < width; width is at most one vector (16 floats, 8 doubles).
void pack_transposed_avx512(const float* src, int64_t ld, int64_t rows, int64_t width,
                            int64_t kc, float* dst, int64_t dst_stride);
void pack_transposed_avx512(const double* src, int64_t ld, int64_t rows, int64_t width,
                            int64_t kc, double* dst, int64_t dst_stride);

// Whether VDPBF16PS yields clearly more float32 products per second than FMA on this core
// (timed once, in well under a millisecond). It does on Zen 4 (about twice: two products a
// lane per instruction at FMA's rate), but this project's AVX512_BF16 Xeon retires one
// every two cycles, where FMA retires two a cycle: there the pair kernel runs at half the
// float32 rate and widening is faster.
bool bf16_dot_outpaces_fma();

// C[i, j] = alpha · Σ_k a(k, i) · b(k, j) + beta · C[i, j] over an 8×32 tile, with a
// and b bfloat16 bits packed as k-pairs (a: width 8, b: width 32) and float32 sums.
// AVX512_BF16 treats bfloat16 subnormal inputs as zero and flushes subnormal sums.
void micro_kernel_avx512_bf16(int64_t kc, const uint16_t* a, const uint16_t* b, float* c,
                              int64_t ldc, float alpha, float beta);
// The k-pair packs: element (k, i) of op(M) is src[k·ld + i] (across rows) or
// src[i·ld + k] (along rows; width at most 16, dst_stride the sliver width in pairs).
void pack_pairs_across_rows_avx512(const uint16_t* src, int64_t ld, int64_t cols,
                                   int64_t width, int64_t kc, uint16_t* dst);
void pack_pairs_along_rows_avx512(const uint16_t* src, int64_t ld, int64_t rows,
                                  int64_t width, int64_t kc, uint16_t* dst,
                                  int64_t dst_stride);

void micro_kernel_avx2(int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                       int64_t ldc, float alpha, float beta);
void micro_kernel_avx2(int64_t kc, const double* a, const double* b, int64_t ldb, double* c,
                       int64_t ldc, double alpha, double beta);
// The first `rows` (1 to MR − 1) rows of the tile, written straight into C: C's last
// rows then cost their own share of the work, not a full tile's.
void micro_kernel_avx2_rows(int rows, int64_t kc, const float* a, const float* b, int64_t ldb,
                            float* c, int64_t ldc, float alpha, float beta);
void micro_kernel_avx2_rows(int rows, int64_t kc, const double* a, const double* b,
                            int64_t ldb, double* c, int64_t ldc, double alpha, double beta);
// As pack_transposed_avx512, with width at most 8 floats or 4 doubles.
void pack_transposed_avx2(const float* src, int64_t ld, int64_t rows, int64_t width,
                          int64_t kc, float* dst, int64_t dst_stride);
void pack_transposed_avx2(const double* src, int64_t ld, int64_t rows, int64_t width,
                          int64_t kc, double* dst, int64_t dst_stride);

}  // namespace steepest::cpu::gemm_detail
