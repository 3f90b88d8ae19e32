// Tensor: a strided view (shape, strides, offset in elements) of a Storage, plus the
// autograd fields. Tensor is a cheap handle (one shared_ptr); copies alias.
#pragma once

#include <cstdint>
#include <memory>

#include "steepest/common.h"
#include "steepest/device.h"
#include "steepest/dtype.h"
#include "steepest/storage.h"

namespace steepest {

class Node;
class Tensor;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Dims shape;
  Dims strides;  // in elements
  int64_t offset = 0;
  DType dtype = DType::Float32;

  // Autograd: a leaf that requires grad has no grad_fn; a result of a differentiable op
  // has grad_fn and requires_grad. The accumulator is cached weakly so leaves never
  // own graph nodes (no cycles).
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;
  std::shared_ptr<TensorImpl> grad;
  std::weak_ptr<Node> grad_accumulator;

  TensorImpl() = default;
  TensorImpl(const TensorImpl&) = default;
  TensorImpl& operator=(const TensorImpl&) = default;
  // Hands its grad_fn to release_graph (autograd.h), so that freeing a long graph never
  // recurses once per node.
  ~TensorImpl();
};

Dims contiguous_strides(const Dims& shape);

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  static Tensor empty(const Dims& shape, DType dtype, Device device = {});
  static Tensor zeros(const Dims& shape, DType dtype, Device device = {});
  static Tensor full(const Dims& shape, double value, DType dtype, Device device = {});
  // A view of existing storage.
  static Tensor view_of(std::shared_ptr<Storage> storage, const Dims& shape, const Dims& strides,
                        int64_t offset, DType dtype);

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

  const Dims& shape() const { return impl_->shape; }
  const Dims& strides() const { return impl_->strides; }
  int64_t offset() const { return impl_->offset; }
  int ndim() const { return impl_->shape.size(); }
  int64_t size(int axis) const { return impl_->shape[axis]; }
  int64_t numel() const { return impl_->shape.product(); }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device(); }
  const std::shared_ptr<Storage>& storage() const { return impl_->storage; }
  bool is_contiguous() const;

  void* data_ptr() const {
    return static_cast<char*>(impl_->storage->data()) +
           impl_->offset * static_cast<int64_t>(itemsize(impl_->dtype));
  }
  template <class T>
  T* data() const {
    return static_cast<T*>(data_ptr());
  }

  bool requires_grad() const { return impl_->requires_grad; }
  void set_requires_grad(bool value);
  const std::shared_ptr<Node>& grad_fn() const { return impl_->grad_fn; }
  bool is_leaf() const { return impl_->grad_fn == nullptr; }
  Tensor grad() const { return Tensor(impl_->grad); }
  void set_grad(const Tensor& grad) { impl_->grad = grad.impl_; }

  // Same data, no history: the result is a leaf that does not require grad.
  Tensor detach() const;
  // Same data with a new shape/strides, no autograd (the op layer records views).
  Tensor alias(const Dims& shape, const Dims& strides, int64_t offset) const;
  double item() const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

}  // namespace steepest
