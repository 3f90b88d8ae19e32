// Flash attention on the CPU (Dao et al., FlashAttention-2): the scores of a tile of
// kQueryTile queries against a tile of kKeyTile keys live in a small per-thread buffer,
// the softmax is computed online (a running max and sum per query row), and only the
// output and one log-sum-exp per row are stored, so memory is O(T) for any context.
// The backward recomputes each tile's probabilities from the log-sum-exp.
//
// The tile products (S = Q·Kᵀ, O += P·V; dV += Pᵀ·dO, dP = dO·Vᵀ, dQ += dS·K,
// dK += dSᵀ·Q) are small (depth dh or a tile), so instead of the packed GEMM, whose
// packing of both operands dominated them, they run on one register-blocked loop
// (block_product) that reads its left operand by broadcasts through any two strides and
// its right operand in place by rows. Only a query tile (forward: Qᵀ) or a key tile
// (backward: Kᵀ, Vᵀ) is transposed; q, k, v, dO, dQ, dK, dV keep their row strides.
// The forward keeps its scores key-major, so the online softmax's running max and sum
// are vectors across the tile's queries. Under the causal mask a block of scores starts
// (forward) or stops (backward) at the vector holding its first or last visible entry,
// so a diagonal tile costs about half a full one; the hidden entries inside are masked.
// Threads split batch entries × tiles.
// float32/float64 only: the op layer widens 16-bit inputs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "loops.h"
#include "steepest/kernels.h"
#include "vmath.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {
namespace {

constexpr int64_t kQueryTile = 64;
constexpr int64_t kKeyTile = 64;

// The width of this level's vector registers. A product block's accumulators are kRows
// rows of kVectors vectors: 16 of AVX-512's 32 registers, 8 of AVX2's or SSE's 16, which
// leaves room for the operands.
#if STEEPEST_ISA_LEVEL == STEEPEST_ISA_AVX512 || \
    (STEEPEST_ISA_LEVEL == STEEPEST_ISA_NATIVE && defined(__AVX512F__))
constexpr int kVectorBytes = 64;
#elif STEEPEST_ISA_LEVEL == STEEPEST_ISA_AVX2 || \
    (STEEPEST_ISA_LEVEL == STEEPEST_ISA_NATIVE && defined(__AVX2__))
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif
constexpr int kVectors = kVectorBytes == 64 ? 4 : 2;
constexpr int kRows = 4;
template <class T>
constexpr int64_t kWidth = kVectors * kVectorBytes / sizeof(T);
static_assert(kKeyTile % kWidth<float> == 0 && kKeyTile % kWidth<double> == 0 &&
                  kQueryTile % kWidth<float> == 0 && kQueryTile % kWidth<double> == 0,
              "the softmax loops run over whole half blocks of kWidth within a tile");

template <class T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// One operand of one batch entry: rows `ld` elements apart, features contiguous.
template <class T>
struct Rows {
  T* p;
  int64_t ld;
  T* row(int64_t i) const { return p + i * ld; }
};

// Entry b of an operand stored at base with the given layout.
template <class T>
Rows<T> entry_rows(T* base, const AttentionLayout& layout, const AttentionArgs& a, int64_t b) {
  return {base + layout.entry(b, a.heads), layout.row};
}

// The left operand of a product, A(r, k) = p[r·row + k·step]: a row-major matrix
// (step 1) or a transposed one (row 1).
template <class T>
struct Lhs {
  const T* p;
  int64_t row, step;
};

// One vector register of T (a GCC/Clang vector extension, lowered to this level's
// instructions).
template <class T>
struct Vector {
  typedef T type __attribute__((vector_size(kVectorBytes)));
  static constexpr int64_t kLanes = kVectorBytes / sizeof(T);
  static type load(const T* p) {
    type v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(T* p, type v) { std::memcpy(p, &v, sizeof v); }
  // {0, 1, ..., kLanes − 1}, to compare lane indices in T (SSE2 has no 64-bit integer
  // compares).
  static type lanes() {
    type v;
    for (int64_t i = 0; i < kLanes; ++i) v[i] = T(i);
    return v;
  }
};

// C[r][j] (+)= Σ_k A(r, k) · b[k·ldb + j] for R rows and W columns (a multiple of the
// vector width), or `width` columns when W is 0. When accumulating, row_scale (if not
// null) first scales row r of C by row_scale[r]: the online softmax moves the output
// summed so far to a new max in the same pass that adds the new keys' share. With a
// constant W the accumulators are R × W / lanes vector variables, which stay in
// registers: the loops over them are unrolled by pragma, early enough for GCC to replace
// the array by scalars (otherwise it stays on the stack, copied to and from registers
// around the k loop at each call).
template <class T, int R, int64_t W>
void block_columns(int64_t depth, const Lhs<T>& a, const T* b, int64_t ldb, int64_t width,
                   T* c, int64_t ldc, bool accumulate, const T* row_scale) {
  if constexpr (W > 0) {
    using V = Vector<T>;
    constexpr int64_t N = W / V::kLanes;
    typename V::type acc[R][N];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int64_t v = 0; v < N; ++v)
        acc[r][v] = accumulate ? V::load(c + r * ldc + v * V::kLanes) : typename V::type{};
    if (accumulate && row_scale)
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int64_t v = 0; v < N; ++v) acc[r][v] *= row_scale[r];
    for (int64_t k = 0; k < depth; ++k) {
      typename V::type bk[N];
#pragma GCC unroll 16
      for (int64_t v = 0; v < N; ++v) bk[v] = V::load(b + k * ldb + v * V::kLanes);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const T ark = a.p[r * a.row + k * a.step];
#pragma GCC unroll 16
        for (int64_t v = 0; v < N; ++v) acc[r][v] += ark * bk[v];
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int64_t v = 0; v < N; ++v) V::store(c + r * ldc + v * V::kLanes, acc[r][v]);
  } else {
    for (int r = 0; r < R; ++r) {
      T* cr = c + r * ldc;
      if (!accumulate) std::fill(cr, cr + width, T(0));
      if (accumulate && row_scale)
        for (int64_t j = 0; j < width; ++j) cr[j] *= row_scale[r];
      for (int64_t k = 0; k < depth; ++k) {
        const T ark = a.p[r * a.row + k * a.step];
        const T* bk = b + k * ldb;
        for (int64_t j = 0; j < width; ++j) cr[j] += ark * bk[j];
      }
    }
  }
}

