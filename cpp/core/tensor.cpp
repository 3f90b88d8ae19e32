#include "steepest/tensor.h"

#include <limits>

#include "steepest/autograd.h"
#include "steepest/kernels.h"

namespace steepest {

Dims contiguous_strides(const Dims& shape) {
  Dims strides = Dims::filled(shape.size(), 1);
  int64_t running = 1;
  for (int i = shape.size() - 1; i >= 0; --i) {
    strides[i] = running;
    // Only an empty tensor gets here with an overflowing product (Dims::product checks
    // the others); its strides address nothing, so they saturate.
    if (__builtin_mul_overflow(running, shape[i] > 0 ? shape[i] : 1, &running))
      running = std::numeric_limits<int64_t>::max();
  }
  return strides;
}

Tensor Tensor::empty(const Dims& shape, DType dtype, Device device) {
  for (int64_t d : shape)
    if (d < 0) fail("empty", "negative dimension in shape ", shape);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = Storage::allocate(checked_bytes("empty", shape.product(), itemsize(dtype)), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Dims& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::full(const Dims& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  STEEPEST_KERNEL(device, fill)(t, value);
  return t;
}

Tensor Tensor::view_of(std::shared_ptr<Storage> storage, const Dims& shape, const Dims& strides,
                       int64_t offset, DType dtype) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int i = ndim() - 1; i >= 0; --i) {
    int64_t extent = impl_->shape[i];
    if (extent == 1) continue;
    if (impl_->strides[i] != expected) return false;
    expected *= extent;
  }
  return true;
}

void Tensor::set_requires_grad(bool value) {
  if (value && !is_floating(dtype()))
    fail<TypeError>("requires_grad", "only floating-point tensors can require gradients, got ",
                    dtype_name(dtype()));
  if (!value && !is_leaf())
    fail<StateError>("requires_grad",
                     "cannot turn off requires_grad of a non-leaf tensor; use detach()");
  impl_->requires_grad = value;
}

Tensor Tensor::detach() const {
  return view_of(impl_->storage, impl_->shape, impl_->strides, impl_->offset, impl_->dtype);
}

Tensor Tensor::alias(const Dims& shape, const Dims& strides, int64_t offset) const {
  return view_of(impl_->storage, shape, strides, offset, impl_->dtype);
}

double Tensor::item() const {
  if (numel() != 1)
    fail("item", "only one-element tensors can be converted to a Python scalar, got shape ",
         shape());
  Tensor host = *this;
  if (!device().is_cpu()) {
    host = Tensor::empty(shape(), dtype());
    STEEPEST_KERNEL(device(), copy)(*this, host);
  }
  return dispatch_all("item", dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    return static_cast<double>(*host.data<T>());
  });
}

}  // namespace steepest
