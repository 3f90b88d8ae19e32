// Fused attention on the GPU: the online softmax of cpp/cpu/attention.cpp, one warp per
// query row (forward, dQ) or key row (dK, dV), lanes splitting the feature axis. The
// scores are never stored: memory is O(T). A plain, correct kernel, not a tuned one
// (no shared-memory tiles, no tensor cores); float32/float64, the op layer widens 16-bit
// inputs. Each row's outputs are accumulated by the lanes that own their features, so
// the results are deterministic without atomics. Operands are read and written through
// their AttentionLayouts (strided head views in place).
#include <cmath>

#include "common.cuh"

namespace steepest::cuda {
namespace {

// Row i of entry b of an operand stored with layout l.
template <class T>
__device__ T* row_at(T* base, const AttentionLayout& l, const AttentionArgs& a, int64_t b,
                     int64_t i) {
  return base + l.entry(b, a.heads) + i * l.row;
}

template <class T>
__device__ T dot_rows(const T* x, const T* y, int64_t n) {
  T part = 0;
  for (int64_t c = threadIdx.x; c < n; c += 32) part += x[c] * y[c];
  return warp_reduce(part, SumOp{});
}

template <class T>
__global__ void attention_forward_rows(AttentionArgs a, const T* q, const T* k, const T* v,
                                       T* out, T* lse) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= a.batch * a.tq) return;  // the whole warp shares the row
  const int64_t b = row / a.tq, i = row % a.tq;
  const T* qi = row_at(q, a.q, a, b, i);
  T* oi = row_at(out, a.out, a, b, i);
  for (int64_t c = threadIdx.x; c < a.dv; c += 32) oi[c] = 0;
  T m = -T(INFINITY), l = 0;
  const int64_t end = attention_key_end(a, i);
  for (int64_t j = 0; j < end; ++j) {
    const T s = dot_rows(qi, row_at(k, a.k, a, b, j), a.d) * static_cast<T>(a.scale);
    const T m_new = s > m ? s : m;
    const T rescale = exp(m - m_new), p = exp(s - m_new);
    l = l * rescale + p;
    m = m_new;
    const T* vj = row_at(v, a.v, a, b, j);
    for (int64_t c = threadIdx.x; c < a.dv; c += 32) oi[c] = oi[c] * rescale + p * vj[c];
  }
  const T inv = l > 0 ? T(1) / l : T(0);
  for (int64_t c = threadIdx.x; c < a.dv; c += 32) oi[c] *= inv;
  if (threadIdx.x == 0) lse[row] = l > 0 ? m + log(l) : -T(INFINITY);
}

// D_i = dO_i·O_i.
template <class T>
__global__ void attention_delta_rows(AttentionArgs a, const T* dout, const T* out, T* delta) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= a.batch * a.tq) return;
  const int64_t b = row / a.tq, i = row % a.tq;
  const T sum = dot_rows(row_at(dout, a.grad_out, a, b, i), row_at(out, a.out, a, b, i), a.dv);
  if (threadIdx.x == 0) delta[row] = sum;
}

// dS_ij = P_ij (dO_i·v_j − D_i)·scale with P_ij = exp(scale·q_i·k_j − lse_i).
template <class T>
__device__ T scaled_score_grad(const AttentionArgs& a, const T* qi, const T* kj, const T* doi,
                               const T* vj, T lse_i, T delta_i, T* p_out) {
  const T scale = static_cast<T>(a.scale);
  const T p = exp(dot_rows(qi, kj, a.d) * scale - lse_i);
  *p_out = p;
  return p * (dot_rows(doi, vj, a.dv) - delta_i) * scale;
}

// dQ_i = Σ_j dS_ij k_j.
template <class T>
__global__ void attention_grad_q_rows(AttentionArgs a, const T* q, const T* k, const T* v,
                                      const T* dout, const T* lse, const T* delta, T* dq) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= a.batch * a.tq) return;
  const int64_t b = row / a.tq, i = row % a.tq;
  T* dqi = row_at(dq, a.grad_q, a, b, i);
  for (int64_t c = threadIdx.x; c < a.d; c += 32) dqi[c] = 0;
  const int64_t end = attention_key_end(a, i);
  for (int64_t j = 0; j < end; ++j) {
    T p;
    const T* kj = row_at(k, a.k, a, b, j);
    const T ds = scaled_score_grad(a, row_at(q, a.q, a, b, i), kj, row_at(dout, a.grad_out, a, b, i),
                                   row_at(v, a.v, a, b, j), lse[row], delta[row], &p);
    for (int64_t c = threadIdx.x; c < a.d; c += 32) dqi[c] += ds * kj[c];
  }
}