// block_columns over any width: C (R rows × width, ldc) (+)= A (R × depth) · B (depth ×
// width, rows ldb apart), in blocks of kWidth columns, then half one (a head of 32
// floats with AVX-512), then one vector (where a half block is more), then the rest. A
// half block or a vector holds at most half the accumulators of a whole block, so it
// takes up to 2 · kRows rows at once (a load of B then feeds twice the FMAs); whole
// blocks go kRows rows at a time.
template <class T, int R>
void block_product(int64_t depth, const Lhs<T>& a, const T* b, int64_t ldb, int64_t width,
                   T* c, int64_t ldc, bool accumulate, const T* row_scale) {
  static_assert(R <= 2 * kRows && R % std::min(R, kRows) == 0, "rows of a product block");
  constexpr int64_t W = kWidth<T>, H = W / 2, L = Vector<T>::kLanes;
  constexpr int RW = std::min(R, kRows);
  int64_t j = 0;
  for (; j + W <= width; j += W)
    for (int r = 0; r < R; r += RW)
      block_columns<T, RW, W>(depth, Lhs<T>{a.p + r * a.row, a.row, a.step}, b + j, ldb, W,
                              c + r * ldc + j, ldc, accumulate,
                              row_scale ? row_scale + r : nullptr);
  if (j + H <= width) {
    block_columns<T, R, H>(depth, a, b + j, ldb, H, c + j, ldc, accumulate, row_scale);
    j += H;
  }
  if constexpr (L < H)
    if (j + L <= width) {
      block_columns<T, R, L>(depth, a, b + j, ldb, L, c + j, ldc, accumulate, row_scale);
      j += L;
    }
  if (j < width)
    block_columns<T, R, 0>(depth, a, b + j, ldb, width - j, c + j, ldc, accumulate,
                           row_scale);
}

// Calls fn(std::integral_constant<int, R>{}, first row) over rows [0, n): blocks of
// 2 · kRows, then kRows, then single rows.
template <class Fn>
void for_row_blocks(int64_t n, Fn&& fn) {
  int64_t i = 0;
  for (; i + 2 * kRows <= n; i += 2 * kRows) fn(std::integral_constant<int, 2 * kRows>{}, i);
  for (; i + kRows <= n; i += kRows) fn(std::integral_constant<int, kRows>{}, i);
  for (; i < n; ++i) fn(std::integral_constant<int, 1>{}, i);
}

