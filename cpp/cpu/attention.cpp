// Flash attention on the CPU (Dao et al., FlashAttention-2): the scores of a tile of
// kQueryTile queries against a tile of kKeyTile keys live in a small per-thread buffer,
// the softmax is computed online (a running max and sum per query row), and only the
// output and one log-sum-exp per row are stored, so memory is O(T) for any context.
// The backward recomputes each tile's probabilities from the log-sum-exp.
//
// The six tile products (S = Q·Kᵀ, O += P·V; dV += Pᵀ·dO, dP = dO·Vᵀ, dQ += dS·K,
// dK += dSᵀ·Q) run on the packed GEMM (gemm.cpp), which reads q, k, v, dO and writes
// dQ, dK, dV through their row strides, so strided head views need no copies. Threads
// split batch entries × tiles, and a GEMM called inside that parallel region runs on its
// own thread. Tiles wholly above a causal diagonal are skipped. float32/float64 only:
// the op layer widens 16-bit inputs.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "loops.h"
#include "steepest/kernels.h"
#include "vmath.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {
namespace {

// 64×64 measured faster than 32 and 128 tiles on the GPT step's heads (T 128, dh 32)
// and no slower at T 2048 (benchmarks/attention_memory.py).
constexpr int64_t kQueryTile = 64;
constexpr int64_t kKeyTile = 64;

template <class T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// One operand of one batch entry: rows `ld` elements apart, features contiguous.
template <class T>
struct Rows {
  T* p;
  int64_t ld;
  T* row(int64_t i) const { return p + i * ld; }
};

// Entry b of an operand stored at base with the given layout.
template <class T>
Rows<T> entry_rows(T* base, const AttentionLayout& layout, const AttentionArgs& a, int64_t b) {
  return {base + layout.entry(b, a.heads), layout.row};
}

// C (m×n, ldc) = alpha · op(A) · op(B) + beta · C on the calling thread's GEMM.
template <class T>
void product(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
             const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  GemmArgs g;
  g.dtype = DTypeOf<T>::value;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = a;
  g.lda = lda;
  g.b = b;
  g.ldb = ldb;
  g.c = c;
  g.ldc = ldc;
  g.alpha = alpha;
  g.beta = beta;
  gemm(g);
}

// s (nq, kKeyTile) = scale · q rows [q0, q0 + nq) · (k rows [k0, k0 + nk))ᵀ, with the keys
// a row may not see (causal) at −inf.
template <class T>
void tile_scores(const AttentionArgs& a, Rows<const T> q, Rows<const T> k, int64_t q0,
                 int64_t nq, int64_t k0, int64_t nk, T* s) {
  product<T>(false, true, nq, nk, a.d, static_cast<T>(a.scale), q.row(q0), q.ld, k.row(k0), k.ld,
             T(0), s, kKeyTile);
  if (!a.causal || k0 + nk <= q0 + 1) return;
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t visible = std::clamp<int64_t>(attention_key_end(a, q0 + i) - k0, 0, nk);
    std::fill(s + i * kKeyTile + visible, s + i * kKeyTile + nk, kNegInf<T>);
  }
}

template <class T>
struct ForwardOperands {
  Rows<const T> q, k, v;
  Rows<T> out;
};

// One query tile of one batch entry: out rows [q0, q0 + nq) and their log-sum-exp.
template <class T>
void forward_tile(const AttentionArgs& a, const ForwardOperands<T>& x, int64_t q0, int64_t nq,
                  T* lse, std::vector<T>& buffer) {
  buffer.resize(static_cast<size_t>(kQueryTile * (kKeyTile + a.dv + 2)));
  T* s = buffer.data();
  T* o = s + kQueryTile * kKeyTile;
  T* row_max = o + kQueryTile * a.dv;
  T* row_sum = row_max + kQueryTile;
  std::fill(o, o + nq * a.dv, T(0));
  std::fill(row_max, row_max + nq, kNegInf<T>);
  std::fill(row_sum, row_sum + nq, T(0));
  const int64_t key_end = attention_key_end(a, q0 + nq - 1);
  for (int64_t k0 = 0; k0 < key_end; k0 += kKeyTile) {
    const int64_t nk = std::min(kKeyTile, key_end - k0);
    tile_scores(a, x.q, x.k, q0, nq, k0, nk, s);
    for (int64_t i = 0; i < nq; ++i) {
      T* si = s + i * kKeyTile;
      T m = row_max[i];
      for (int64_t j = 0; j < nk; ++j) m = si[j] > m ? si[j] : m;
      // A row whose keys are all masked so far keeps max −inf and adds nothing.
      if (m == kNegInf<T>) {
        std::fill(si, si + nk, T(0));
        continue;
      }
      // Online softmax: rescale what was summed under the old max to the new one.
      const T rescale = math::exp(row_max[i] - m);
      row_max[i] = m;
      for (int64_t j = 0; j < nk; ++j) si[j] = math::exp(si[j] - m);
      T sum = 0;
      for (int64_t j = 0; j < nk; ++j) sum += si[j];
      row_sum[i] = row_sum[i] * rescale + sum;
      if (rescale != T(1)) {
        T* oi = o + i * a.dv;
        for (int64_t c = 0; c < a.dv; ++c) oi[c] *= rescale;
      }
    }
    product<T>(false, false, nq, a.dv, nk, T(1), s, kKeyTile, x.v.row(k0), x.v.ld, T(1), o, a.dv);
  }
  for (int64_t i = 0; i < nq; ++i) {
    // No visible key (tk = 0): the output is 0, as softmax over nothing times v gives.
    const T inv = row_sum[i] > 0 ? T(1) / row_sum[i] : T(0);
    const T* oi = o + i * a.dv;
    T* dst = x.out.row(q0 + i);
    for (int64_t c = 0; c < a.dv; ++c) dst[c] = oi[c] * inv;
    lse[q0 + i] = row_sum[i] > 0 ? row_max[i] + std::log(row_sum[i]) : kNegInf<T>;
  }
}

