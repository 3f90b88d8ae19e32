// Row-wise neural-network kernels: softmax / log-softmax (max-shifted, as the seed's
// log-softmax section derives), fused softmax + cross-entropy, layer norm, embedding,
// dropout masks and random fills.
#include <cmath>
#include <limits>

#include "loops.h"
#include "random.h"
#include "steepest/kernels.h"

namespace steepest::cpu {
namespace {

template <class T>
T row_max(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// The seed's log-softmax shift: log Σ exp(x) = m + log Σ exp(x − m) with m = max x.
// m and log Σ exp(x − m) are kept apart so that (x − m) − log Σ stays exact in float32
// when |x| is large (adding m back first would round away the small part).
template <class T>
struct ShiftedLogSum {
  T max;
  T log_sum;
};

template <class T>
ShiftedLogSum<T> row_shifted_logsum(const T* x, int64_t n) {
  T m = row_max(x, n);
  if (std::isinf(m)) return {m, T(0)};
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  return {m, std::log(s)};
}

int64_t rows_grain(int64_t cols) {
  return std::max<int64_t>(1, kParallelGrain / 8 / std::max<int64_t>(cols, 1));
}

}  // namespace

void softmax_forward(const Tensor& x, Tensor& y, bool log) {
  int64_t cols = x.shape().back(), rows = cols ? x.numel() / cols : 0;
  dispatch_float("softmax", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* px = x.data<T>();
    T* py = y.data<T>();
    parallel_for(rows, rows_grain(cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = px + r * cols;
        T* yr = py + r * cols;
        ShiftedLogSum<T> ls = row_shifted_logsum(xr, cols);
        if (log) {
          for (int64_t i = 0; i < cols; ++i) yr[i] = (xr[i] - ls.max) - ls.log_sum;
        } else {
          for (int64_t i = 0; i < cols; ++i) yr[i] = std::exp((xr[i] - ls.max) - ls.log_sum);
        }
      }
    });
  });
}

// softmax: dL/dz = G ⊙ p − (G·pᵀ) p; log-softmax: dL/dz = G − p Σ G (p = exp(y)).
void softmax_backward(const Tensor& grad_y, const Tensor& y, Tensor& grad_x, bool log) {
  int64_t cols = y.shape().back(), rows = cols ? y.numel() / cols : 0;
  dispatch_float("softmax", y.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* pg = grad_y.data<T>();
    const T* py = y.data<T>();
    T* pgx = grad_x.data<T>();
    parallel_for(rows, rows_grain(cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* g = pg + r * cols;
        const T* yr = py + r * cols;
        T* gx = pgx + r * cols;
        T dot = 0;
        if (log) {
          for (int64_t i = 0; i < cols; ++i) dot += g[i];
          for (int64_t i = 0; i < cols; ++i) gx[i] = g[i] - std::exp(yr[i]) * dot;
        } else {
          for (int64_t i = 0; i < cols; ++i) dot += g[i] * yr[i];
          for (int64_t i = 0; i < cols; ++i) gx[i] = yr[i] * (g[i] - dot);
        }
      }
    });
  });
}