// dst[c·ld + i] = factor · src[i·lds + c] for a 4 × 4 block of floats, transposed in
// four 16-byte registers (SSE's unpack and move shuffles, at every level).
inline void transpose_block4(const float* src, int64_t lds, float factor, float* dst,
                             int64_t ld) {
  typedef float V4 __attribute__((vector_size(16)));
  V4 r[4];
  for (int i = 0; i < 4; ++i) std::memcpy(&r[i], src + i * lds, sizeof(V4));
  const V4 lo01 = __builtin_shufflevector(r[0], r[1], 0, 4, 1, 5);
  const V4 hi01 = __builtin_shufflevector(r[0], r[1], 2, 6, 3, 7);
  const V4 lo23 = __builtin_shufflevector(r[2], r[3], 0, 4, 1, 5);
  const V4 hi23 = __builtin_shufflevector(r[2], r[3], 2, 6, 3, 7);
  const V4 c[4] = {__builtin_shufflevector(lo01, lo23, 0, 1, 4, 5),
                   __builtin_shufflevector(lo01, lo23, 2, 3, 6, 7),
                   __builtin_shufflevector(hi01, hi23, 0, 1, 4, 5),
                   __builtin_shufflevector(hi01, hi23, 2, 3, 6, 7)};
  for (int k = 0; k < 4; ++k) {
    const V4 v = c[k] * factor;
    std::memcpy(dst + k * ld, &v, sizeof v);
  }
}

// dst (cols, ld) = factor · rows [0, n) of src transposed, dst[c·ld + i] =
// factor · src.row(i)[c], and columns [n, ld) zero: the products run over whole vector
// blocks past n, which then hold finite scores that are masked or never stored. Floats
// go by 4 × 4 blocks in registers (one element at a time, the transpose was a tenth of
// the kernel's time at head size 32), the edges and doubles one element at a time.
template <class T>
void transpose_rows(Rows<const T> src, int64_t n, int64_t cols, T factor, T* dst, int64_t ld) {
  for (int64_t c = 0; c < cols; ++c) std::fill(dst + c * ld + n, dst + (c + 1) * ld, T(0));
  constexpr bool kBlocks = std::is_same_v<T, float>;
  const int64_t n4 = kBlocks ? n / 4 * 4 : 0, cols4 = kBlocks ? cols / 4 * 4 : 0;
  if constexpr (kBlocks)
    for (int64_t i = 0; i < n4; i += 4)
      for (int64_t c = 0; c < cols4; c += 4)
        transpose_block4(src.row(i) + c, src.ld, factor, dst + c * ld + i, ld);
  for (int64_t i = 0; i < n; ++i) {
    const T* row = src.row(i);
    for (int64_t c = i < n4 ? cols4 : 0; c < cols; ++c) dst[c * ld + i] = factor * row[c];
  }
}

// c ? x : y without a branch, so that loops over it vectorize: a ?: on floats may be
// turned into one with a computation moved under it, which keeps the loop scalar
// (vmath.h's bit blend; double's libm exp does not vectorize anyway).
STEEPEST_VMATH_INLINE float pick(bool c, float x, float y) {
  return vmath::detail::select(c, x, y);
}
STEEPEST_VMATH_INLINE double pick(bool c, double x, double y) { return c ? x : y; }

// Below these e^x is subnormal, and an instruction with a subnormal result takes a
// microcode assist.
template <class T>
constexpr T kExpFloor = sizeof(T) == sizeof(float) ? T(-87) : T(-708);

// e^x for float x in [kExpFloor, 88], where the result and 2^n below are normal: vmath's
// exp without what its whole range needs (clamps, a compensated sum, 2^n in two factors),
// about half the instructions. x = n·ln 2 + r, |r| <= ln2/2, e^r = 1 + r + r²·P(r) with
// vmath's P. Measured over every float of the range against float64, with and without
// FMA contraction: within 1.02 ulp of e^x.
STEEPEST_VMATH_INLINE float exp_normal(float x) {
  using namespace vmath::detail;
  constexpr float kShift = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  const float t = x * 1.44269504f + kShift;
  const float n = t - kShift;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 0.00138144672f;
  p = p * r + 0.00836878084f;
  p = p * r + 0.0416683927f;
  p = p * r + 0.166665196f;
  p = p * r + 0.49999994f;
  const float e = 1.0f + ((r * r) * p + r);
  // 2^n from n + 127 in the exponent field, unsigned: n is in [-126, 127].
  return e * float_of((bits_of(t) - bits_of(kShift) + 127u) << 23);
}
STEEPEST_VMATH_INLINE double exp_normal(double x) { return std::exp(x); }

