// A GEMM whose B operand is produced on demand: the driver asks the source for each
// zero-padded sliver it packs, so a matrix that exists only implicitly (the receptive
// fields of im2col) is never written out in full. Internal to the CPU backend.
#pragma once

#include <cstdint>

#include "isa_level.h"
#include "steepest/kernels.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {

template <class T>
class GemmSource {
 public:
  virtual ~GemmSource() = default;
  // dst[k·width + i] = op(B)(k0 + k, j0 + i) for k < kc and i < cols; 0 for
  // cols <= i < width. Called concurrently from the GEMM's threads.
  virtual void pack(int64_t k0, int64_t kc, int64_t j0, int64_t cols, int width,
                    T* dst) const = 0;
};

// C = alpha · op(A) · op(B) + beta · C with op(B) from `b`; args.b, ldb, trans_b and the
// batch fields are ignored (one product).
void gemm(const GemmArgs& args, const GemmSource<float>& b);
void gemm(const GemmArgs& args, const GemmSource<double>& b);

// dst[k·width + i] = src[i·ld + k] for k < kc, i < rows; 0 for rows <= i < width: the
// GEMM's own transposing pack, for sources that assemble rows first.
void pack_transposed(const float* src, int64_t ld, int64_t rows, int width, int64_t kc,
                     float* dst);
void pack_transposed(const double* src, int64_t ld, int64_t rows, int width, int64_t kc,
                     double* dst);

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
