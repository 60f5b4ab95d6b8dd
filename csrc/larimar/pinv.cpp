#include "larimar/pinv.hpp"

#include <omp.h>

#include <algorithm>
#include <memory>
#include <type_traits>

#include "larimar/linalg.hpp"

namespace larimar {
namespace {

// out[i] = R_i . x in float64 (a float32 product is exact in float64, so float32 input
// costs no accuracy and half the memory traffic of a converted copy). The overloads come
// from a macro because target_clones does not apply to templates.
#define LARIMAR_ROWS_TIMES(T)                                                                   \
  /* 16 partial sums (four AVX2 registers): one accumulator would wait on each FMA's            \
     latency. */                                                                                \
  LARIMAR_MULTIVERSION                                                                          \
  void dot_rows(const T* r, index_t k, index_t c, const T* x, double* out) {                    \
    constexpr index_t kLanes = 16;                                                              \
    const index_t body = c - c % kLanes;                                                        \
    for (index_t i = 0; i < k; ++i) {                                                           \
      const T* row = r + i * c;                                                                 \
      double acc[kLanes] = {};                                                                  \
      for (index_t j = 0; j < body; j += kLanes) {                                              \
        _Pragma("omp simd") for (index_t u = 0; u < kLanes; ++u) acc[u] +=                      \
            static_cast<double>(row[j + u]) * static_cast<double>(x[j + u]);                    \
      }                                                                                         \
      double s = 0;                                                                             \
      for (index_t j = body; j < c; ++j)                                                        \
        s += static_cast<double>(row[j]) * static_cast<double>(x[j]);                           \
      for (index_t u = 0; u < kLanes; ++u) s += acc[u];                                         \
      out[i] = s;                                                                               \
    }                                                                                           \
  }                                                                                             \
  /* out (K x q) = R (K x C) B^T for bt = B (q x C) in float64: one pass over R, each row       \
     meeting all q vectors while it sits in L1. */                                              \
  LARIMAR_MULTIVERSION                                                                          \
  void rows_times(const T* r, index_t k, index_t c, const double* bt, index_t q, double* out) { \
    for (index_t i = 0; i < k; ++i) {                                                           \
      const T* row = r + i * c;                                                                 \
      for (index_t t = 0; t < q; ++t) {                                                         \
        const double* b = bt + t * c;                                                           \
        double s = 0;                                                                           \
        _Pragma("omp simd reduction(+ : s)") for (index_t j = 0; j < c; ++j) s +=               \
            static_cast<double>(row[j]) * b[j];                                                 \
        out[i * q + t] = s;                                                                     \
      }                                                                                         \
    }                                                                                           \
  }                                                                                             \
  /* out (q x C) = S^T R for S (K x q) in float64: rank-1 accumulation, one pass over R. */     \
  LARIMAR_MULTIVERSION                                                                          \
  void transpose_times(const T* r, index_t k, index_t c, const double* s, index_t q,            \
                       double* out) {                                                           \
    std::fill(out, out + q * c, 0.0);                                                           \
    for (index_t i = 0; i < k; ++i) {                                                           \
      const T* row = r + i * c;                                                                 \
      for (index_t t = 0; t < q; ++t) {                                                         \
        const double f = s[i * q + t];                                                          \
        double* o = out + t * c;                                                                \
        _Pragma("omp simd") for (index_t j = 0; j < c; ++j) o[j] +=                             \
            f * static_cast<double>(row[j]);                                                    \
      }                                                                                         \
    }                                                                                           \
  }
LARIMAR_ROWS_TIMES(float)
LARIMAR_ROWS_TIMES(double)
#undef LARIMAR_ROWS_TIMES

// body(lo, hi) on the kernel's threads, each taking the same block of R's rows in every
// call: a block then stays in that core's L2 across the passes over R (the passes of a
// pivoted Cholesky), where one core would stream all of R from L3 each pass.
template <class Body>
void for_row_blocks(index_t k, index_t c, Body&& body) {
  const int team = omp_in_parallel() || k * c < (index_t(1) << 17) ? 1 : num_threads();
  for_blocks(k, team, [&](index_t lo, index_t len) { body(lo, lo + len); });
}

// out[i] = R_i . x, the rows split over the kernel's threads.
template <class T>
void dot_rows_parallel(const T* r, index_t k, index_t c, const T* x, double* out) {
  for_row_blocks(k, c,
                 [&](index_t lo, index_t hi) { dot_rows(r + lo * c, hi - lo, c, x, out + lo); });
}

// Rows of R (K x C) that span its row space, in pivot order: pivoted Cholesky of the Gram
// R R^T, one Gram column (a pass over R) per pivot, until every residual row norm^2 is
// below tol2 (absolute).
template <class T>
std::vector<index_t> gram_pivots(const T* r, index_t k, index_t c,
                                 const std::vector<double>& sq_norms, double tol2,
                                 std::vector<double>& raw_columns, index_t stop_at, bool& stopped) {
  const index_t max_rank = std::min(k, c);
  stopped = false;
  std::vector<double> residual(sq_norms);
  std::vector<index_t> pivots;
  std::vector<double> factor;  // j x K: row t is the t-th Cholesky column
  std::vector<double> column(k), lp;
  while (static_cast<index_t>(pivots.size()) < max_rank) {
    index_t p = -1;
    double best = tol2;
    for (index_t i = 0; i < k; ++i)
      if (residual[i] > best) best = residual[i], p = i;
    if (p < 0) break;
    const index_t j = static_cast<index_t>(pivots.size());
    if (j == stop_at) {
      // A flat spectrum of rank q leaves (q - j) / q of the energy after j pivots, so the
      // share captured predicts q ~ j / captured: past K / 2, stop (full row rank likely).
      double left = 0, total = 0;
      for (index_t i = 0; i < k; ++i) left += std::max(residual[i], 0.0), total += sq_norms[i];
      if ((1.0 - left / total) * double(k) < 2.0 * double(j)) {
        stopped = true;
        break;
      }
    }
    // column = (R R_p^T - L[:, :j] L[p, :j]^T) / sqrt(residual_p)
    dot_rows_parallel(r, k, c, r + p * c, column.data());
    raw_columns.insert(raw_columns.end(), column.begin(), column.end());  // R R_p^T, exact
    if (j > 0) {
      lp.resize(j);
      for (index_t t = 0; t < j; ++t) lp[t] = factor[t * k + p];
      blas::gemv<double>(true, j, k, -1.0, factor.data(), k, lp.data(), 1.0, column.data());
    }
    const double scale = 1.0 / std::sqrt(best);
    factor.resize((j + 1) * k);
    double* l = factor.data() + j * k;
    for (index_t i = 0; i < k; ++i) {
      l[i] = column[i] * scale;
      residual[i] -= l[i] * l[i];
    }
    residual[p] = 0;  // taken: exactly spanned now
    pivots.push_back(p);
  }
  return pivots;
}

}  // namespace

// Orthonormal basis Q (C x q) spanning every row of R (K x C) to within a residual of tol
// times its largest row norm, and the coordinates U = R Q (K x q), all float64.
struct RowSpace {
  std::vector<double> basis, coords, sq_norms;
  index_t rank = 0;
  bool stopped = false;  // rank predicted above K / 2 at stop_at pivots: nothing filled in
};

// stop_at < 0: no probe.
template <class T>
RowSpace row_space(const T* r, index_t k, index_t c, double rcond, index_t stop_at) {
  RowSpace out;
  std::vector<double>& sq = out.sq_norms;
  sq.resize(k);
  for_row_blocks(k, c, [&](index_t lo, index_t hi) {
    for (index_t i = lo; i < hi; ++i) dot_rows(r + i * c, 1, c, r + i * c, &sq[i]);
  });
  const double largest = *std::max_element(sq.begin(), sq.end());
  if (largest == 0) return out;
  // The Gram squares R: its pivots cannot resolve residuals below ~sqrt(eps64) of the
  // largest row. When rcond asks for more, the remaining directions are found by explicit
  // Gram-Schmidt on the exact residual R - R Q Q^T.
  const double cutoff2 = rcond * rcond * largest;
  const double gram_floor2 = 32.0 * epsilon<double>() * largest;
  std::vector<double> raw;  // q x K: column t is R R_{p_t}^T
  const std::vector<index_t> pivots =
      gram_pivots(r, k, c, sq, std::max(cutoff2, gram_floor2), raw, stop_at, out.stopped);
  if (out.stopped) return out;
  index_t q = static_cast<index_t>(pivots.size());
  std::vector<double>& basis = out.basis;  // C x q
  std::vector<double> triangle;            // R_P^T = Q Rc
  if (q > 0) {
    std::vector<double> rows_t(c * q);
    for (index_t t = 0; t < q; ++t)
      for (index_t j = 0; j < c; ++j) rows_t[j * q + t] = r[pivots[t] * c + j];
    thin_qr(rows_t.data(), c, q, basis, triangle);
  }
  const index_t gram_rank = q;
  if (cutoff2 < gram_floor2 && q < std::min(k, c)) {
    // E = R - (R Q) Q^T, then pivoted Gram-Schmidt with re-orthogonalisation.
    std::vector<double> e = convert<double>(r, k * c);
    if (q > 0) {
      std::vector<double> coef(k * q);
      blas::gemm_parallel<double>(false, false, k, q, c, 1.0, e.data(), c, basis.data(), q, 0.0,
                                  coef.data(), q);
      blas::gemm_parallel<double>(false, true, k, c, q, -1.0, coef.data(), q, basis.data(), q, 1.0,
                                  e.data(), c);
    }
    std::vector<std::vector<double>> extra;
    std::vector<double> h(k);
    while (q + static_cast<index_t>(extra.size()) < std::min(k, c)) {
      index_t p = -1;
      double best = cutoff2;
      for (index_t i = 0; i < k; ++i) {
        double s = 0;
        for (index_t j = 0; j < c; ++j) s += e[i * c + j] * e[i * c + j];
        if (s > best) best = s, p = i;
      }
      if (p < 0) break;
      std::vector<double> v(e.begin() + p * c, e.begin() + (p + 1) * c);
      for (int pass = 0; pass < 2; ++pass) {  // twice is enough
        for (index_t t = 0; t < q; ++t) {
          double d = 0;
          for (index_t j = 0; j < c; ++j) d += basis[j * q + t] * v[j];
          for (index_t j = 0; j < c; ++j) v[j] -= d * basis[j * q + t];
        }
        for (const auto& u : extra) {
          double d = 0;
          for (index_t j = 0; j < c; ++j) d += u[j] * v[j];
          for (index_t j = 0; j < c; ++j) v[j] -= d * u[j];
        }
      }
      double norm = 0;
      for (double x : v) norm += x * x;
      norm = std::sqrt(norm);
      if (!(norm > 0)) break;
      for (double& x : v) x /= norm;
      blas::gemv<double>(false, k, c, 1.0, e.data(), c, v.data(), 0.0, h.data());
      for (index_t i = 0; i < k; ++i)
        for (index_t j = 0; j < c; ++j) e[i * c + j] -= h[i] * v[j];
      extra.push_back(std::move(v));
    }
    if (!extra.empty()) {
      const index_t q2 = q + static_cast<index_t>(extra.size());
      std::vector<double> grown(c * q2);
      for (index_t j = 0; j < c; ++j) {
        for (index_t t = 0; t < q; ++t) grown[j * q2 + t] = basis[j * q + t];
        for (index_t t = q; t < q2; ++t) grown[j * q2 + t] = extra[t - q][j];
      }
      basis.swap(grown);
      q = q2;
    }
  }
  out.rank = q;
  if (q == 0) return out;
  out.coords.resize(k * q);
  if (std::is_same<T, float>::value && gram_rank == q) {
    // U = R Q = (R R_P^T) Rc^-1 from the exact Gram columns: no pass over R. (Float64 data
    // takes the pass: Rc's conditioning would cost digits it can keep.)
    for (index_t i = 0; i < k; ++i)
      for (index_t t = 0; t < q; ++t) out.coords[i * q + t] = raw[t * k + i];
    solve_upper_right(triangle.data(), q, out.coords.data(), k);
  } else {
    std::vector<double> qt(q * c);
    for (index_t j = 0; j < c; ++j)
      for (index_t t = 0; t < q; ++t) qt[t * c + j] = basis[j * q + t];
    rows_times(r, k, c, qt.data(), q, out.coords.data());
  }
  return out;
}

namespace {

// Largest error of R^+ accepted from a float32 solve. Its error is about cond(R) eps32
// (measured: 1.5e-8 times the estimate below, for cond 3 to 1000), and the estimate
// eps32 / sqrt(rcond(G)) bounds it: the float32 solve runs while that is <= 1e-5.
constexpr double kFloat32SolveError = 1e-5;

}  // namespace

template <class T>
bool LowRankPinv<T>::full_row_rank(const T* r, double rcond, bool dense) {
  const index_t k = k_, c = c_;
  if (k > c) return false;
  // R^+ = R^T G^-1 with G = R R^T, factored in float64. Kept only when G's condition shows
  // that (a) no singular value of R falls below the cutoff: sigma_min / sigma_max >= rcond
  // holds when rcond(G) >= K rcond^2, since dpocon's 1-norm estimate is within a factor K
  // of the 2-norm one; and (b) the Gram loses nothing in T's precision
  // (cholesky_rcond_floor).
  // R in float64 for the Gram, and dense, G^-1 R (uninitialised: each thread writes, and so
  // first touches, its own rows)
  std::unique_ptr<double[]> x(new double[k * c]);
  for_row_blocks(
      k, c, [&](index_t lo, index_t hi) { std::copy(r + lo * c, r + hi * c, x.get() + lo * c); });
  std::vector<double> gram(k * k);
  blas::gram(x.get(), k, c, gram.data());
  Cholesky chol;
  const double floor = std::max(cholesky_rcond_floor<T>(), double(k) * rcond * rcond);
  if (!chol.factor(gram, k)) return false;
  const double gram_rcond = chol.rcond();
  if (!(gram_rcond >= floor)) return false;
  // A well-conditioned float32 R takes the triangular solves in float32, at about twice
  // the speed (kFloat32SolveError).
  float_solve_ = std::is_same<T, float>::value &&
                 epsilon<float>() <= kFloat32SolveError * std::sqrt(gram_rcond);
  if (!dense) {
    if (float_solve_) chol.keep_float32();
    gram_ = std::move(chol);
  } else if (float_solve_) {
    dense_pinv_t_.assign(r, r + k * c);
    chol.solve(dense_pinv_t_.data(), c);
  } else {
    chol.solve(x.get(), c);
    dense_pinv_t_.assign(x.get(), x.get() + k * c);
  }
  dense_r_.assign(r, r + k * c);
  rank_ = k;
  return true;
}

template <class T>
void LowRankPinv<T>::solve_gram(T* w, index_t n) const {
  if (float_solve_ || std::is_same<T, double>::value) {
    gram_.solve_rows(w, n);
    return;
  }
  std::vector<double> y(w, w + n * k_);  // float32 data, solved in float64 (kFloat32SolveError)
  gram_.solve_rows(y.data(), n);
  std::copy(y.begin(), y.end(), w);
}

template <class T>
LowRankPinv<T>::LowRankPinv(const T* r, index_t k, index_t c, double rcond, bool dense)
    : k_(k), c_(c) {
  if (rcond < 0) rcond = default_rcond<T>(k, c);
  // Pivot rows until no residual row exceeds tol |R_max row| / sqrt(K), tol the dtype's
  // default cutoff (or rcond when smaller): the directions left out hold singular values
  // near the storage precision, and the exact residual E = R - R Q Q^T is that small.
  const double tol = std::min(rcond, default_rcond<T>(k, c));
  // A low-rank memory (N rows written into K slots) takes the rank-revealing path, O(N K C).
  // When 8 pivots predict a rank above K / 2, R may be of full row rank (a trained prior):
  // one Gram, a Cholesky and a product, a few GEMMs' worth, beat the remaining pivots and
  // the SVD.
  const index_t stop_at = k <= c && k >= 64 ? 8 : -1;
  RowSpace space = row_space(r, k, c, tol / std::sqrt(double(k)), stop_at);
  if (space.stopped) {
    if (full_row_rank(r, rcond, dense)) return;
    space = row_space(r, k, c, tol / std::sqrt(double(k)), -1);
  }
  const index_t q = space.rank;
  if (q == 0) return;  // R == 0: R^+ == 0
  const std::vector<double>& qc = space.basis;
  std::vector<double>& u = space.coords;
  std::vector<double> uu, sv, vt;
  thin_svd(u.data(), k, q, uu, sv, vt);
  index_t kept = 0;
  while (kept < q && sv[kept] > rcond * sv[0] && sv[kept] > 0) ++kept;
  rank_ = kept;
  if (kept == 0) return;
  std::vector<double> scaled(k * kept);  // Uu[:, :kept] S^-1
  for (index_t i = 0; i < k; ++i)
    for (index_t t = 0; t < kept; ++t) scaled[i * kept + t] = uu[i * q + t] / sv[t];
  // V = R^T Uu S^-1 = Q_c Vu + E^T Uu S^-1 with E = R - U Q_c^T. |E|^2 = |R|^2 - |U|^2;
  // when |E| / s_min is below the dtype's precision the correction is too, and V = Q_c Vu.
  double r2 = 0, u2 = 0;
  for (double x : space.sq_norms) r2 += x;
  for (double x : u) u2 += x * x;
  const double residual = std::sqrt(std::max(0.0, r2 - u2));
  std::vector<double> vt_exact(kept * c);  // V^T (kept x C)
  if (residual <= 8 * epsilon<T>() * sv[kept - 1]) {
    blas::gemm<double>(false, true, kept, c, q, 1.0, vt.data(), q, qc.data(), q, 0.0,
                       vt_exact.data(), c);
  } else {
    transpose_times(r, k, c, scaled.data(), kept, vt_exact.data());
  }
  basis_.resize(c * kept);
  left_.resize(c * kept);
  for (index_t j = 0; j < c; ++j)
    for (index_t t = 0; t < kept; ++t) {
      basis_[j * kept + t] = static_cast<T>(vt_exact[t * c + j]);
      left_[j * kept + t] = static_cast<T>(vt_exact[t * c + j] / sv[t]);
    }
  right_.resize(kept * k);
  for (index_t i = 0; i < k; ++i)
    for (index_t t = 0; t < kept; ++t) right_[t * k + i] = static_cast<T>(uu[i * q + t]);
}

namespace {

// out (n x width) = (Z F) G for Z (n x C), F (C x rank) and G (rank x width), or G stored
// transposed (width x rank): both products of a low-rank pseudo-inverse.
template <class T>
void low_rank_product(const T* z, index_t n, index_t c, const std::vector<T>& f, index_t rank,
                      const std::vector<T>& g, bool g_transposed, index_t width, T* out) {
  if (rank == 0) {
    std::fill(out, out + n * width, T(0));
    return;
  }
  std::vector<T> zf(n * rank);
  blas::gemm_parallel<T>(false, false, n, rank, c, T(1), z, c, f.data(), rank, T(0), zf.data(),
                         rank);
  blas::gemm_parallel<T>(false, g_transposed, n, width, rank, T(1), zf.data(), rank, g.data(),
                         g_transposed ? rank : width, T(0), out, width);
}

}  // namespace

template <class T>
void LowRankPinv<T>::apply(const T* z, index_t n, T* w) const {
  if (!dense_pinv_t_.empty()) {
    blas::gemm_parallel<T>(false, true, n, k_, c_, T(1), z, c_, dense_pinv_t_.data(), c_, T(0), w,
                           k_);
    return;
  }
  if (!gram_.empty()) {  // W = (Z R^T) G^-1
    blas::gemm_parallel<T>(false, true, n, k_, c_, T(1), z, c_, dense_r_.data(), c_, T(0), w, k_);
    solve_gram(w, n);
    return;
  }
  low_rank_product(z, n, c_, left_, rank_, right_, false, k_, w);
}

template <class T>
void LowRankPinv<T>::project(const T* z, index_t n, T* out) const {
  if (!dense_r_.empty()) {  // the full-row-rank route: (Z R^+) R
    std::vector<T> w(n * k_);
    apply(z, n, w.data());
    blas::gemm_parallel<T>(false, false, n, c_, k_, T(1), w.data(), k_, dense_r_.data(), c_, T(0),
                           out, c_);
    return;
  }
  low_rank_product(z, n, c_, basis_, rank_, basis_, true, c_, out);
}

template <class T>
void LowRankPinv<T>::matrix(T* out) const {
  if (!dense_r_.empty()) {  // R^+ = (G^-1 R)^T, or R^T then solved: transposed in tiles
    const std::vector<T>& rows = dense_pinv_t_.empty() ? dense_r_ : dense_pinv_t_;
    constexpr index_t kTile = 32;
    for (index_t i0 = 0; i0 < k_; i0 += kTile)
      for (index_t j0 = 0; j0 < c_; j0 += kTile)
        for (index_t i = i0; i < std::min(k_, i0 + kTile); ++i)
          for (index_t j = j0; j < std::min(c_, j0 + kTile); ++j)
            out[j * k_ + i] = rows[i * c_ + j];
    if (dense_pinv_t_.empty()) solve_gram(out, c_);
    return;
  }
  if (rank_ == 0) {
    std::fill(out, out + c_ * k_, T(0));
    return;
  }
  blas::gemm_parallel<T>(false, false, c_, k_, rank_, T(1), left_.data(), rank_, right_.data(), k_,
                         T(0), out, k_);
}

namespace {

// Checks the arguments of a batched op on queries Z (B x N x C) and matrices R (B x K x C),
// named z_name and r_name, then runs body(b, R_b^+) per episode in parallel.
template <class T, class Body>
void for_each_pinv(const T* z, const T* r, index_t batch, index_t n, index_t k, index_t c,
                   double rcond, const char* z_name, const char* r_name, Body&& body) {
  check_dim(batch, z_name, "batch size");
  check_dim(n, z_name, "number of rows N");
  check_dim(k, r_name, "number of rows K");
  check_dim(c, z_name, "code size C");
  if (rcond >= 0) check_scalar(rcond, "rcond", true, false);
  check_finite(z, batch * n * c, z_name);
  check_finite(r, batch * k * c, r_name);
  const double q = double(std::min(k, c));
  check_allocation(8.0 * std::min<double>(num_threads(), batch) * (4.0 * k * q + 4.0 * c * q),
                   r_name, "the float64 workspace of the pseudo-inverse");
  parallel_for(batch, [&](index_t b) { body(b, LowRankPinv<T>(r + b * k * c, k, c, rcond)); });
}

// W = Z R^+ (project false: the addresses) or (Z M^+) M = Z Q Q^T (project true: M^+ M
// projects onto M's kept row space), per episode.
template <class T>
void batched_pinv(const T* z, const T* r, T* out, index_t batch, index_t n, index_t k, index_t c,
                  double rcond, bool project) {
  const index_t width = project ? c : k;
  for_each_pinv(z, r, batch, n, k, c, rcond, project ? "Zq" : "Z", project ? "M" : "R",
                [&](index_t b, const LowRankPinv<T>& pinv) {
                  if (project) {
                    pinv.project(z + b * n * c, n, out + b * n * width);
                  } else {
                    pinv.apply(z + b * n * c, n, out + b * n * width);
                  }
                });
  check_result(out, batch * n * width, project ? "Zq, M" : "Z, R");
}

}  // namespace

template <class T>
void pinv_address(const T* z, const T* r, T* w, index_t batch, index_t n, index_t k, index_t c,
                  double rcond) {
  batched_pinv(z, r, w, batch, n, k, c, rcond, false);
}

template <class T>
void pinv_read(const T* z, const T* m, T* out, index_t batch, index_t n, index_t k, index_t c,
               double rcond) {
  batched_pinv(z, m, out, batch, n, k, c, rcond, true);
}

namespace {

template <class T>
LowRankPinv<T> checked_pinv(const T* r, index_t k, index_t c, double rcond) {
  check_dim(k, "R", "number of rows K");
  check_dim(c, "R", "code size C");
  if (rcond >= 0) check_scalar(rcond, "rcond", true, false);
  check_finite(r, k * c, "R");
  const double q = double(std::min(k, c));
  check_allocation(8.0 * (4.0 * k * q + 4.0 * c * q + 2.0 * k * k), "R",
                   "the float64 workspace of the pseudo-inverse");
  return LowRankPinv<T>(r, k, c, rcond, true);
}

}  // namespace

template <class T>
PreparedPinv<T>::PreparedPinv(const T* r, index_t k, index_t c, double rcond)
    : pinv_(checked_pinv(r, k, c, rcond)) {}

namespace {

// The checks around one query of a prepared pseudo-inverse: Z (n x C) in, out (n x width).
template <class T, class Op>
void checked_query(const LowRankPinv<T>& pinv, const T* z, index_t n, index_t width, T* out,
                   Op&& op) {
  check_dim(n, "Z", "number of rows");
  check_finite(z, n * pinv.cols(), "Z");
  op();
  check_result(out, n * width, "Z");
}

}  // namespace

template <class T>
void PreparedPinv<T>::address(const T* z, index_t n, T* w) const {
  checked_query(pinv_, z, n, pinv_.rows(), w, [&] { pinv_.apply(z, n, w); });
}

template <class T>
void PreparedPinv<T>::project(const T* z, index_t n, T* out) const {
  checked_query(pinv_, z, n, pinv_.cols(), out, [&] { pinv_.project(z, n, out); });
}

template class PreparedPinv<float>;
template class PreparedPinv<double>;
template void pinv_read<float>(const float*, const float*, float*, index_t, index_t, index_t,
                               index_t, double);
template void pinv_read<double>(const double*, const double*, double*, index_t, index_t, index_t,
                                index_t, double);
template class LowRankPinv<float>;
template class LowRankPinv<double>;
template void pinv_address<float>(const float*, const float*, float*, index_t, index_t, index_t,
                                  index_t, double);
template void pinv_address<double>(const double*, const double*, double*, index_t, index_t, index_t,
                                   index_t, double);

}  // namespace larimar
