// Element types and the dispatch helpers that turn a runtime DType into a C++ type.
// float16/bfloat16 have an enum value and a size so storage code is ready for them;
// kernels reject them until the mixed-precision work adds their arithmetic.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "steepest/common.h"

namespace steepest {

enum class DType : uint8_t { Bool, Int32, Int64, Float16, BFloat16, Float32, Float64 };

size_t itemsize(DType dtype);
const char* dtype_name(DType dtype);
DType dtype_from_name(std::string_view name);
inline bool is_floating(DType d) {
  return d == DType::Float16 || d == DType::BFloat16 || d == DType::Float32 || d == DType::Float64;
}

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

}  // namespace steepest