template <class T>
void forward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
             Tensor& out, Tensor& logsumexp) {
  const int64_t tiles = (a.tq + kQueryTile - 1) / kQueryTile;
  T* pl = logsumexp.data<T>();
  // One task per (batch entry, query tile); a causal tile's cost grows with its index.
  const int64_t work_per_task = std::max<int64_t>(1, a.tk * (a.d + a.dv) * std::min(a.tq, kQueryTile));
  parallel_for(a.batch * tiles, std::max<int64_t>(1, kParallelGrain / work_per_task),
               [&](int64_t begin, int64_t end) {
                 std::vector<T> buffer;
                 for (int64_t task = begin; task < end; ++task) {
                   const int64_t b = task / tiles, q0 = (task % tiles) * kQueryTile;
                   const ForwardOperands<T> x{entry_rows<const T>(q.data<T>(), a.q, a, b),
                                              entry_rows<const T>(k.data<T>(), a.k, a, b),
                                              entry_rows<const T>(v.data<T>(), a.v, a, b),
                                              entry_rows(out.data<T>(), a.out, a, b)};
                   forward_tile(a, x, q0, std::min(kQueryTile, a.tq - q0), pl + b * a.tq, buffer);
                 }
               });
}

template <class T>
struct BackwardOperands {
  Rows<const T> q, k, v, dout;
  const T* lse;
  const T* delta;
  Rows<T> dq, dk, dv;
};

// Gradients of one key tile of one batch entry from every query that sees it
// (FlashAttention-2's backward; P = exp(S − lse), D_i = dO_i·O_i):
//   dV_j = Σ_i P_ij dO_i,  dP_ij = dO_i·v_j,  dS = P ∘ (dP − D),
//   dK_j = scale Σ_i dS_ij q_i,  dQ_i += scale Σ_j dS_ij k_j (into dq).
template <class T>
void backward_key_tile(const AttentionArgs& a, const BackwardOperands<T>& x, int64_t k0,
                       int64_t nk, std::vector<T>& buffer) {
  buffer.resize(static_cast<size_t>(2 * kQueryTile * kKeyTile));
  T* p = buffer.data();
  T* dp = p + kQueryTile * kKeyTile;
  const T scale = static_cast<T>(a.scale);
  T beta = 0;  // the first query tile writes dK and dV, later ones add
  // Under the causal mask, queries before k0 see none of these keys.
  for (int64_t q0 = a.causal ? k0 : 0; q0 < a.tq; q0 += kQueryTile, beta = 1) {
    const int64_t nq = std::min(kQueryTile, a.tq - q0);
    tile_scores(a, x.q, x.k, q0, nq, k0, nk, p);
    for (int64_t i = 0; i < nq; ++i) {
      T* pi = p + i * kKeyTile;
      const T l = x.lse[q0 + i];
      // exp(−inf − l) is 0 for a masked key (every row sees a key when tk > 0).
      for (int64_t j = 0; j < nk; ++j) pi[j] = math::exp(pi[j] - l);
    }
    product<T>(true, false, nk, a.dv, nq, T(1), p, kKeyTile, x.dout.row(q0), x.dout.ld, beta,
               x.dv.row(k0), x.dv.ld);
    product<T>(false, true, nq, nk, a.dv, T(1), x.dout.row(q0), x.dout.ld, x.v.row(k0), x.v.ld,
               T(0), dp, kKeyTile);
    for (int64_t i = 0; i < nq; ++i) {
      const T* pi = p + i * kKeyTile;
      T* dpi = dp + i * kKeyTile;
      const T di = x.delta[q0 + i];
      for (int64_t j = 0; j < nk; ++j) dpi[j] = pi[j] * (dpi[j] - di) * scale;
    }
    product<T>(false, false, nq, a.d, nk, T(1), dp, kKeyTile, x.k.row(k0), x.k.ld, T(1),
               x.dq.row(q0), x.dq.ld);
    product<T>(true, false, nk, a.d, nq, T(1), dp, kKeyTile, x.q.row(q0), x.q.ld, beta,
               x.dk.row(k0), x.dk.ld);
  }
  if (beta == T(0)) {  // no query sees these keys
    for (int64_t j = k0; j < k0 + nk; ++j) {
      std::fill(x.dk.row(j), x.dk.row(j) + a.d, T(0));
      std::fill(x.dv.row(j), x.dv.row(j) + a.dv, T(0));
    }
  }
}

