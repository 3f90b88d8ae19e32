// A cache-blocked GEMM: panels of A and B are packed into contiguous, zero-padded
// buffers (which also absorbs the four transpose combinations and ragged edges), then a
// 4×16 register-blocked inner kernel accumulates into C. The packed SIMD kernel with
// run-time CPU dispatch replaces the inner kernel in the CPU-speed work; the interface
// (GemmArgs: batched, strided, alpha/beta) stays.
#include <algorithm>
#include <vector>

#include "loops.h"
#include "steepest/kernels.h"

namespace steepest::cpu {
namespace {

constexpr int64_t kMr = 4;
constexpr int64_t kNr = 16;
constexpr int64_t kKc = 256;
constexpr int64_t kMc = 64;
constexpr int64_t kNc = 1024;

template <class T>
struct Matrix {
  const T* data;
  int64_t ld;
  bool trans;
  // Element (row, col) of op(M).
  T at(int64_t row, int64_t col) const { return trans ? data[col * ld + row] : data[row * ld + col]; }
};

// Packs rows [i0, i0+mc) × cols [k0, k0+kc) of op(A) into row-major mc_pad × kc.
template <class T>
void pack_a(const Matrix<T>& a, int64_t i0, int64_t mc, int64_t k0, int64_t kc, T* dst) {
  int64_t mc_pad = (mc + kMr - 1) / kMr * kMr;
  for (int64_t i = 0; i < mc_pad; ++i) {
    T* row = dst + i * kc;
    if (i >= mc) {
      std::fill(row, row + kc, T(0));
    } else if (!a.trans) {
      std::copy(a.data + (i0 + i) * a.ld + k0, a.data + (i0 + i) * a.ld + k0 + kc, row);
    } else {
      for (int64_t k = 0; k < kc; ++k) row[k] = a.data[(k0 + k) * a.ld + i0 + i];
    }
  }
}

// Packs rows [k0, k0+kc) × cols [j0, j0+nc) of op(B) into row-major kc × nc_pad.
template <class T>
void pack_b(const Matrix<T>& b, int64_t k0, int64_t kc, int64_t j0, int64_t nc, T* dst) {
  int64_t nc_pad = (nc + kNr - 1) / kNr * kNr;
  for (int64_t k = 0; k < kc; ++k) {
    T* row = dst + k * nc_pad;
    if (!b.trans) {
      std::copy(b.data + (k0 + k) * b.ld + j0, b.data + (k0 + k) * b.ld + j0 + nc, row);
    } else {
      for (int64_t j = 0; j < nc; ++j) row[j] = b.data[(j0 + j) * b.ld + k0 + k];
    }
    std::fill(row + nc, row + nc_pad, T(0));
  }
}

// C[i0.., j0..] += alpha * Ap · Bp for one packed block.
template <class T>
void block_kernel(const T* ap, const T* bp, int64_t mc, int64_t nc, int64_t kc, T alpha, T* c,
                  int64_t ldc) {
  int64_t nc_pad = (nc + kNr - 1) / kNr * kNr;
  for (int64_t i = 0; i < mc; i += kMr) {
    for (int64_t j = 0; j < nc; j += kNr) {
      T acc[kMr][kNr] = {};
      const T* a0 = ap + i * kc;
      for (int64_t k = 0; k < kc; ++k) {
        const T* b = bp + k * nc_pad + j;
        for (int64_t r = 0; r < kMr; ++r) {
          const T av = a0[r * kc + k];
          for (int64_t q = 0; q < kNr; ++q) acc[r][q] += av * b[q];
        }
      }
      int64_t rows = std::min(kMr, mc - i), cols = std::min(kNr, nc - j);
      for (int64_t r = 0; r < rows; ++r) {
        T* dst = c + (i + r) * ldc + j;
        for (int64_t q = 0; q < cols; ++q) dst[q] += alpha * acc[r][q];
      }
    }
  }
}

template <class T>
void scale_c(T* c, int64_t m, int64_t n, int64_t ldc, T beta) {
  for (int64_t i = 0; i < m; ++i) {
    T* row = c + i * ldc;
    if (beta == T(0))
      std::fill(row, row + n, T(0));
    else if (beta != T(1))
      for (int64_t j = 0; j < n; ++j) row[j] *= beta;
  }
}

template <class T>
std::vector<T>& scratch(int which) {
  thread_local std::vector<T> buffers[2];
  return buffers[which];
}

// One matrix product; `parallel` lets it split the M blocks over OpenMP threads.
template <class T>
void gemm_one(const Matrix<T>& a, const Matrix<T>& b, T* c, int64_t ldc, int64_t m, int64_t n,
              int64_t k, T alpha, T beta, bool parallel) {
  scale_c(c, m, n, ldc, beta);
  if (m == 0 || n == 0 || k == 0 || alpha == T(0)) return;
  for (int64_t j0 = 0; j0 < n; j0 += kNc) {
    int64_t nc = std::min(kNc, n - j0);
    for (int64_t k0 = 0; k0 < k; k0 += kKc) {
      int64_t kc = std::min(kKc, k - k0);
      std::vector<T>& bp = scratch<T>(0);
      bp.resize(static_cast<size_t>(kc * ((nc + kNr - 1) / kNr * kNr)));
      pack_b(b, k0, kc, j0, nc, bp.data());
      const T* bpp = bp.data();
      int64_t blocks = (m + kMc - 1) / kMc;
      auto run_blocks = [&](int64_t begin, int64_t end) {
        std::vector<T>& apack = scratch<T>(1);
        apack.resize(static_cast<size_t>(((kMc + kMr - 1) / kMr * kMr) * kc));
        for (int64_t blk = begin; blk < end; ++blk) {
          int64_t i0 = blk * kMc, mc = std::min(kMc, m - i0);
          pack_a(a, i0, mc, k0, kc, apack.data());
          block_kernel(apack.data(), bpp, mc, nc, kc, alpha, c + i0 * ldc + j0, ldc);
        }
      };
      // One M block is worth a thread when it holds enough multiply-adds.
      int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(kMc * nc * kc, 1));
      if (parallel)
        parallel_for(blocks, grain, run_blocks);
      else
        run_blocks(0, blocks);
    }
  }
}

template <class T>
void gemm_typed(const GemmArgs& g) {
  const T* a = static_cast<const T*>(g.a);
  const T* b = static_cast<const T*>(g.b);
  T* c = static_cast<T*>(g.c);
  const T alpha = static_cast<T>(g.alpha), beta = static_cast<T>(g.beta);
  auto one = [&](int64_t i, bool parallel) {
    gemm_one<T>({a + i * g.stride_a, g.lda, g.trans_a}, {b + i * g.stride_b, g.ldb, g.trans_b},
                c + i * g.stride_c, g.ldc, g.m, g.n, g.k, alpha, beta, parallel);
  };
  int64_t flops = g.m * g.n * g.k;
  if (g.batch > 1 && g.batch >= omp_get_max_threads()) {
    parallel_for(g.batch, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(flops, 1)),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t i = begin; i < end; ++i) one(i, false);
                 });
  } else {
    for (int64_t i = 0; i < g.batch; ++i) one(i, true);
  }
}

}  // namespace

void gemm(const GemmArgs& args) {
  dispatch_float("matmul", args.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    gemm_typed<T>(args);
  });
}

}  // namespace steepest::cpu