// L = −Σ y_i log p_i with log p = z − logsumexp(z) (log-softmax, never log of p).
void cross_entropy_forward(const Tensor& logits, const Tensor& labels, Tensor& loss,
                           Tensor& logsumexp) {
  int64_t classes = logits.shape().back(), rows = logits.numel() / std::max<int64_t>(classes, 1);
  bool indices = !is_floating(labels.dtype());
  dispatch_float("cross_entropy", logits.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* z = logits.data<T>();
    T* out = loss.data<T>();
    T* lse = logsumexp.data<T>();
    if (indices) {
      // Validate every label before touching memory with it.
      dispatch_all("cross_entropy", labels.dtype(), [&](auto label_tag) {
        using L = typename decltype(label_tag)::type;
        const L* lab = labels.data<L>();
        for (int64_t r = 0; r < rows; ++r) {
          int64_t c = static_cast<int64_t>(lab[r]);
          if (c < 0 || c >= classes)
            fail<IndexError>("cross_entropy", "class index ", c, " at labels[", r,
                             "] is out of range for ", classes, " classes");
        }
        parallel_for(rows, rows_grain(classes), [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            const T* zr = z + r * classes;
            ShiftedLogSum<T> ls = row_shifted_logsum(zr, classes);
            lse[2 * r] = ls.max;
            lse[2 * r + 1] = ls.log_sum;
            out[r] = ls.log_sum - (zr[static_cast<int64_t>(lab[r])] - ls.max);
          }
        });
      });
      return;
    }
    const T* y = labels.data<T>();
    parallel_for(rows, rows_grain(classes), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* zr = z + r * classes;
        const T* yr = y + r * classes;
        ShiftedLogSum<T> ls = row_shifted_logsum(zr, classes);
        lse[2 * r] = ls.max;
        lse[2 * r + 1] = ls.log_sum;
        T acc = 0;
        for (int64_t i = 0; i < classes; ++i)
          if (yr[i] != T(0)) acc -= yr[i] * ((zr[i] - ls.max) - ls.log_sum);
        out[r] = acc;
      }
    });
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& labels, const Tensor& logsumexp,
                            const Tensor& grad_loss, Tensor& grad_logits) {
  int64_t classes = logits.shape().back(), rows = logits.numel() / std::max<int64_t>(classes, 1);
  bool indices = !is_floating(labels.dtype());
  dispatch_float("cross_entropy", logits.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* z = logits.data<T>();
    const T* lse = logsumexp.data<T>();
    const T* g = grad_loss.data<T>();
    T* gz = grad_logits.data<T>();
    if (indices) {
      dispatch_all("cross_entropy", labels.dtype(), [&](auto label_tag) {
        using L = typename decltype(label_tag)::type;
        const L* lab = labels.data<L>();
        parallel_for(rows, rows_grain(classes), [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            const T* zr = z + r * classes;
            T* out = gz + r * classes;
            for (int64_t i = 0; i < classes; ++i)
              out[i] = g[r] * std::exp((zr[i] - lse[2 * r]) - lse[2 * r + 1]);
            out[static_cast<int64_t>(lab[r])] -= g[r];  // p − y
          }
        });
      });
      return;
    }
    const T* y = labels.data<T>();
    parallel_for(rows, rows_grain(classes), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* zr = z + r * classes;
        const T* yr = y + r * classes;
        T* out = gz + r * classes;
        T total = 0;
        for (int64_t i = 0; i < classes; ++i) total += yr[i];
        // −y + p Σy: the seed's derivation before assuming Σy = 1.
        for (int64_t i = 0; i < classes; ++i)
          out[i] = g[r] * (std::exp((zr[i] - lse[2 * r]) - lse[2 * r + 1]) * total - yr[i]);
      }
    });
  });
}

void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                        Tensor& y, Tensor& mean, Tensor& rstd) {
  int64_t cols = x.shape().back(), rows = cols ? x.numel() / cols : 0;
  dispatch_float("layer_norm", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* px = x.data<T>();
    const T* w = weight.defined() ? weight.data<T>() : nullptr;
    const T* b = bias.defined() ? bias.data<T>() : nullptr;
    T* py = y.data<T>();
    T* pm = mean.data<T>();
    T* pr = rstd.data<T>();
    parallel_for(rows, rows_grain(cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = px + r * cols;
        T* yr = py + r * cols;
        T mu = 0;
        for (int64_t i = 0; i < cols; ++i) mu += xr[i];
        mu /= static_cast<T>(cols);
        T var = 0;
        for (int64_t i = 0; i < cols; ++i) var += (xr[i] - mu) * (xr[i] - mu);
        var /= static_cast<T>(cols);
        T rs = T(1) / std::sqrt(var + static_cast<T>(eps));
        pm[r] = mu;
        pr[r] = rs;
        for (int64_t i = 0; i < cols; ++i) {
          T v = (xr[i] - mu) * rs;
          if (w) v *= w[i];
          if (b) v += b[i];
          yr[i] = v;
        }
      }
    });
  });
}

