// Element types and the dispatch helpers that turn a runtime DType into a C++ type.
// float16/bfloat16 are stored as 16 bits (steepest/half.h) and computed in float: the
// kernels that support them (CPU and CUDA) dispatch with the *_storage helpers below,
// which also name the compute type; dispatch_float/dispatch_all (convolution, pooling,
// optimizers) keep rejecting them with a clear error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>

#include "steepest/common.h"
#include "steepest/half.h"

namespace steepest {

enum class DType : uint8_t { Bool, Int32, Int64, Float16, BFloat16, Float32, Float64 };

size_t itemsize(DType dtype);
const char* dtype_name(DType dtype);
DType dtype_from_name(std::string_view name);
inline bool is_floating(DType d) {
  return d == DType::Float16 || d == DType::BFloat16 || d == DType::Float32 || d == DType::Float64;
}
inline bool is_half_float(DType d) { return d == DType::Float16 || d == DType::BFloat16; }
// The dtype kernels compute a dtype in: float32 for the 16-bit floats.
inline DType compute_dtype(DType d) { return is_half_float(d) ? DType::Float32 : d; }

// --- type promotion (NumPy >= 2 / PyTorch): the one place the rule is written --------
// The dtype of Python floats, of true division and of float functions of integers.
inline constexpr DType kDefaultFloat = DType::Float32;

// The lattice bool < int32 < int64 < {float16, bfloat16} < float32 < float64, where
// float16 and bfloat16 meet at float32 (as torch.promote_types).
DType promote_types(DType a, DType b);

// How strongly an operand's dtype takes part in promotion (torch's three categories): a
// tensor with dimensions decides within its kind; a 0-d tensor or a Python scalar (weak)
// only lifts the result to a higher kind (bool < integer < floating). A Python scalar is
// described by Bool, Int64 or Float64; a weak float lifts an integer result to
// kDefaultFloat, so int32 tensor + 0.5 is float32 and float16 tensor + 0.5 stays float16.
enum class Operand : uint8_t { Scalar, ZeroDim, Tensor };

// Accumulates operands into their result dtype (torch's ResultTypeState).
class ResultType {
 public:
  ResultType& add(DType dtype, Operand kind);
  DType result() const;

 private:
  // Per category: whether one was seen, and the promotion of those seen.
  bool seen_[3] = {false, false, false};
  DType dtype_[3] = {DType::Bool, DType::Bool, DType::Bool};
};

// The dtype of a binary operation on operands of these dtypes and kinds.
DType result_type(DType a, Operand a_kind, DType b, Operand b_kind);

template <class T>
struct DTypeOf;
template <>
struct DTypeOf<bool> {
  static constexpr DType value = DType::Bool;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType value = DType::Int32;
};
template <>
struct DTypeOf<int64_t> {
  static constexpr DType value = DType::Int64;
};
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::Float32;
};
template <>
struct DTypeOf<double> {
  static constexpr DType value = DType::Float64;
};
template <>
struct DTypeOf<Half> {
  static constexpr DType value = DType::Float16;
};
template <>
struct DTypeOf<BFloat16> {
  static constexpr DType value = DType::BFloat16;
};

template <class T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) for the floating types that have kernels.
template <class Fn>
decltype(auto) dispatch_float(const char* op, DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32:
      return fn(TypeTag<float>{});
    case DType::Float64:
      return fn(TypeTag<double>{});
    default:
      fail<TypeError>(op, "expected a float32 or float64 tensor, got ", dtype_name(dtype));
  }
}

// Calls fn(TypeTag<T>{}) for every type that has kernels (floats, integers, bool).
template <class Fn>
decltype(auto) dispatch_all(const char* op, DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Bool:
      return fn(TypeTag<bool>{});
    case DType::Int32:
      return fn(TypeTag<int32_t>{});
    case DType::Int64:
      return fn(TypeTag<int64_t>{});
    case DType::Float32:
      return fn(TypeTag<float>{});
    case DType::Float64:
      return fn(TypeTag<double>{});
    default:
      fail<TypeError>(op, dtype_name(dtype), " tensors are not supported yet");
  }
}

// A storage type S and the type kernels compute it in (float for Half/BFloat16).
template <class S>
struct StorageTag {
  using type = S;
  using compute = typename ComputeTypeOf<S>::type;
};

// Calls fn(StorageTag<S>{}) for every floating type: float16, bfloat16, float32, float64.
template <class Fn>
decltype(auto) dispatch_float_storage(const char* op, DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float16:
      return fn(StorageTag<Half>{});
    case DType::BFloat16:
      return fn(StorageTag<BFloat16>{});
    case DType::Float32:
      return fn(StorageTag<float>{});
    case DType::Float64:
      return fn(StorageTag<double>{});
    default:
      fail<TypeError>(op, "expected a floating-point tensor, got ", dtype_name(dtype));
  }
}

// Calls fn(TypeTag<I>{}) for the integer types that index tensors use.
template <class Fn>
decltype(auto) dispatch_index(const char* op, DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Bool:
      return fn(TypeTag<bool>{});
    case DType::Int32:
      return fn(TypeTag<int32_t>{});
    case DType::Int64:
      return fn(TypeTag<int64_t>{});
    default:
      fail<TypeError>(op, "expected an integer index tensor, got ", dtype_name(dtype));
  }
}

// dispatch_all plus the 16-bit floats (as Half/BFloat16): for kernels that only move or
// convert values (copy, fill).
template <class Fn>
decltype(auto) dispatch_all_storage(const char* op, DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float16:
      return fn(TypeTag<Half>{});
    case DType::BFloat16:
      return fn(TypeTag<BFloat16>{});
    default:
      return dispatch_all(op, dtype, std::forward<Fn>(fn));
  }
}

}  // namespace steepest
