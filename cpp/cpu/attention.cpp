// Flash attention on the CPU (Dao et al., FlashAttention-2): the scores of a tile of
// kQueryTile queries against a tile of kKeyTile keys live in a small per-thread buffer,
// the softmax is computed online (a running max and sum per query row), and only the
// output and one log-sum-exp per row are stored, so memory is O(T) for any context.
// The backward recomputes each tile's probabilities from the log-sum-exp.
//
// Inner loops run over a contiguous axis with independent iterations (the key axis of a
// transposed K tile, or the feature axis of V), so that they vectorise without
// reassociating sums. float32/float64 only: the op layer widens 16-bit inputs.
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

constexpr int64_t kQueryTile = 64;
constexpr int64_t kKeyTile = 64;

template <class T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// The problem's base pointers, offset to one batch entry.
template <class T>
struct Heads {
  const T* q;
  const T* k;
  const T* v;
};

// dst (d, nk) = src rows [0, nk) of a (·, d) matrix, transposed, with row stride kKeyTile.
template <class T>
void transpose_tile(const T* src, int64_t nk, int64_t d, T* dst) {
  for (int64_t j = 0; j < nk; ++j)
    for (int64_t c = 0; c < d; ++c) dst[c * kKeyTile + j] = src[j * d + c];
}

// s (nq, kKeyTile) = scale · q_tile · kᵀ over keys [k0, k0 + nk), masked keys at −inf.
template <class T>
void tile_scores(const AttentionArgs& a, const T* q, int64_t q0, int64_t nq, const T* kt,
                 int64_t k0, int64_t nk, T* s) {
  const T scale = static_cast<T>(a.scale);
  for (int64_t i = 0; i < nq; ++i) {
    T* si = s + i * kKeyTile;
    std::fill(si, si + nk, T(0));
    const T* qi = q + (q0 + i) * a.d;
    for (int64_t c = 0; c < a.d; ++c) {
      const T qc = qi[c] * scale;
      const T* kc = kt + c * kKeyTile;
      for (int64_t j = 0; j < nk; ++j) si[j] += qc * kc[j];
    }
    const int64_t visible = std::clamp<int64_t>(attention_key_end(a, q0 + i) - k0, 0, nk);
    std::fill(si + visible, si + nk, kNegInf<T>);
  }
}

// One query tile of one batch entry: out rows [q0, q0 + nq) and their log-sum-exp.
template <class T>
void forward_tile(const AttentionArgs& a, Heads<T> h, int64_t q0, int64_t nq, T* out, T* lse,
                  std::vector<T>& buffer) {
  buffer.assign(static_cast<size_t>(kQueryTile * kKeyTile + a.d * kKeyTile + 2 * kQueryTile), T(0));
  T* s = buffer.data();
  T* kt = s + kQueryTile * kKeyTile;
  T* row_max = kt + a.d * kKeyTile;
  T* row_sum = row_max + kQueryTile;
  T* o = out + q0 * a.dv;
  std::fill(o, o + nq * a.dv, T(0));
  std::fill(row_max, row_max + nq, kNegInf<T>);
  const int64_t key_end = attention_key_end(a, q0 + nq - 1);
  for (int64_t k0 = 0; k0 < key_end; k0 += kKeyTile) {
    const int64_t nk = std::min(kKeyTile, key_end - k0);
    transpose_tile(h.k + k0 * a.d, nk, a.d, kt);
    tile_scores(a, h.q, q0, nq, kt, k0, nk, s);
    for (int64_t i = 0; i < nq; ++i) {
      T* si = s + i * kKeyTile;
      T m = row_max[i];
      for (int64_t j = 0; j < nk; ++j) m = si[j] > m ? si[j] : m;
      // A row whose keys are all masked so far keeps max −inf and adds nothing.
      if (m == kNegInf<T>) continue;
      // Online softmax: rescale what was summed under the old max to the new one.
      const T rescale = math::exp(row_max[i] - m);
      row_max[i] = m;
      T sum = 0;
      for (int64_t j = 0; j < nk; ++j) si[j] = math::exp(si[j] - m);
      for (int64_t j = 0; j < nk; ++j) sum += si[j];
      row_sum[i] = row_sum[i] * rescale + sum;
      T* oi = o + i * a.dv;
      for (int64_t c = 0; c < a.dv; ++c) oi[c] *= rescale;
      for (int64_t j = 0; j < nk; ++j) {
        const T p = si[j];
        const T* vj = h.v + (k0 + j) * a.dv;
        for (int64_t c = 0; c < a.dv; ++c) oi[c] += p * vj[c];
      }
    }
  }
  for (int64_t i = 0; i < nq; ++i) {
    // No visible key (tk = 0): the output is 0, as softmax over nothing times v gives.
    const T inv = row_sum[i] > 0 ? T(1) / row_sum[i] : T(0);
    T* oi = o + i * a.dv;
    for (int64_t c = 0; c < a.dv; ++c) oi[c] *= inv;
    lse[q0 + i] = row_sum[i] > 0 ? row_max[i] + std::log(row_sum[i]) : kNegInf<T>;
  }
}

