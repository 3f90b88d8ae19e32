// Dimension collapsing for the elementwise loops of both backends (the CPU's StridedLoop
// in cpp/cpu/loops.h, CUDA's Strided in cuda/common.cuh): N operands walked together over
// one shape, with the dimensions of extent 1 dropped and neighbours that every operand
// walks contiguously merged, so that most layouts collapse to one or two dimensions.
#pragma once

#include <array>
#include <cstdint>

#include "steepest/common.h"

namespace steepest {

template <int N>
struct CollapsedDims {
  int ndim = 0;
  int64_t numel = 1;  // 0: an empty tensor, and nothing below is meaningful
  int64_t shape[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};
};

// A single element (every extent 1, or no dimension) is one contiguous run: one dimension
// of extent 1 with stride 1 in every operand.
template <int N>
CollapsedDims<N> collapse_dims(const Dims& shape, const std::array<const Dims*, N>& strides) {
  CollapsedDims<N> c;
  for (int d = 0; d < shape.size(); ++d) {
    if (shape[d] == 0) {
      c.numel = 0;
      return c;
    }
    if (shape[d] == 1) continue;
    c.numel *= shape[d];
    if (c.ndim > 0) {
      bool mergeable = true;
      for (int k = 0; k < N; ++k)
        if (c.strides[k][c.ndim - 1] != (*strides[k])[d] * shape[d]) mergeable = false;
      if (mergeable) {
        c.shape[c.ndim - 1] *= shape[d];
        for (int k = 0; k < N; ++k) c.strides[k][c.ndim - 1] = (*strides[k])[d];
        continue;
      }
    }
    c.shape[c.ndim] = shape[d];
    for (int k = 0; k < N; ++k) c.strides[k][c.ndim] = (*strides[k])[d];
    ++c.ndim;
  }
  if (c.ndim == 0) {
    c.ndim = 1;
    c.shape[0] = 1;
    for (int k = 0; k < N; ++k) c.strides[k][0] = 1;
  }
  return c;
}

}  // namespace steepest