template <class T>
void backward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
              const Tensor& out, const Tensor& grad_out, const Tensor& logsumexp,
              Tensor& grad_q, Tensor& grad_k, Tensor& grad_v) {
  const T* pl = logsumexp.data<T>();
  const int64_t rows = a.batch * a.tq;
  // D_i = dO_i·O_i = Σ_j P_ij dP_ij, the softmax backward's row term.
  std::vector<T> delta(static_cast<size_t>(rows));
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, a.dv)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t r = begin; r < end; ++r) {
                   const int64_t b = r / a.tq, i = r % a.tq;
                   const T* g = entry_rows<const T>(grad_out.data<T>(), a.grad_out, a, b).row(i);
                   const T* o = entry_rows<const T>(out.data<T>(), a.out, a, b).row(i);
                   T sum = 0;
                   for (int64_t c = 0; c < a.dv; ++c) sum += g[c] * o[c];
                   delta[static_cast<size_t>(r)] = sum;
                 }
               });
  // Tasks are (batch entry, chunk of key tiles). dQ sums over all key tiles: with one
  // chunk per entry a task owns its dQ rows; when there are fewer entries than threads,
  // the key axis is split and each chunk adds into its own (batch, tq, d) copy of dQ,
  // summed after.
  const int64_t key_tiles = (a.tk + kKeyTile - 1) / kKeyTile;
  const int64_t threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const int64_t chunks =
      std::clamp<int64_t>((threads + a.batch - 1) / std::max<int64_t>(1, a.batch), 1,
                          std::max<int64_t>(1, key_tiles));
  const int64_t q_size = a.batch * a.tq * a.d;
  std::vector<T> partial(chunks > 1 ? static_cast<size_t>((chunks - 1) * q_size) : 0, T(0));
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, a.d)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t r = begin; r < end; ++r) {
                   T* dq = entry_rows(grad_q.data<T>(), a.grad_q, a, r / a.tq).row(r % a.tq);
                   std::fill(dq, dq + a.d, T(0));
                 }
               });
  const int64_t work_per_task = std::max<int64_t>(1, a.tq * (a.d + a.dv) * kKeyTile);
  parallel_for(a.batch * chunks, std::max<int64_t>(1, kParallelGrain / work_per_task),
               [&](int64_t begin, int64_t end) {
                 std::vector<T> buffer;
                 for (int64_t task = begin; task < end; ++task) {
                   const int64_t b = task / chunks, chunk = task % chunks;
                   const Rows<T> dq =
                       chunk == 0 ? entry_rows(grad_q.data<T>(), a.grad_q, a, b)
                                  : Rows<T>{partial.data() + (chunk - 1) * q_size + b * a.tq * a.d, a.d};
                   const BackwardOperands<T> x{entry_rows<const T>(q.data<T>(), a.q, a, b),
                                               entry_rows<const T>(k.data<T>(), a.k, a, b),
                                               entry_rows<const T>(v.data<T>(), a.v, a, b),
                                               entry_rows<const T>(grad_out.data<T>(), a.grad_out, a, b),
                                               pl + b * a.tq,
                                               delta.data() + b * a.tq,
                                               dq,
                                               entry_rows(grad_k.data<T>(), a.grad_k, a, b),
                                               entry_rows(grad_v.data<T>(), a.grad_v, a, b)};
                   const int64_t first = key_tiles * chunk / chunks;
                   const int64_t last = key_tiles * (chunk + 1) / chunks;
                   for (int64_t tile = first; tile < last; ++tile) {
                     const int64_t k0 = tile * kKeyTile;
                     backward_key_tile(a, x, k0, std::min(kKeyTile, a.tk - k0), buffer);
                   }
                 }
               });
  if (chunks > 1) {
    parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, a.d)),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t r = begin; r < end; ++r) {
                     T* dq = entry_rows(grad_q.data<T>(), a.grad_q, a, r / a.tq).row(r % a.tq);
                     for (int64_t chunk = 1; chunk < chunks; ++chunk) {
                       const T* part = partial.data() + (chunk - 1) * q_size + r * a.d;
                       for (int64_t c = 0; c < a.d; ++c) dq[c] += part[c];
                     }
                   }
                 });
  }
}

}  // namespace

void attention_forward(const AttentionArgs& args, const Tensor& q, const Tensor& k,
                       const Tensor& v, Tensor& out, Tensor& logsumexp) {
  dispatch_float("attention", q.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    forward<T>(args, q, k, v, out, logsumexp);
  });
}

void attention_backward(const AttentionArgs& args, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& grad_out,
                        const Tensor& logsumexp, Tensor& grad_q, Tensor& grad_k,
                        Tensor& grad_v) {
  dispatch_float("attention", q.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    backward<T>(args, q, k, v, out, grad_out, logsumexp, grad_q, grad_k, grad_v);
  });
}

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