template <class T>
void forward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
             Tensor& out, Tensor& logsumexp) {
  const int64_t tiles = (a.tq + kQueryTile - 1) / kQueryTile;
  const T* pq = q.data<T>();
  const T* pk = k.data<T>();
  const T* pv = v.data<T>();
  T* po = out.data<T>();
  T* pl = logsumexp.data<T>();
  // One task per (batch entry, query tile); a causal tile's cost grows with its index.
  const int64_t work_per_task = std::max<int64_t>(1, a.tk * (a.d + a.dv) * std::min(a.tq, kQueryTile));
  parallel_for(a.batch * tiles, std::max<int64_t>(1, kParallelGrain / work_per_task),
               [&](int64_t begin, int64_t end) {
                 std::vector<T> buffer;
                 for (int64_t task = begin; task < end; ++task) {
                   const int64_t b = task / tiles, q0 = (task % tiles) * kQueryTile;
                   Heads<T> h{pq + b * a.tq * a.d, pk + b * a.tk * a.d, pv + b * a.tk * a.dv};
                   forward_tile(a, h, q0, std::min(kQueryTile, a.tq - q0), po + b * a.tq * a.dv,
                                pl + b * a.tq, buffer);
                 }
               });
}

// Gradients of one key tile of one batch entry from every query that sees it
// (FlashAttention-2's backward; P = exp(S − lse), D_i = dO_i·O_i):
//   dV_j = Σ_i P_ij dO_i,  dP_ij = dO_i·v_j,  dS = P ∘ (dP − D),
//   dK_j = scale Σ_i dS_ij q_i,  dQ_i += scale Σ_j dS_ij k_j (into dq).
template <class T>
void backward_key_tile(const AttentionArgs& a, Heads<T> h, const T* dout, const T* lse,
                       const T* delta, int64_t k0, int64_t nk, T* dq, T* dk, T* dv,
                       std::vector<T>& buffer) {
  const int64_t width = std::max(a.d, a.dv);
  buffer.assign(static_cast<size_t>(2 * kQueryTile * kKeyTile + 2 * width * kKeyTile), T(0));
  T* p = buffer.data();
  T* dp = p + kQueryTile * kKeyTile;
  T* kt = dp + kQueryTile * kKeyTile;
  T* vt = kt + width * kKeyTile;
  transpose_tile(h.k + k0 * a.d, nk, a.d, kt);
  transpose_tile(h.v + k0 * a.dv, nk, a.dv, vt);
  T* dk_tile = dk + k0 * a.d;
  T* dv_tile = dv + k0 * a.dv;
  std::fill(dk_tile, dk_tile + nk * a.d, T(0));
  std::fill(dv_tile, dv_tile + nk * a.dv, T(0));
  const T scale = static_cast<T>(a.scale);
  // Under the causal mask, queries before k0 see none of these keys.
  for (int64_t q0 = a.causal ? k0 : 0; q0 < a.tq; q0 += kQueryTile) {
    const int64_t nq = std::min(kQueryTile, a.tq - q0);
    tile_scores(a, h.q, q0, nq, kt, k0, nk, p);
    for (int64_t i = 0; i < nq; ++i) {
      T* pi = p + i * kKeyTile;
      const T l = lse[q0 + i];
      // exp(−inf − l) is 0 for a masked key; a row with no key at all (l = −inf) has none.
      for (int64_t j = 0; j < nk; ++j) pi[j] = math::exp(pi[j] - l);
      T* dpi = dp + i * kKeyTile;
      std::fill(dpi, dpi + nk, T(0));
      const T* doi = dout + (q0 + i) * a.dv;
      for (int64_t c = 0; c < a.dv; ++c) {
        const T g = doi[c];
        const T* vc = vt + c * kKeyTile;
        for (int64_t j = 0; j < nk; ++j) dpi[j] += g * vc[j];
      }
      for (int64_t j = 0; j < nk; ++j) {
        T* dvj = dv_tile + j * a.dv;
        const T pij = pi[j];
        for (int64_t c = 0; c < a.dv; ++c) dvj[c] += pij * doi[c];
      }
      const T di = delta[q0 + i];
      for (int64_t j = 0; j < nk; ++j) dpi[j] = pi[j] * (dpi[j] - di) * scale;
      const T* qi = h.q + (q0 + i) * a.d;
      T* dqi = dq + (q0 + i) * a.d;
      for (int64_t j = 0; j < nk; ++j) {
        const T ds = dpi[j];
        T* dkj = dk_tile + j * a.d;
        const T* kj = h.k + (k0 + j) * a.d;
        for (int64_t c = 0; c < a.d; ++c) dkj[c] += ds * qi[c];
        for (int64_t c = 0; c < a.d; ++c) dqi[c] += ds * kj[c];
      }
    }
  }
}

