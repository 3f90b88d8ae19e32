// CPU kernels along one axis of an (outer, extent, inner) view: running sums and
// products (cumsum, prod and its backward), gather and its scatter-add backward.
#include <type_traits>

#include "loops.h"
#include "steepest/kernels.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {
namespace {

template <class T>
using Accumulator = std::conditional_t<std::is_integral_v<T>, int64_t, double>;

template <class T>
void scan_loop(const ScanArgs& args, const Tensor& x, Tensor& out) {
  using A = Accumulator<T>;
  const T* px = x.data<T>();
  T* po = out.data<T>();
  const int64_t extent = args.extent, inner = args.inner;
  const int64_t columns = args.outer * inner;
  const A identity = args.op == ScanOp::Sum ? A(0) : A(1);
  parallel_for(columns, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(extent, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t c = begin; c < end; ++c) {
                   const int64_t base = (c / inner) * extent * inner + c % inner;
                   A acc = identity;
                   for (int64_t step = 0; step < extent; ++step) {
                     const int64_t e = args.reverse ? extent - 1 - step : step;
                     const int64_t at = base + e * inner;
                     const A v = static_cast<A>(px[at]);
                     if (args.exclusive) po[at] = static_cast<T>(acc);
                     acc = args.op == ScanOp::Sum ? acc + v : acc * v;
                     if (!args.exclusive) po[at] = static_cast<T>(acc);
                   }
                 }
               });
}

inline int64_t wrap(int64_t index, int64_t n) { return index < 0 ? index + n : index; }

}  // namespace

void scan(const ScanArgs& args, const Tensor& x, Tensor& out) {
  dispatch_all_storage("scan", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, bool>)
      fail<TypeError>("scan", "bool tensors cannot be scanned; convert with astype");
    else
      scan_loop<T>(args, x, out);
  });
}

void gather(const Tensor& x, const Tensor& index, Tensor& out) {
  const int64_t outer = out.shape()[0], k = out.shape()[1], inner = out.shape()[2];
  const int64_t n = x.shape()[1];
  const int64_t* pi = index.data<int64_t>();
  dispatch_all_storage("gather", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* px = x.data<T>();
    T* po = out.data<T>();
    parallel_for(outer * k * inner, kParallelGrain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t o = p / (k * inner), i = p % inner;
        po[p] = px[(o * n + wrap(pi[p], n)) * inner + i];
      }
    });
  });
}

void scatter_add(const Tensor& grad_out, const Tensor& index, Tensor& grad_x) {
  const int64_t outer = grad_out.shape()[0], k = grad_out.shape()[1], inner = grad_out.shape()[2];
  const int64_t n = grad_x.shape()[1];
  const int64_t* pi = index.data<int64_t>();
  dispatch_float("scatter_add", grad_x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* pg = grad_out.data<T>();
    T* px = grad_x.data<T>();
    // Each outer slab of grad_x is written by one thread only: no two threads add into
    // the same element.
    parallel_for(outer, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(k * inner, 1)),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t o = begin; o < end; ++o)
                     for (int64_t j = 0; j < k; ++j)
                       for (int64_t i = 0; i < inner; ++i) {
                         const int64_t p = (o * k + j) * inner + i;
                         px[(o * n + wrap(pi[p], n)) * inner + i] += pg[p];
                       }
                 });
  });
}

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