// c ? e^x : 0 for x <= 88, the exponential taken of at least kExpFloor<T> so that the
// entries c hides (their x may be −inf) cost no assist.
template <class T>
STEEPEST_VMATH_INLINE T exp_or_zero(bool c, T x) {
  return pick(c, exp_normal(pick(x < kExpFloor<T>, kExpFloor<T>, x)), T(0));
}

// fn(j) for every j in [begin, end), both multiples of the vector width and at most a tile:
// the inner loop has a constant trip count, so it vectorizes whole, without a scalar
// remainder. The index is an int: SSE2 has no 64-bit compares for masks made from it.
template <class T, class Fn>
void for_columns(int64_t begin, int64_t end, Fn fn) {
  constexpr int lanes = static_cast<int>(Vector<T>::kLanes);
  for (int j = static_cast<int>(begin); j < end; j += lanes)
    for (int l = 0; l < lanes; ++l) fn(j + l);
}

template <class T>
struct ForwardOperands {
  Rows<const T> q, k, v;
  Rows<T> out;
};

// One query tile of one batch entry: out rows [q0, q0 + nq) and their log-sum-exp, from
// qt = scale · Qᵀ (d, kQueryTile), zero past nq. The scores are kept key-major (sᵀ, queries
// contiguous), so the online softmax's running max and sum are vectors over the tile's
// queries: every loop over them runs over whole vectors (the queries past nq are
// computed and never stored) and none needs a horizontal reduction.
template <class T>
void forward_tile(const AttentionArgs& a, const ForwardOperands<T>& x, const T* qt, int64_t q0,
                  int64_t nq, T* lse, T* buffer) {
  constexpr int64_t Q = kQueryTile;
  T* st = buffer;  // scores, then probabilities (kKeyTile, Q)
  T* o = st + kKeyTile * Q;
  T* row_max = o + Q * a.dv;
  T* row_sum = row_max + Q;
  T* factor = row_sum + Q;
  std::fill(o, o + nq * a.dv, T(0));
  std::fill(row_max, row_max + Q, kNegInf<T>);
  std::fill(row_sum, row_sum + Q, T(0));
  const int64_t key_end = attention_key_end(a, q0 + nq - 1);
  for (int64_t k0 = 0; k0 < key_end; k0 += kKeyTile) {
    const int64_t nk = std::min(kKeyTile, key_end - k0);
    // Causal: key k0 + j is hidden from the queries before it, i < first(j). Its scores
    // are computed from the vector of queries holding the first that sees it, start(j),
    // on; the hidden ones among them are masked.
    constexpr int half = static_cast<int>(kWidth<T> / 2);
    auto first = [&](int64_t j) {
      return static_cast<int>(a.causal ? std::clamp<int64_t>(k0 + j - q0, 0, Q) : 0);
    };
    constexpr int lanes = static_cast<int>(Vector<T>::kLanes);
    auto start = [&](int64_t j) { return first(j) / lanes * lanes; };
    for_row_blocks(nk, [&](auto rows, int64_t j0) {
      constexpr int R = decltype(rows)::value;
      const int64_t c0 = start(j0);
      block_product<T, R>(a.d, Lhs<T>{x.k.row(k0 + j0), x.k.ld, 1}, qt + c0, Q, Q - c0,
                          st + j0 * Q + c0, Q, false, nullptr);
    });
    // The softmax runs by half blocks of queries, keys inner, so that the running max and
    // sum of the half block stay in registers (in arrays of the tile, which the compiler
    // cannot tell from the scores, they were loaded and stored at every key). The half
    // block [c, c + half) holds scores of the keys j < seen: those with start(j) < c + half
    // (the lanes before start(j) hold stale values, masked).
    for (int64_t c = 0; c < Q; c += half) {
      const int64_t seen = a.causal ? std::clamp<int64_t>(q0 + c + half - k0, 0, nk) : nk;
      using V = Vector<T>;
      typename V::type running[kVectors / 2];
      for (int v = 0; v < kVectors / 2; ++v) running[v] = V::load(row_max + c + v * V::kLanes);
      for (int64_t j = 0; j < seen; ++j) {
        const T* sj = st + j * Q + c;
        const T f = static_cast<T>(first(j) - c);
        for (int v = 0; v < kVectors / 2; ++v) {
          const typename V::type sv = V::load(sj + v * V::kLanes);
          const auto visible = V::lanes() + static_cast<T>(v * V::kLanes) >= f;
          running[v] = (visible & (sv > running[v])) ? sv : running[v];
        }
      }
      T m[half], shift[half], sum[half];
      for (int v = 0; v < kVectors / 2; ++v) V::store(m + v * V::kLanes, running[v]);
      // Online softmax: what was summed under the old max is rescaled to the new one. A
      // row that has seen no key yet keeps max −inf and sum 0; shifting it by 0 avoids
      // −inf − (−inf).
      for (int l = 0; l < half; ++l) {
        T& old = row_max[c + l];
        shift[l] = pick(m[l] == kNegInf<T>, T(0), m[l]);
        factor[c + l] = exp_or_zero(old != kNegInf<T>, old - shift[l]);
        old = m[l];
        sum[l] = row_sum[c + l] * factor[c + l];
      }
      for (int64_t j = 0; j < seen; ++j) {
        T* sj = st + j * Q + c;
        const int f = first(j) - static_cast<int>(c);
        for (int l = 0; l < half; ++l) {
          sj[l] = exp_or_zero(l >= f, sj[l] - shift[l]);
          sum[l] += sj[l];
        }
      }
      for (int64_t j = seen; j < nk; ++j) std::fill(st + j * Q + c, st + j * Q + c + half, T(0));
      std::copy(sum, sum + half, row_sum + c);
    }
    for_row_blocks(nq, [&](auto rows, int64_t i0) {
      constexpr int R = decltype(rows)::value;
      // The block's last row sees the most keys; the others' hidden ones have p = 0. A
      // block that sees none of these keys keeps its max, so its factor is 1.
      const int64_t depth =
          std::clamp<int64_t>(attention_key_end(a, q0 + i0 + R - 1) - k0, 0, nk);
      if (depth == 0) return;
      block_product<T, R>(depth, Lhs<T>{st + i0, 1, Q}, x.v.row(k0), x.v.ld, a.dv,
                          o + i0 * a.dv, a.dv, true, factor + i0);
    });
  }
  for (int64_t i = 0; i < nq; ++i) {
    // No visible key (tk = 0): the output is 0, as softmax over nothing times v gives.
    const T inv = row_sum[i] > 0 ? T(1) / row_sum[i] : T(0);
    const T* oi = o + i * a.dv;
    T* dst = x.out.row(q0 + i);
    for (int64_t c = 0; c < a.dv; ++c) dst[c] = oi[c] * inv;
  }
  // A loop of its own, so that vmath's log vectorizes over the rows.
  for (int64_t i = 0; i < nq; ++i)
    lse[q0 + i] = pick(row_sum[i] > 0, row_max[i] + math::log(row_sum[i]), kNegInf<T>);
}