template <class T>
void backward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
              const Tensor& out, const Tensor& grad_out, const Tensor& logsumexp,
              Tensor& grad_q, Tensor& grad_k, Tensor& grad_v) {
  const T* pq = q.data<T>();
  const T* pk = k.data<T>();
  const T* pv = v.data<T>();
  const T* po = out.data<T>();
  const T* pg = grad_out.data<T>();
  const T* pl = logsumexp.data<T>();
  T* gq = grad_q.data<T>();
  T* gk = grad_k.data<T>();
  T* gv = grad_v.data<T>();
  const int64_t rows = a.batch * a.tq;
  // D_i = dO_i·O_i = Σ_j P_ij dP_ij, the softmax backward's row term.
  std::vector<T> delta(static_cast<size_t>(rows));
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, a.dv)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t r = begin; r < end; ++r) {
                   T sum = 0;
                   for (int64_t c = 0; c < a.dv; ++c) sum += pg[r * a.dv + c] * po[r * a.dv + c];
                   delta[static_cast<size_t>(r)] = sum;
                 }
               });
  // Tasks are (batch entry, chunk of key tiles). dQ sums over all key tiles: with one
  // chunk per entry a task owns its dQ rows; when there are fewer entries than threads,
  // the key axis is split and each chunk adds into its own copy of dQ, summed after.
  const int64_t key_tiles = (a.tk + kKeyTile - 1) / kKeyTile;
  const int64_t threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const int64_t chunks =
      std::clamp<int64_t>((threads + a.batch - 1) / std::max<int64_t>(1, a.batch), 1,
                          std::max<int64_t>(1, key_tiles));
  const int64_t q_size = a.batch * a.tq * a.d;
  std::vector<T> partial(chunks > 1 ? static_cast<size_t>((chunks - 1) * q_size) : 0, T(0));
  std::fill(gq, gq + q_size, T(0));
  const int64_t work_per_task = std::max<int64_t>(1, a.tq * (a.d + a.dv) * kKeyTile);
  parallel_for(a.batch * chunks, std::max<int64_t>(1, kParallelGrain / work_per_task),
               [&](int64_t begin, int64_t end) {
                 std::vector<T> buffer;
                 for (int64_t task = begin; task < end; ++task) {
                   const int64_t b = task / chunks, chunk = task % chunks;
                   T* dq_base = chunk == 0 ? gq : partial.data() + (chunk - 1) * q_size;
                   Heads<T> h{pq + b * a.tq * a.d, pk + b * a.tk * a.d, pv + b * a.tk * a.dv};
                   const int64_t first = key_tiles * chunk / chunks;
                   const int64_t last = key_tiles * (chunk + 1) / chunks;
                   for (int64_t tile = first; tile < last; ++tile) {
                     const int64_t k0 = tile * kKeyTile;
                     backward_key_tile(a, h, pg + b * a.tq * a.dv, pl + b * a.tq,
                                       delta.data() + b * a.tq, k0, std::min(kKeyTile, a.tk - k0),
                                       dq_base + b * a.tq * a.d, gk + b * a.tk * a.d,
                                       gv + b * a.tk * a.dv, buffer);
                   }
                 }
               });
  if (chunks > 1) {
    parallel_for(q_size, kParallelGrain, [&](int64_t begin, int64_t end) {
      for (int64_t chunk = 1; chunk < chunks; ++chunk) {
        const T* part = partial.data() + (chunk - 1) * q_size;
        for (int64_t i = begin; i < end; ++i) gq[i] += part[i];
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
