// Fused attention on the GPU: the online softmax of cpp/cpu/attention.cpp, one warp per
// query row (forward, dQ) or key row (dK, dV), lanes splitting the feature axis. The
// scores are never stored: memory is O(T). A plain, correct kernel, not a tuned one
// (no shared-memory tiles, no tensor cores); float32/float64, the op layer widens 16-bit
// inputs. Each row's outputs are accumulated by the lanes that own their features, so
// the results are deterministic without atomics.
#include <cmath>

#include "common.cuh"

namespace steepest::cuda {
namespace {

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
  const T* qi = q + row * a.d;
  const T* kb = k + b * a.tk * a.d;
  const T* vb = v + b * a.tk * a.dv;
  T* oi = out + row * a.dv;
  for (int64_t c = threadIdx.x; c < a.dv; c += 32) oi[c] = 0;
  T m = -T(INFINITY), l = 0;
  const int64_t end = attention_key_end(a, i);
  for (int64_t j = 0; j < end; ++j) {
    const T s = dot_rows(qi, kb + j * a.d, a.d) * static_cast<T>(a.scale);
    const T m_new = s > m ? s : m;
    const T rescale = exp(m - m_new), p = exp(s - m_new);
    l = l * rescale + p;
    m = m_new;
    const T* vj = vb + j * a.dv;
    for (int64_t c = threadIdx.x; c < a.dv; c += 32) oi[c] = oi[c] * rescale + p * vj[c];
  }
  const T inv = l > 0 ? T(1) / l : T(0);
  for (int64_t c = threadIdx.x; c < a.dv; c += 32) oi[c] *= inv;
  if (threadIdx.x == 0) lse[row] = l > 0 ? m + log(l) : -T(INFINITY);
}

// D_i = dO_i·O_i.
template <class T>
__global__ void attention_delta_rows(int64_t rows, int64_t dv, const T* dout, const T* out,
                                     T* delta) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const T sum = dot_rows(dout + row * dv, out + row * dv, dv);
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
  const T* kb = k + b * a.tk * a.d;
  const T* vb = v + b * a.tk * a.dv;
  T* dqi = dq + row * a.d;
  for (int64_t c = threadIdx.x; c < a.d; c += 32) dqi[c] = 0;
  const int64_t end = attention_key_end(a, i);
  for (int64_t j = 0; j < end; ++j) {
    T p;
    const T ds = scaled_score_grad(a, q + row * a.d, kb + j * a.d, dout + row * a.dv,
                                   vb + j * a.dv, lse[row], delta[row], &p);
    for (int64_t c = threadIdx.x; c < a.d; c += 32) dqi[c] += ds * kb[j * a.d + c];
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
  T* dkj = dk + row * a.d;
  T* dvj = dv + row * a.dv;
  for (int64_t c = threadIdx.x; c < a.d; c += 32) dkj[c] = 0;
  for (int64_t c = threadIdx.x; c < a.dv; c += 32) dvj[c] = 0;
  for (int64_t i = 0; i < a.tq; ++i) {
    if (j >= attention_key_end(a, i)) continue;
    const int64_t r = b * a.tq + i;
    T p;
    const T ds = scaled_score_grad(a, q + r * a.d, k + row * a.d, dout + r * a.dv,
                                   v + row * a.dv, lse[r], delta[r], &p);
    for (int64_t c = threadIdx.x; c < a.d; c += 32) dkj[c] += ds * q[r * a.d + c];
    for (int64_t c = threadIdx.x; c < a.dv; c += 32) dvj[c] += p * dout[r * a.dv + c];
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
          q_rows, args.dv, grad_out.data<T>(), out.data<T>(), delta.data<T>());
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