template <class T>
void forward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
             Tensor& out, Tensor& logsumexp) {
  const int64_t tiles = (a.tq + kQueryTile - 1) / kQueryTile;
  T* pl = logsumexp.data<T>();
  // One task per (batch entry, query tile); a causal tile's cost grows with its index.
  const int64_t work_per_task = std::max<int64_t>(1, a.tk * (a.d + a.dv) * std::min(a.tq, kQueryTile));
  parallel_for(a.batch * tiles, std::max<int64_t>(1, kParallelGrain / work_per_task),
               [&](int64_t begin, int64_t end) {
                 const int64_t tile_size = kKeyTile * kQueryTile + kQueryTile * (a.dv + 3);
                 std::vector<T> buffer(static_cast<size_t>(tile_size + a.d * kQueryTile));
                 T* qt = buffer.data() + tile_size;
                 for (int64_t task = begin; task < end; ++task) {
                   const int64_t b = task / tiles, q0 = (task % tiles) * kQueryTile;
                   const int64_t nq = std::min(kQueryTile, a.tq - q0);
                   const ForwardOperands<T> x{entry_rows<const T>(q.data<T>(), a.q, a, b),
                                              entry_rows<const T>(k.data<T>(), a.k, a, b),
                                              entry_rows<const T>(v.data<T>(), a.v, a, b),
                                              entry_rows(out.data<T>(), a.out, a, b)};
                   transpose_rows(Rows<const T>{x.q.row(q0), x.q.ld}, nq, a.d,
                                  static_cast<T>(a.scale), qt, kQueryTile);
                   forward_tile(a, x, qt, q0, nq, pl + b * a.tq, buffer.data());
                 }
               });
}