// dK_j = Σ_i dS_ij q_i and dV_j = Σ_i P_ij dO_i over the queries that see key j.
template <class T>
__global__ void attention_grad_kv_rows(AttentionArgs a, const T* q, const T* k, const T* v,
                                       const T* dout, const T* lse, const T* delta, T* dk,
                                       T* dv) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= a.batch * a.tk) return;
  const int64_t b = row / a.tk, j = row % a.tk;
  T* dkj = row_at(dk, a.grad_k, a, b, j);
  T* dvj = row_at(dv, a.grad_v, a, b, j);
  for (int64_t c = threadIdx.x; c < a.d; c += 32) dkj[c] = 0;
  for (int64_t c = threadIdx.x; c < a.dv; c += 32) dvj[c] = 0;
  for (int64_t i = 0; i < a.tq; ++i) {
    if (j >= attention_key_end(a, i)) continue;
    const int64_t r = b * a.tq + i;
    const T* qi = row_at(q, a.q, a, b, i);
    const T* doi = row_at(dout, a.grad_out, a, b, i);
    T p;
    const T ds = scaled_score_grad(a, qi, row_at(k, a.k, a, b, j), doi, row_at(v, a.v, a, b, j),
                                   lse[r], delta[r], &p);
    for (int64_t c = threadIdx.x; c < a.d; c += 32) dkj[c] += ds * qi[c];
    for (int64_t c = threadIdx.x; c < a.dv; c += 32) dvj[c] += p * doi[c];
  }
}

unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}

}  // namespace

void attention_forward(const AttentionArgs& args, const Tensor& q, const Tensor& k,
                       const Tensor& v, Tensor& out, Tensor& logsumexp) {
  const int64_t rows = args.batch * args.tq;
  if (rows == 0) return;
  DeviceGuard guard(q.device());
  dispatch_float("attention", q.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    attention_forward_rows<T><<<row_blocks(rows), dim3(32, kRowsPerBlock), 0, guard.stream()>>>(
        args, q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), logsumexp.data<T>());
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

void attention_backward(const AttentionArgs& args, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& grad_out,
                        const Tensor& logsumexp, Tensor& grad_q, Tensor& grad_k,
                        Tensor& grad_v) {
  const int64_t q_rows = args.batch * args.tq, k_rows = args.batch * args.tk;
  DeviceGuard guard(q.device());
  dispatch_float("attention", q.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    Tensor delta = Tensor::empty({q_rows}, q.dtype(), q.device());
    const dim3 block(32, kRowsPerBlock);
    if (q_rows > 0) {
      attention_delta_rows<T><<<row_blocks(q_rows), block, 0, guard.stream()>>>(
          args, grad_out.data<T>(), out.data<T>(), delta.data<T>());
      STEEPEST_CUDA_CHECK_LAUNCH();
      attention_grad_q_rows<T><<<row_blocks(q_rows), block, 0, guard.stream()>>>(
          args, q.data<T>(), k.data<T>(), v.data<T>(), grad_out.data<T>(), logsumexp.data<T>(),
          delta.data<T>(), grad_q.data<T>());
      STEEPEST_CUDA_CHECK_LAUNCH();
    }
    if (k_rows > 0) {
      attention_grad_kv_rows<T><<<row_blocks(k_rows), block, 0, guard.stream()>>>(
          args, q.data<T>(), k.data<T>(), v.data<T>(), grad_out.data<T>(), logsumexp.data<T>(),
          delta.data<T>(), grad_k.data<T>(), grad_v.data<T>());
      STEEPEST_CUDA_CHECK_LAUNCH();
    }
  });
}

}  // namespace steepest::cuda
