// Small shared vocabulary: fixed-capacity dimension lists and the error types every
// layer throws. Errors carry "[op] ..." messages so Python users see which op failed.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>

namespace steepest {

// Shapes live inline (no heap allocation per tensor): eager dispatch overhead matters
// more than supporting tensors of more than eight dimensions.
inline constexpr int kMaxDims = 8;

class Dims {
 public:
  Dims() = default;
  Dims(std::initializer_list<int64_t> values);
  template <class It>
  Dims(It first, It last) {
    for (; first != last; ++first) push_back(static_cast<int64_t>(*first));
  }
  static Dims filled(int n, int64_t value);

  int size() const { return size_; }
  bool empty() const { return size_ == 0; }
  int64_t& operator[](int i) { return values_[static_cast<size_t>(i)]; }
  int64_t operator[](int i) const { return values_[static_cast<size_t>(i)]; }
  int64_t back() const { return values_[static_cast<size_t>(size_ - 1)]; }
  const int64_t* begin() const { return values_.data(); }
  const int64_t* end() const { return values_.data() + size_; }
  int64_t* begin() { return values_.data(); }
  int64_t* end() { return values_.data() + size_; }
  void push_back(int64_t value);
  void insert(int pos, int64_t value);
  void erase(int pos);
  void pop_back() { --size_; }
  int64_t product() const;
  bool operator==(const Dims& other) const;
  bool operator!=(const Dims& other) const { return !(*this == other); }
  std::string str() const;  // "(2, 3)" like a Python tuple

 private:
  std::array<int64_t, kMaxDims> values_{};
  int size_ = 0;
};

struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct TypeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct IndexError : std::out_of_range {
  using std::out_of_range::out_of_range;
};
// Misuse of autograd or of runtime state (maps to RuntimeError in Python).
struct StateError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Out of memory, or a size no memory could hold (maps to MemoryError in Python).
struct MemoryError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

inline std::ostream& operator<<(std::ostream& out, const Dims& dims) { return out << dims.str(); }

template <class Error = ValueError, class... Parts>
[[noreturn]] void fail(const char* op, const Parts&... parts) {
  throw Error(cat("[", op, "] ", parts...));
}

// The bytes a tensor of `numel` elements of `item` bytes takes, or a MemoryError naming
// the op when no machine could hold them (sizes are checked before anything is allocated).
size_t checked_bytes(const char* op, int64_t numel, size_t item);

// Wraps a possibly negative axis into [0, ndim), or throws naming the op and the shape.
// `ndim` may exceed shape.size() by one for ops that insert an axis (unsqueeze).
int normalize_axis(const char* op, int64_t axis, const Dims& shape, int ndim = -1);

}  // namespace steepest