// The sum of the lanes of the Bytes-byte vector at v, by halves.
template <class T, int Bytes>
STEEPEST_VMATH_INLINE T lane_sum(const void* v) {
  if constexpr (Bytes == 2 * sizeof(T)) {
    T lanes[2];
    std::memcpy(lanes, v, sizeof lanes);
    return lanes[0] + lanes[1];
  } else {
    typedef T Half __attribute__((vector_size(Bytes / 2)));
    Half lo, hi;
    std::memcpy(&lo, v, sizeof lo);
    std::memcpy(&hi, static_cast<const char*>(v) + sizeof lo, sizeof hi);
    const Half sum = lo + hi;
    return lane_sum<T, Bytes / 2>(&sum);
  }
}

// Σ_c x[c]·y[c] in vectors, their lanes summed once at the end (an omp simd reduction
// summed them one after another through memory).
template <class T>
T dot(const T* x, const T* y, int64_t n) {
  using V = Vector<T>;
  typename V::type acc{};
  int64_t c = 0;
  for (; c + V::kLanes <= n; c += V::kLanes) acc += V::load(x + c) * V::load(y + c);
  T sum = lane_sum<T, kVectorBytes>(&acc);
  for (; c < n; ++c) sum += x[c] * y[c];
  return sum;
}

template <class T>
struct BackwardOperands {
  Rows<const T> q, k, v, dout;
  const T* lse;
  const T* delta;
  Rows<T> dq, dk, dv;
};