// With x̂ = (x − μ)·rstd and ĝ = G ⊙ w:
// dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)), dw = Σ_rows G ⊙ x̂, db = Σ_rows G.
void layer_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                         const Tensor& mean, const Tensor& rstd, Tensor& grad_x,
                         Tensor* grad_weight, Tensor* grad_bias) {
  int64_t cols = x.shape().back(), rows = cols ? x.numel() / cols : 0;
  dispatch_float("layer_norm", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* pg = grad_y.data<T>();
    const T* px = x.data<T>();
    const T* w = weight.defined() ? weight.data<T>() : nullptr;
    const T* pm = mean.data<T>();
    const T* pr = rstd.data<T>();
    T* pgx = grad_x.data<T>();
    parallel_for(rows, rows_grain(cols), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* g = pg + r * cols;
        const T* xr = px + r * cols;
        T* gx = pgx + r * cols;
        T mean_g = 0, mean_gx = 0;
        for (int64_t i = 0; i < cols; ++i) {
          T gh = w ? g[i] * w[i] : g[i];
          T xh = (xr[i] - pm[r]) * pr[r];
          mean_g += gh;
          mean_gx += gh * xh;
        }
        mean_g /= static_cast<T>(cols);
        mean_gx /= static_cast<T>(cols);
        for (int64_t i = 0; i < cols; ++i) {
          T gh = w ? g[i] * w[i] : g[i];
          T xh = (xr[i] - pm[r]) * pr[r];
          gx[i] = pr[r] * (gh - mean_g - xh * mean_gx);
        }
      }
    });
    // Parameter gradients are column sums: split over columns so threads never share.
    if (grad_weight || grad_bias) {
      T* gw = grad_weight ? grad_weight->data<T>() : nullptr;
      T* gb = grad_bias ? grad_bias->data<T>() : nullptr;
      parallel_for(cols, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(rows, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t i = begin; i < end; ++i) {
                       if (gw) gw[i] = 0;
                       if (gb) gb[i] = 0;
                     }
                     for (int64_t r = 0; r < rows; ++r) {
                       const T* g = pg + r * cols;
                       const T* xr = px + r * cols;
                       for (int64_t i = begin; i < end; ++i) {
                         if (gw) gw[i] += g[i] * (xr[i] - pm[r]) * pr[r];
                         if (gb) gb[i] += g[i];
                       }
                     }
                   });
    }
  });
}

void embedding_forward(const Tensor& indices, const Tensor& table, Tensor& out) {
  int64_t vocab = table.shape()[0], dim = table.shape()[1], n = indices.numel();
  dispatch_float("embedding", table.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_all("embedding", indices.dtype(), [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const I* idx = indices.data<I>();
      for (int64_t i = 0; i < n; ++i) {
        int64_t v = static_cast<int64_t>(idx[i]);
        if (v < 0 || v >= vocab)
          fail<IndexError>("embedding", "index ", v, " at position ", i,
                           " is out of range for a table of ", vocab, " rows");
      }
      const T* src = table.data<T>();
      T* dst = out.data<T>();
      parallel_for(n, rows_grain(dim), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          std::copy(src + static_cast<int64_t>(idx[i]) * dim,
                    src + (static_cast<int64_t>(idx[i]) + 1) * dim, dst + i * dim);
      });
    });
  });
}

// Scatter-add of the output gradient into the rows that were read (repeated indices add).
void embedding_backward(const Tensor& indices, const Tensor& grad_out, Tensor& grad_table) {
  int64_t dim = grad_table.shape()[1], n = indices.numel();
  dispatch_float("embedding", grad_table.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_all("embedding", indices.dtype(), [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const I* idx = indices.data<I>();
      const T* g = grad_out.data<T>();
      T* gt = grad_table.data<T>();
      // Split over the embedding dimension: each thread owns a column range, so repeated
      // indices never race.
      parallel_for(dim, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(n, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t i = 0; i < n; ++i) {
                       T* row = gt + static_cast<int64_t>(idx[i]) * dim;
                       const T* gr = g + i * dim;
                       for (int64_t d = begin; d < end; ++d) row[d] += gr[d];
                     }
                   });
    });
  });
}

void dropout_mask(Tensor& mask, double rate, uint64_t seed) {
  dispatch_float("dropout", mask.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* m = mask.data<T>();
    const T keep_scale = static_cast<T>(1.0 / (1.0 - rate));
    parallel_for(mask.numel(), kParallelGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        m[i] = uniform_at(seed, static_cast<uint64_t>(i)) < rate ? T(0) : keep_scale;
    });
  });
}

void random_fill(Tensor& out, RandomKind kind, uint64_t seed) {
  dispatch_float("random", out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = out.data<T>();
    parallel_for(out.numel(), kParallelGrain / 8, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        auto index = static_cast<uint64_t>(i);
        p[i] = static_cast<T>(kind == RandomKind::Uniform ? uniform_at(seed, index)
                                                          : normal_at(seed, index));
      }
    });
  });
}

}  // namespace steepest::cpu
