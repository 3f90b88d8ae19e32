// Reductions: any set of axes is brought into the (outer, extent, inner) form the
// kernels take — without a copy when the reduced axes are adjacent in a contiguous
// tensor; otherwise sums reduce one adjacent run at a time (staged_sum) and max moves
// the axes last with a permuted copy.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "backward.h"
#include "internal.h"
#include "steepest/profiler.h"

namespace steepest::ops {

using detail::record;

namespace {

struct ReductionPlan {
  Tensor layout;  // contiguous, viewed as (outer, extent, inner)
  Dims order;     // permutation applied to x to get `layout`
  Dims permuted_shape;
  int64_t outer = 1, extent = 1, inner = 1;
  Dims out_shape, kept_shape;
};

// Bit i set: axis i is reduced.
uint32_t reduced_mask(const char* op, const Tensor& x, const Axes& axes) {
  if (!axes) return (1u << x.ndim()) - 1;
  uint32_t reduced = 0;
  for (int64_t axis : *axes) {
    // A 0-d tensor takes axis 0 or -1 (as torch): there is nothing to reduce.
    if (x.ndim() == 0) {
      normalize_axis(op, axis, x.shape(), 1);
      continue;
    }
    int a = normalize_axis(op, axis, x.shape());
    if (reduced & (1u << a)) fail(op, "axis ", axis, " is repeated");
    reduced |= 1u << a;
  }
  return reduced;
}

// Whether the reduced axes form one adjacent run (or there are none).
bool one_run(uint32_t reduced) {
  if (reduced == 0) return true;
  const uint32_t shifted = reduced >> __builtin_ctz(reduced);
  return (shifted & (shifted + 1)) == 0;
}

ReductionPlan plan_reduction(const char* op, const Tensor& x, const Axes& axes, bool keepdims) {
  int ndim = x.ndim();
  const uint32_t reduced = reduced_mask(op, x, axes);
  ReductionPlan plan;
  for (int i = 0; i < ndim; ++i) {
    bool r = reduced & (1u << i);
    plan.kept_shape.push_back(r ? 1 : x.shape()[i]);
    if (!r || keepdims) plan.out_shape.push_back(r ? 1 : x.shape()[i]);
  }
  // Reduced axes form one adjacent run?
  int first = -1, last = -1;
  for (int i = 0; i < ndim; ++i)
    if (reduced & (1u << i)) {
      if (first < 0) first = i;
      last = i;
    }
  bool adjacent = first >= 0;
  for (int i = first; adjacent && i <= last; ++i)
    if (!(reduced & (1u << i))) adjacent = false;
  if (first < 0) {  // no axes: reduce a dummy extent of 1
    for (int i = 0; i < ndim; ++i) plan.order.push_back(i);
    plan.layout = contiguous(x.detach());
    plan.outer = x.numel();
  } else if (adjacent) {
    for (int i = 0; i < ndim; ++i) plan.order.push_back(i);
    plan.layout = contiguous(x.detach());
    for (int i = 0; i < ndim; ++i) {
      int64_t d = x.shape()[i];
      if (i < first) plan.outer *= d;
      else if (i <= last) plan.extent *= d;
      else plan.inner *= d;
    }
  } else {
    for (int i = 0; i < ndim; ++i)
      if (!(reduced & (1u << i))) {
        plan.order.push_back(i);
        plan.outer *= x.shape()[i];
      }
    for (int i = 0; i < ndim; ++i)
      if (reduced & (1u << i)) {
        plan.order.push_back(i);
        plan.extent *= x.shape()[i];
      }
    plan.layout = contiguous(permute(x.detach(), plan.order));
  }
  plan.permuted_shape = plan.layout.shape();
  return plan;
}

// Sums over axes that are not adjacent, one run of adjacent reduced axes at a time from
// the innermost: each stage is an (outer, extent, inner) reduction of the previous
// stage's result, so no permuted copy of x is made (an NCHW sum over (0, 2, 3) adds
// rows of H·W, then columns of C). The stages keep float32 sums for 16-bit x. Returns
// the sums with the reduced axes kept as 1, and the number of elements each adds.
Tensor staged_sum(const Tensor& x, uint32_t reduced, int64_t& count) {
  Tensor current = contiguous(x.detach());
  const DType sums = compute_dtype(x.dtype());
  Dims shape = current.shape();
  count = 1;
  for (int end = x.ndim() - 1; end >= 0;) {
    if (!(reduced & (1u << end))) {
      --end;
      continue;
    }
    int begin = end;
    while (begin > 0 && (reduced & (1u << (begin - 1)))) --begin;
    int64_t outer = 1, extent = 1, inner = 1;
    Dims next = shape;
    for (int i = 0; i < x.ndim(); ++i) {
      if (i < begin) outer *= shape[i];
      else if (i <= end) extent *= shape[i];
      else inner *= shape[i];
      if (i >= begin && i <= end) next[i] = 1;
    }
    Tensor out = Tensor::empty(next, sums, x.device());
    STEEPEST_KERNEL(x.device(), reduce)(ReduceOp::Sum, current, outer, extent, inner, out,
                                        nullptr);
    count *= extent;
    current = out;
    shape = next;
    end = begin - 1;
  }
  return current;
}

Tensor run_sum(const char* op, const Tensor& x_in, const Axes& axes, bool keepdims, bool mean) {
  // Integer and bool tensors sum exactly in int64 (as torch); their mean is refused, as
  // torch refuses it (the result dtype would be a guess).
  if (mean) detail::check_float(op, x_in, "input");
  detail::check_defined(op, x_in, "input");
  const Tensor x = is_floating(x_in.dtype()) ? x_in : astype(x_in, DType::Int64);
  const uint32_t reduced = reduced_mask(op, x, axes);
  if (!one_run(reduced)) {
    Dims kept_shape, out_shape;
    for (int i = 0; i < x.ndim(); ++i) {
      const bool r = reduced & (1u << i);
      kept_shape.push_back(r ? 1 : x.shape()[i]);
      if (!r || keepdims) out_shape.push_back(r ? 1 : x.shape()[i]);
    }
    int64_t count = 0;
    Tensor out = staged_sum(x, reduced, count);
    double scale = 1.0;
    if (mean) {
      scale = count ? 1.0 / static_cast<double>(count) : std::nan("");
      STEEPEST_KERNEL(x.device(), unary)(UnaryOp::MulScalar, out, out, scale);
    }
    out = reshape(astype(out, x.dtype()), out_shape);
    record<SumBackward>(out, {&x}, x.shape(), kept_shape, scale);
    return out;
  }
  ReductionPlan plan = plan_reduction(op, x, axes, keepdims);
  // A 16-bit mean keeps the float sums (the CPU reduce kernel may write float32 for a
  // 16-bit input) and rounds once, after the division.
  const bool round_after = mean && is_half_float(x.dtype());
  Tensor out = Tensor::empty(plan.out_shape, round_after ? DType::Float32 : x.dtype(), x.device());
  STEEPEST_KERNEL(x.device(), reduce)(ReduceOp::Sum, plan.layout, plan.outer, plan.extent,
                                      plan.inner, out, nullptr);
  double scale = 1.0;
  if (mean) {
    scale = plan.extent ? 1.0 / static_cast<double>(plan.extent) : std::nan("");
    STEEPEST_KERNEL(x.device(), unary)(UnaryOp::MulScalar, out, out, scale);
  }
  if (round_after) out = astype(out, x.dtype());
  record<SumBackward>(out, {&x}, x.shape(), plan.kept_shape, scale);
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, const Axes& axes, bool keepdims) {
  STEEPEST_PROFILE_OP("sum");
  return run_sum("sum", x, axes, keepdims, false);
}

Tensor mean(const Tensor& x, const Axes& axes, bool keepdims) {
  STEEPEST_PROFILE_OP("mean");
  return run_sum("mean", x, axes, keepdims, true);
}

Tensor max(const Tensor& x, const Axes& axes, bool keepdims) {
  STEEPEST_PROFILE_OP("max");
  detail::check_defined("max", x, "input");
  ReductionPlan plan = plan_reduction("max", x, axes, keepdims);
  if (plan.extent == 0 || (x.numel() == 0 && !axes))
    fail("max", "cannot take the max over an empty axis (input shape ", x.shape(),
         "); there is no identity for max");
  Tensor out = Tensor::empty(plan.out_shape, x.dtype(), x.device());
  STEEPEST_KERNEL(x.device(), reduce)(ReduceOp::Max, plan.layout, plan.outer, plan.extent,
                                      plan.inner, out, nullptr);
  if (any_requires_grad({&x})) {
    Tensor input = reshape(plan.layout, {plan.outer, plan.extent, plan.inner});
    Tensor result = reshape(detail::saved_output(out), {plan.outer, 1, plan.inner});
    record<MaxBackward>(out, {&x}, input, result, plan.order, plan.permuted_shape);
  }
  return out;
}

Tensor sum_to(const Tensor& x, const Dims& shape) {
  STEEPEST_PROFILE_OP("sum_to");
  if (x.shape() == shape) return x;
  int lead = x.ndim() - shape.size();
  if (lead < 0) fail("sum_to", "cannot sum shape ", x.shape(), " to ", shape);
  std::vector<int64_t> axes;
  for (int i = 0; i < x.ndim(); ++i) {
    if (i < lead) {
      axes.push_back(i);
    } else if (shape[i - lead] == 1 && x.shape()[i] != 1) {
      axes.push_back(i);
    } else if (shape[i - lead] != x.shape()[i]) {
      fail("sum_to", "cannot sum shape ", x.shape(), " to ", shape);
    }
  }
  if (axes.empty()) return reshape(x, shape);
  return reshape(sum(x, axes, true), shape);
}

// --- creation ----------------------------------------------------------------------

Tensor randn(const Dims& shape, std::optional<uint64_t> seed, DType dtype, Device device) {
  STEEPEST_PROFILE_OP("randn");
  Tensor out = Tensor::empty(shape, dtype, device);
  STEEPEST_KERNEL(device, random_fill)(out, RandomKind::Normal, seed ? *seed : next_seed());
  return out;
}

Tensor rand(const Dims& shape, std::optional<uint64_t> seed, DType dtype, Device device) {
  STEEPEST_PROFILE_OP("rand");
  Tensor out = Tensor::empty(shape, dtype, device);
  STEEPEST_KERNEL(device, random_fill)(out, RandomKind::Uniform, seed ? *seed : next_seed());
  return out;
}

Tensor arange(int64_t start, int64_t stop, int64_t step, DType dtype, Device device) {
  STEEPEST_PROFILE_OP("arange");
  if (step == 0) fail("arange", "step must not be zero");
  // In 128 bits: stop − start may not fit in 64.
  const __int128 span = static_cast<__int128>(stop) - start + step - (step > 0 ? 1 : -1);
  const __int128 wide_count = std::max<__int128>(0, span / step);
  if (wide_count > std::numeric_limits<int64_t>::max())
    fail("arange", "[", start, ", ", stop, ") in steps of ", step, " has too many elements");
  const auto count = static_cast<int64_t>(wide_count);
  Tensor host = Tensor::empty({count}, DType::Int64);
  int64_t* p = host.data<int64_t>();
  for (int64_t i = 0; i < count; ++i) p[i] = start + i * step;
  Tensor typed = astype(host, dtype);
  return device.is_cpu() ? typed : to_device(typed, device);
}

}  // namespace steepest::ops

namespace steepest {
namespace {
std::atomic<uint64_t> g_seed_counter{0x5EED5EED5EEDull};
}
void manual_seed(uint64_t seed) { g_seed_counter.store(seed); }
// Successive draws get distinct keys: the counter advances by an odd constant.
uint64_t next_seed() { return g_seed_counter.fetch_add(0x9E3779B97F4A7C15ull); }
}  // namespace steepest