// Gradients of one key tile of one batch entry from every query that sees it
// (FlashAttention-2's backward; P = exp(S − lse), D_i = dO_i·O_i):
//   dV_j = Σ_i P_ij dO_i,  dP_ij = dO_i·v_j,  dS = P ∘ (dP − D),
//   dK_j = scale Σ_i dS_ij q_i,  dQ_i += scale Σ_j dS_ij k_j (into dq).
template <class T>
void backward_key_tile(const AttentionArgs& a, const BackwardOperands<T>& x, int64_t k0,
                       int64_t nk, T* buffer) {
  const int64_t keys = round_up(nk, kWidth<T>);
  T* p = buffer;  // (nq, kKeyTile), zero where a query does not see a key
  T* ds = p + kQueryTile * kKeyTile;  // dP, then scale · dS; zero where p is
  T* kt = ds + kQueryTile * kKeyTile;
  T* vt = kt + a.d * kKeyTile;
  transpose_rows(Rows<const T>{x.k.row(k0), x.k.ld}, nk, a.d, T(1), kt, kKeyTile);
  transpose_rows(Rows<const T>{x.v.row(k0), x.v.ld}, nk, a.dv, T(1), vt, kKeyTile);
  auto zero_dk_dv = [&](int64_t j_begin, int64_t j_end) {
    for (int64_t j = j_begin; j < j_end; ++j) {
      std::fill(x.dk.row(j), x.dk.row(j) + a.d, T(0));
      std::fill(x.dv.row(j), x.dv.row(j) + a.dv, T(0));
    }
  };
  const T scale = static_cast<T>(a.scale);
  // Under the causal mask, queries before k0 see none of these keys. The first query
  // tile sets the rows of dK and dV it reaches and the others add to them (zeroing them
  // first took a call per row); the rows no query sees are zeroed. Key tile 0 sets dQ
  // (every query sees key 0; a chunk's later tiles and other chunks add).
  const int64_t q_begin = a.causal ? k0 : 0;
  if (q_begin >= a.tq) zero_dk_dv(k0, k0 + nk);
  for (int64_t q0 = q_begin; q0 < a.tq; q0 += kQueryTile) {
    const int64_t nq = std::min(kQueryTile, a.tq - q0);
    auto visible = [&](int64_t i) {
      return std::clamp<int64_t>(attention_key_end(a, q0 + i) - k0, 0, nk);
    };
    for_row_blocks(nq, [&](auto rows, int64_t i0) {
      constexpr int R = decltype(rows)::value;
      T* pi = p + i0 * kKeyTile;
      T* dsi = ds + i0 * kKeyTile;
      const int64_t depth = visible(i0 + R - 1);  // the block's last row sees the most
      if (depth == 0) {
        for (int r = 0; r < R; ++r) {
          std::fill(pi + r * kKeyTile, pi + r * kKeyTile + keys, T(0));
          std::fill(dsi + r * kKeyTile, dsi + r * kKeyTile + keys, T(0));
        }
        return;
      }
      // Columns up to the vector holding the block's last visible key.
      const int64_t width = std::min(keys, round_up(depth, Vector<T>::kLanes));
      block_product<T, R>(a.d, Lhs<T>{x.q.row(q0 + i0), x.q.ld, 1}, kt, kKeyTile, width, pi,
                          kKeyTile, false, nullptr);
      block_product<T, R>(a.dv, Lhs<T>{x.dout.row(q0 + i0), x.dout.ld, 1}, vt, kKeyTile,
                          width, dsi, kKeyTile, false, nullptr);
      for (int r = 0; r < R; ++r) {
        T* pr = pi + r * kKeyTile;
        T* dsr = dsi + r * kKeyTile;
        // Every row sees a key when tk > 0, so its lse is finite. p = 0 past the visible
        // keys makes dS 0 there.
        const T l = x.lse[q0 + i0 + r], di = x.delta[q0 + i0 + r];
        const int n = static_cast<int>(visible(i0 + r));
        for_columns<T>(0, width, [&](int j) {
          pr[j] = exp_or_zero(j < n, pr[j] * scale - l);
          dsr[j] = pr[j] * (dsr[j] - di) * scale;
        });
        std::fill(pr + width, pr + keys, T(0));
        std::fill(dsr + width, dsr + keys, T(0));
      }
      block_product<T, R>(depth, Lhs<T>{dsi, kKeyTile, 1}, x.k.row(k0), x.k.ld, a.d,
                          x.dq.row(q0 + i0), x.dq.ld, k0 > 0, nullptr);
    });
    for_row_blocks(nk, [&](auto rows, int64_t j0) {
      constexpr int R = decltype(rows)::value;
      // Causal: the queries before key k0 + j0 see none of this block's keys.
      const int64_t first = a.causal ? std::clamp<int64_t>(k0 + j0 - q0, 0, nq) : 0;
      const int64_t depth = nq - first;
      const bool add = q0 > q_begin;
      if (depth == 0) {
        if (!add) zero_dk_dv(k0 + j0, k0 + j0 + R);
        return;
      }
      block_product<T, R>(depth, Lhs<T>{p + first * kKeyTile + j0, 1, kKeyTile},
                          x.dout.row(q0 + first), x.dout.ld, a.dv, x.dv.row(k0 + j0), x.dv.ld,
                          add, nullptr);
      block_product<T, R>(depth, Lhs<T>{ds + first * kKeyTile + j0, 1, kKeyTile},
                          x.q.row(q0 + first), x.q.ld, a.d, x.dk.row(k0 + j0), x.dk.ld, add,
                          nullptr);
    });
  }
}

