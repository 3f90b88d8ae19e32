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

// Measured (one thread, 96 heads, causal, CPU time; a loaded 2-core Zen 3): 32×32 tiles
// cost 1.3x 64×64 at T 1024, dh 64; 128×128 were slower at T 128, dh 32 (the GPT step's
// heads) and within noise at T 1024.
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

// C (m×n, ldc) = alpha · op(A) · B + beta · C on the calling thread's GEMM (B row-major).
template <class T>
void product(bool trans_a, int64_t m, int64_t n, int64_t k, T alpha,
             const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  GemmArgs g;
  g.dtype = DTypeOf<T>::value;
  g.trans_a = trans_a;
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

// dst (cols, ld) = rows [0, n) of src transposed: dst[c·ld + i] = src.row(i)[c].
template <class T>
void transpose_rows(Rows<const T> src, int64_t n, int64_t cols, T* dst, int64_t ld) {
  for (int64_t i = 0; i < n; ++i) {
    const T* row = src.row(i);
    for (int64_t c = 0; c < cols; ++c) dst[c * ld + i] = row[c];
  }
}

// The GEMM packs an operand by plain copies when its depth axis is the row axis (a
// transposed A, a row-major B), and by strided scalar transposes otherwise, which at
// these depths (dh 32..128) are a large part of a tile product's time. So the products
// are posed with their operands in the copying orientation: Q, K, V and dO are
// transposed once per batch entry or tile (qt, kt, vt, dot), and the forward keeps its
// scores key-major (Sᵀ). Only dQ += dS·K packs by transposing (dS, one 64×64 tile).

template <class T>
struct ForwardOperands {
  Rows<const T> q, k, v;
  Rows<T> out;
};

// One query tile of one batch entry: out rows [q0, q0 + nq) and their log-sum-exp, from
// kt = Kᵀ (d, tk). With the scores st = scale·K·Qᵀ (keys × queries) the online softmax
// loops over keys with the query axis contiguous.
template <class T>
void forward_tile(const AttentionArgs& a, const ForwardOperands<T>& x, const T* kt, int64_t q0,
                  int64_t nq, T* lse, T* buffer) {
  T* st = buffer;
  T* qt = st + kKeyTile * kQueryTile;
  T* o = qt + a.d * kQueryTile;
  T* row_max = o + kQueryTile * a.dv;
  T* row_sum = row_max + kQueryTile;
  T* shift = row_sum + kQueryTile;
  T* factor = shift + kQueryTile;
  transpose_rows(Rows<const T>{x.q.row(q0), x.q.ld}, nq, a.d, qt, kQueryTile);
  std::fill(o, o + nq * a.dv, T(0));
  std::fill(row_max, row_max + nq, kNegInf<T>);
  std::fill(row_sum, row_sum + nq, T(0));
  const int64_t key_end = attention_key_end(a, q0 + nq - 1);
  for (int64_t k0 = 0; k0 < key_end; k0 += kKeyTile) {
    const int64_t nk = std::min(kKeyTile, key_end - k0);
    product<T>(true, nk, nq, a.d, static_cast<T>(a.scale), kt + k0, a.tk, qt, kQueryTile,
               T(0), st, kQueryTile);
    // Causal: key k0 + j is hidden from the queries before it, rows [0, first(j)) of
    // its column; those get weight 0 and no exponential.
    auto first = [&](int64_t j) {
      return a.causal ? std::clamp<int64_t>(k0 + j - q0, 0, nq) : int64_t{0};
    };
    std::copy(row_max, row_max + nq, shift);
    for (int64_t j = 0; j < nk; ++j) {
      const T* sj = st + j * kQueryTile;
      for (int64_t i = first(j); i < nq; ++i) shift[i] = sj[i] > shift[i] ? sj[i] : shift[i];
    }
    // Online softmax: what was summed under the old max is rescaled to the new one. A
    // row that has seen no key yet keeps max −inf and sum 0; shifting it by 0 avoids
    // −inf − (−inf).
    for (int64_t i = 0; i < nq; ++i) {
      const T m = shift[i];
      shift[i] = m == kNegInf<T> ? T(0) : m;
      factor[i] = math::exp(row_max[i] - shift[i]);
      row_max[i] = m;
      row_sum[i] *= factor[i];
    }
    for (int64_t j = 0; j < nk; ++j) {
      T* sj = st + j * kQueryTile;
      const int64_t lo = first(j);
      std::fill(sj, sj + lo, T(0));
      for (int64_t i = lo; i < nq; ++i) {
        sj[i] = math::exp(sj[i] - shift[i]);
        row_sum[i] += sj[i];
      }
    }
    for (int64_t i = 0; i < nq; ++i) {
      if (factor[i] == T(1)) continue;
      T* oi = o + i * a.dv;
      for (int64_t c = 0; c < a.dv; ++c) oi[c] *= factor[i];
    }
    product<T>(true, nq, a.dv, nk, T(1), st, kQueryTile, x.v.row(k0), x.v.ld, T(1), o, a.dv);
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
                 std::vector<T> buffer(static_cast<size_t>(
                     kQueryTile * (kKeyTile + a.d + a.dv + 4) + a.d * a.tk));
                 T* kt = buffer.data() + kQueryTile * (kKeyTile + a.d + a.dv + 4);
                 int64_t transposed = -1;  // the entry whose Kᵀ kt holds
                 for (int64_t task = begin; task < end; ++task) {
                   const int64_t b = task / tiles, q0 = (task % tiles) * kQueryTile;
                   const ForwardOperands<T> x{entry_rows<const T>(q.data<T>(), a.q, a, b),
                                              entry_rows<const T>(k.data<T>(), a.k, a, b),
                                              entry_rows<const T>(v.data<T>(), a.v, a, b),
                                              entry_rows(out.data<T>(), a.out, a, b)};
                   if (transposed != b) {
                     transpose_rows(x.k, a.tk, a.d, kt, a.tk);
                     transposed = b;
                   }
                   forward_tile(a, x, kt, q0, std::min(kQueryTile, a.tq - q0), pl + b * a.tq,
                                buffer.data());
                 }
               });
}

