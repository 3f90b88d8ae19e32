// CPU loops of the everyday pointwise ops (formulas in steepest/pointwise.h) and of
// where. float16/bfloat16 compute each element in float and round once.
#include "loops.h"
#include "steepest/kernels.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {
namespace {

// Elements per thread worth a parallel region: the rules call libm (3-26 ns an element).
constexpr int64_t kPointwiseGrain = 4096;

template <class S, class F>
void pointwise_loop(const Tensor& a, const Tensor* b, Tensor& out, double p0, double p1, F f) {
  using C = typename ComputeTypeOf<S>::type;
  const C q0 = static_cast<C>(p0), q1 = static_cast<C>(p1);
  S* po0 = out.data<S>();
  const S* pa0 = a.data<S>();
  // A unary op walks a a second time in place of b (never read by the rule).
  const Tensor& bt = b ? *b : a;
  const S* pb0 = bt.data<S>();
  StridedLoop<3> loop(out.shape(), {&out.strides(), &a.strides(), &bt.strides()});
  loop.run([&](const std::array<int64_t, 3>& off, int64_t n, const std::array<int64_t, 3>& st) {
    S* po = po0 + off[0];
    const S* pa = pa0 + off[1];
    const S* pb = pb0 + off[2];
    for (int64_t i = 0; i < n; ++i)
      po[i * st[0]] = S(f(C(pa[i * st[1]]), C(pb[i * st[2]]), q0, q1));
  }, kPointwiseGrain);
}

template <class T>
void where_loop(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) {
  const bool* pc0 = cond.data<bool>();
  const T* pa0 = a.data<T>();
  const T* pb0 = b.data<T>();
  T* po0 = out.data<T>();
  StridedLoop<4> loop(out.shape(),
                      {&out.strides(), &cond.strides(), &a.strides(), &b.strides()});
  loop.run([&](const std::array<int64_t, 4>& off, int64_t n, const std::array<int64_t, 4>& st) {
    T* po = po0 + off[0];
    const bool* pc = pc0 + off[1];
    const T* pa = pa0 + off[2];
    const T* pb = pb0 + off[3];
    for (int64_t i = 0; i < n; ++i) po[i * st[0]] = pc[i * st[1]] ? pa[i * st[2]] : pb[i * st[3]];
  });
}

}  // namespace

void pointwise(PointwiseOp op, const Tensor& a, const Tensor* b, Tensor& out, double p0,
               double p1) {
  pointwise::dispatch(op, a.dtype(), [&](auto tag, auto f) {
    pointwise_loop<typename decltype(tag)::type>(a, b, out, p0, p1, f);
  });
}

void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) {
  dispatch_all_storage("where", a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    where_loop<T>(cond, a, b, out);
  });
}

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
