// The register-blocked GEMM micro-kernel, written once over a small vector-traits type
// S (T, V, kLanes, zero/load/store/broadcast/fma/mul) and instantiated per instruction
// set in files compiled with that set's flags. The MR×NV accumulators live in vector
// registers for the whole k loop: per step, NV loads of B, MR broadcasts of A and
// MR·NV fused multiply-adds (the seed's 矩阵乘法 C = A·B as a sum of rank-1 updates).
//
// Every S passed in must be a type local to its file (unnamed namespace), so each
// instantiation keeps internal linkage and code built for one instruction set can never
// be picked by the linker for another. For the same reason the kernel calls nothing
// from the standard library.
#pragma once

#include <cstdint>

namespace steepest::cpu::gemm_detail {

// See gemm_kernels.h for the packed layout and the beta == 0 contract. AS is the row
// count the A sliver was packed with: an edge kernel (MR < AS) computes only the first MR
// rows of a full-height sliver, straight into C.
template <class S, int MR, int NV, int AS = MR>
inline void micro_kernel(int64_t kc, const typename S::T* __restrict a,
                         const typename S::T* __restrict b, int64_t ldb, typename S::T* c,
                         int64_t ldc,
                         typename S::T alpha, typename S::T beta) {
  using T = typename S::T;
  using V = typename S::V;
  constexpr int L = S::kLanes;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = S::zero();
  // C is needed only after the k loop; start fetching it now so its misses overlap.
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    __builtin_prefetch(c + i * ldc, 1);
    __builtin_prefetch(c + i * ldc + NV * L - 1, 1);
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    V bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = S::load(b + j * L);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V av = S::broadcast(a[i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = S::fma(av, bv[j], acc[i][j]);
    }
    a += AS;
    b += ldb;
  }
  const V va = S::broadcast(alpha);
  if (beta == T(0)) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) S::store(c + i * ldc + j * L, S::mul(acc[i][j], va));
  } else {
    const V vb = S::broadcast(beta);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        T* p = c + i * ldc + j * L;
        S::store(p, S::fma(S::load(p), vb, S::mul(acc[i][j], va)));
      }
  }
}

}  // namespace steepest::cpu::gemm_detail
