#include "steepest/common.h"

#include "steepest/device.h"
#include "steepest/dtype.h"

namespace steepest {

Dims::Dims(std::initializer_list<int64_t> values) {
  for (int64_t v : values) push_back(v);
}

Dims Dims::filled(int n, int64_t value) {
  Dims d;
  for (int i = 0; i < n; ++i) d.push_back(value);
  return d;
}

void Dims::push_back(int64_t value) {
  if (size_ == kMaxDims) fail("shape", "tensors have at most ", kMaxDims, " dimensions");
  values_[static_cast<size_t>(size_++)] = value;
}

void Dims::insert(int pos, int64_t value) {
  push_back(0);
  for (int i = size_ - 1; i > pos; --i) values_[i] = values_[i - 1];
  values_[static_cast<size_t>(pos)] = value;
}

void Dims::erase(int pos) {
  for (int i = pos; i + 1 < size_; ++i) values_[i] = values_[i + 1];
  --size_;
}

int64_t Dims::product() const {
  // An empty axis empties the tensor, however large the others (no overflow to report).
  for (int i = 0; i < size_; ++i)
    if (values_[i] == 0) return 0;
  int64_t p = 1;
  for (int i = 0; i < size_; ++i)
    if (__builtin_mul_overflow(p, values_[i], &p))
      throw ValueError(cat("[shape] ", str(), " has more elements than 2^63 - 1"));
  return p;
}

size_t checked_bytes(const char* op, int64_t numel, size_t item) {
  // 2^48 bytes (256 TiB) is beyond any machine's memory, and far from overflowing the
  // size arithmetic of the allocators.
  constexpr int64_t kMaxBytes = int64_t{1} << 48;
  int64_t bytes = 0;
  if (numel < 0 || __builtin_mul_overflow(numel, static_cast<int64_t>(item), &bytes) || bytes > kMaxBytes)
    throw MemoryError(cat("[", op, "] ", numel, " elements of ", item, " bytes exceed any memory (",
                          "at most 2^48 bytes per tensor)"));
  return static_cast<size_t>(bytes);
}

bool Dims::operator==(const Dims& other) const {
  if (size_ != other.size_) return false;
  for (int i = 0; i < size_; ++i)
    if (values_[i] != other.values_[i]) return false;
  return true;
}

std::string Dims::str() const {
  std::string s = "(";
  for (int i = 0; i < size_; ++i) {
    if (i) s += ", ";
    s += std::to_string(values_[i]);
  }
  if (size_ == 1) s += ",";
  return s + ")";
}

int normalize_axis(const char* op, int64_t axis, const Dims& shape, int ndim) {
  if (ndim < 0) ndim = shape.size();
  int64_t wrapped = axis < 0 ? axis + ndim : axis;
  if (wrapped < 0 || wrapped >= ndim)
    fail<ValueError>(op, "axis ", axis, " is out of range for a tensor of shape ", shape, " (",
                     shape.size(), " dimensions)");
  return static_cast<int>(wrapped);
}

size_t itemsize(DType dtype) {
  switch (dtype) {
    case DType::Bool:
      return 1;
    case DType::Float16:
    case DType::BFloat16:
      return 2;
    case DType::Int32:
    case DType::Float32:
      return 4;
    case DType::Int64:
    case DType::Float64:
      return 8;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Bool:
      return "bool";
    case DType::Int32:
      return "int32";
    case DType::Int64:
      return "int64";
    case DType::Float16:
      return "float16";
    case DType::BFloat16:
      return "bfloat16";
    case DType::Float32:
      return "float32";
    case DType::Float64:
      return "float64";
  }
  return "?";
}

DType dtype_from_name(std::string_view name) {
  for (DType d : {DType::Bool, DType::Int32, DType::Int64, DType::Float16, DType::BFloat16,
                  DType::Float32, DType::Float64})
    if (name == dtype_name(d)) return d;
  fail<TypeError>("dtype", "unknown dtype '", name,
                  "'; expected one of float32, float64, float16, bfloat16, int32, int64, bool");
}

namespace {

// Position on the promotion lattice; float16 and bfloat16 share a rung.
int promotion_rank(DType d) {
  switch (d) {
    case DType::Bool:
      return 0;
    case DType::Int32:
      return 1;
    case DType::Int64:
      return 2;
    case DType::Float16:
    case DType::BFloat16:
      return 3;
    case DType::Float32:
      return 4;
    case DType::Float64:
      return 5;
  }
  return 0;
}

// torch's combine_categories: a weaker category only matters when it is of a higher kind
// (bool < integer < floating) than the stronger one's result.
DType combine_categories(DType stronger, DType weaker) {
  if (is_floating(stronger)) return stronger;
  if (stronger == DType::Bool || is_floating(weaker)) return promote_types(stronger, weaker);
  return stronger;
}

}  // namespace

DType promote_types(DType a, DType b) {
  if (a == b) return a;
  if (is_half_float(a) && is_half_float(b)) return DType::Float32;
  return promotion_rank(a) >= promotion_rank(b) ? a : b;
}

ResultType& ResultType::add(DType dtype, Operand kind) {
  const auto k = static_cast<size_t>(kind);
  // A Python float has no width of its own: it stands for the default float dtype.
  if (kind == Operand::Scalar && is_floating(dtype)) dtype = kDefaultFloat;
  dtype_[k] = seen_[k] ? promote_types(dtype_[k], dtype) : dtype;
  seen_[k] = true;
  return *this;
}

DType ResultType::result() const {
  // Folded from the weakest category up, as torch's result_type does.
  bool have = false;
  DType r = kDefaultFloat;
  for (size_t k = 0; k < 3; ++k) {
    if (!seen_[k]) continue;
    r = have ? combine_categories(dtype_[k], r) : dtype_[k];
    have = true;
  }
  return r;
}

DType result_type(DType a, Operand a_kind, DType b, Operand b_kind) {
  return ResultType().add(a, a_kind).add(b, b_kind).result();
}

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

Device parse_device(std::string_view text) {
  if (text == "cpu") return {};
  if (text == "cuda") return {DeviceType::CUDA, 0};
  if (text.substr(0, 5) == "cuda:" && text.size() > 5) {
    int index = 0;
    for (char c : text.substr(5)) {
      if (c < '0' || c > '9') fail("device", "unknown device '", text, "'");
      index = index * 10 + (c - '0');
    }
    return {DeviceType::CUDA, index};
  }
  fail("device", "unknown device '", text, "'; expected 'cpu', 'cuda' or 'cuda:N'");
}

}  // namespace steepest