template <class T>
void backward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
              const Tensor& out, const Tensor& grad_out, const Tensor& logsumexp,
              Tensor& grad_q, Tensor& grad_k, Tensor& grad_v) {
  const T* pl = logsumexp.data<T>();
  const int64_t rows = a.batch * a.tq;
  // D_i = dO_i·O_i = Σ_j P_ij dP_ij, the softmax backward's row term.
  std::vector<T> delta(static_cast<size_t>(rows));
  parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, a.dv)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t b = begin / a.tq; b * a.tq < end; ++b) {
                   const Rows<const T> g =
                       entry_rows<const T>(grad_out.data<T>(), a.grad_out, a, b);
                   const Rows<const T> o = entry_rows<const T>(out.data<T>(), a.out, a, b);
                   for (int64_t i = std::max(begin - b * a.tq, int64_t{0});
                        i < std::min(end - b * a.tq, a.tq); ++i)
                     delta[static_cast<size_t>(b * a.tq + i)] = dot(g.row(i), o.row(i), a.dv);
                 }
               });
  // Tasks are (batch entry, chunk of key tiles). dQ sums over all key tiles: with one
  // chunk per entry a task owns its dQ rows; when there are fewer entries than threads,
  // the key axis is split and each chunk adds into its own (batch, tq, d) copy of dQ,
  // summed after.
  const int64_t key_tiles = (a.tk + kKeyTile - 1) / kKeyTile;
  const int64_t threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const int64_t chunks =
      std::clamp<int64_t>((threads + a.batch - 1) / std::max<int64_t>(1, a.batch), 1,
                          std::max<int64_t>(1, key_tiles));
  const int64_t q_size = a.batch * a.tq * a.d;
  std::vector<T> partial(chunks > 1 ? static_cast<size_t>((chunks - 1) * q_size) : 0, T(0));
  // Key tile 0 sets dQ; without keys, dQ is 0.
  if (key_tiles == 0)
    parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, a.d)),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t r = begin; r < end; ++r) {
                     T* dq = entry_rows(grad_q.data<T>(), a.grad_q, a, r / a.tq).row(r % a.tq);
                     std::fill(dq, dq + a.d, T(0));
                   }
                 });
  const int64_t work_per_task = std::max<int64_t>(1, a.tq * (a.d + a.dv) * kKeyTile);
  parallel_for(a.batch * chunks, std::max<int64_t>(1, kParallelGrain / work_per_task),
               [&](int64_t begin, int64_t end) {
                 std::vector<T> buffer(
                     static_cast<size_t>((2 * kQueryTile + a.d + a.dv) * kKeyTile));
                 for (int64_t task = begin; task < end; ++task) {
                   const int64_t b = task / chunks, chunk = task % chunks;
                   const Rows<T> dq =
                       chunk == 0 ? entry_rows(grad_q.data<T>(), a.grad_q, a, b)
                                  : Rows<T>{partial.data() + (chunk - 1) * q_size + b * a.tq * a.d, a.d};
                   const BackwardOperands<T> x{entry_rows<const T>(q.data<T>(), a.q, a, b),
                                               entry_rows<const T>(k.data<T>(), a.k, a, b),
                                               entry_rows<const T>(v.data<T>(), a.v, a, b),
                                               entry_rows<const T>(grad_out.data<T>(), a.grad_out, a, b),
                                               pl + b * a.tq,
                                               delta.data() + b * a.tq,
                                               dq,
                                               entry_rows(grad_k.data<T>(), a.grad_k, a, b),
                                               entry_rows(grad_v.data<T>(), a.grad_v, a, b)};
                   const int64_t first = key_tiles * chunk / chunks;
                   const int64_t last = key_tiles * (chunk + 1) / chunks;
                   for (int64_t tile = first; tile < last; ++tile) {
                     const int64_t k0 = tile * kKeyTile;
                     backward_key_tile(a, x, k0, std::min(kKeyTile, a.tk - k0), buffer.data());
                   }
                 }
               });
  if (chunks > 1) {
    parallel_for(rows, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, a.d)),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t r = begin; r < end; ++r) {
                     T* dq = entry_rows(grad_q.data<T>(), a.grad_q, a, r / a.tq).row(r % a.tq);
                     for (int64_t chunk = 1; chunk < chunks; ++chunk) {
                       const T* part = partial.data() + (chunk - 1) * q_size + r * a.d;
                       for (int64_t c = 0; c < a.d; ++c) dq[c] += part[c];
                     }
                   }
                 });
  }
}

}  // namespace

void attention_forward(const AttentionArgs& args, const Tensor& q, const Tensor& k,
                       const Tensor& v, Tensor& out, Tensor& logsumexp) {
  dispatch_float("attention", q.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    forward<T>(args, q, k, v, out, logsumexp);
  });
}

void attention_backward(const AttentionArgs& args, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& grad_out,
                        const Tensor& logsumexp, Tensor& grad_q, Tensor& grad_k,
                        Tensor& grad_v) {
  dispatch_float("attention", q.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    backward<T>(args, q, k, v, out, grad_out, logsumexp, grad_q, grad_k, grad_v);
  });
}

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