template <class T>
struct BackwardOperands {
  Rows<const T> q, k, v, dout;
  const T* qt;   // Qᵀ (d, tq)
  const T* dot;  // dOᵀ (dv, tq)
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
                       int64_t nk, T* buffer) {
  T* p = buffer;
  T* dp = p + kQueryTile * kKeyTile;
  T* kt = dp + kQueryTile * kKeyTile;
  T* vt = kt + a.d * kKeyTile;
  transpose_rows(Rows<const T>{x.k.row(k0), x.k.ld}, nk, a.d, kt, kKeyTile);
  transpose_rows(Rows<const T>{x.v.row(k0), x.v.ld}, nk, a.dv, vt, kKeyTile);
  const T scale = static_cast<T>(a.scale);
  T beta = 0;  // the first query tile writes dK and dV, later ones add
  // Under the causal mask, queries before k0 see none of these keys.
  for (int64_t q0 = a.causal ? k0 : 0; q0 < a.tq; q0 += kQueryTile, beta = 1) {
    const int64_t nq = std::min(kQueryTile, a.tq - q0);
    product<T>(true, nq, nk, a.d, scale, x.qt + q0, a.tq, kt, kKeyTile, T(0), p, kKeyTile);
    for (int64_t i = 0; i < nq; ++i) {
      T* pi = p + i * kKeyTile;
      const T l = x.lse[q0 + i];
      // Every row sees a key when tk > 0, so l is finite.
      const int64_t visible = std::clamp<int64_t>(attention_key_end(a, q0 + i) - k0, 0, nk);
      for (int64_t j = 0; j < visible; ++j) pi[j] = math::exp(pi[j] - l);
      std::fill(pi + visible, pi + nk, T(0));
    }
    product<T>(true, nk, a.dv, nq, T(1), p, kKeyTile, x.dout.row(q0), x.dout.ld, beta,
               x.dv.row(k0), x.dv.ld);
    product<T>(true, nq, nk, a.dv, T(1), x.dot + q0, a.tq, vt, kKeyTile, T(0), dp, kKeyTile);
    for (int64_t i = 0; i < nq; ++i) {
      const T* pi = p + i * kKeyTile;
      T* dpi = dp + i * kKeyTile;
      const T di = x.delta[q0 + i];
      for (int64_t j = 0; j < nk; ++j) dpi[j] = pi[j] * (dpi[j] - di) * scale;
    }
    product<T>(false, nq, a.d, nk, T(1), dp, kKeyTile, x.k.row(k0), x.k.ld, T(1),
               x.dq.row(q0), x.dq.ld);
    product<T>(true, nk, a.d, nq, T(1), dp, kKeyTile, x.q.row(q0), x.q.ld, beta,
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
                 const int64_t width = std::max(a.d, a.dv);
                 std::vector<T> buffer(static_cast<size_t>(2 * kQueryTile * kKeyTile +
                                                           2 * width * kKeyTile + (a.d + a.dv) * a.tq));
                 T* qt = buffer.data() + 2 * kQueryTile * kKeyTile + 2 * width * kKeyTile;
                 T* dot = qt + a.d * a.tq;
                 int64_t transposed = -1;  // the entry whose Qᵀ, dOᵀ qt and dot hold
                 for (int64_t task = begin; task < end; ++task) {
                   const int64_t b = task / chunks, chunk = task % chunks;
                   const Rows<T> dq =
                       chunk == 0 ? entry_rows(grad_q.data<T>(), a.grad_q, a, b)
                                  : Rows<T>{partial.data() + (chunk - 1) * q_size + b * a.tq * a.d, a.d};
                   const BackwardOperands<T> x{entry_rows<const T>(q.data<T>(), a.q, a, b),
                                               entry_rows<const T>(k.data<T>(), a.k, a, b),
                                               entry_rows<const T>(v.data<T>(), a.v, a, b),
                                               entry_rows<const T>(grad_out.data<T>(), a.grad_out, a, b),
                                               qt,
                                               dot,
                                               pl + b * a.tq,
                                               delta.data() + b * a.tq,
                                               dq,
                                               entry_rows(grad_k.data<T>(), a.grad_k, a, b),
                                               entry_rows(grad_v.data<T>(), a.grad_v, a, b)};
                   if (transposed != b) {
                     transpose_rows(x.q, a.tq, a.d, qt, a.tq);
                     transpose_rows(x.dout, a.tq, a.dv, dot, a.tq);
                     transposed = b;
                   }
                   const int64_t first = key_tiles * chunk / chunks;
                   const int64_t last = key_tiles * (chunk + 1) / chunks;
                   for (int64_t tile = first; tile < last; ++tile) {
                     const int64_t k0 = tile * kKeyTile;
                     backward_key_tile(a, x, k0, std::min(kKeyTile, a.tk - k0), buffer.data());
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
