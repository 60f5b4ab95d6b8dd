#include "larimar/pinv.hpp"

#include <algorithm>

#include "larimar/linalg.hpp"

namespace larimar {
namespace {

// out[i] = R_i . x in float64 (a float32 product is exact in float64, so float32 input
// costs no accuracy and half the memory traffic of a converted copy). Compiled for AVX-512,
// AVX2 and baseline x86-64; the loader picks one at run time.
#define LARIMAR_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))

LARIMAR_MULTIVERSION
void dot_rows(const float* r, index_t k, index_t c, const float* x, double* out) {
  for (index_t i = 0; i < k; ++i) {
    const float* row = r + i * c;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (index_t j = 0; j < c; ++j) s += static_cast<double>(row[j]) * static_cast<double>(x[j]);
    out[i] = s;
  }
}

LARIMAR_MULTIVERSION
void dot_rows(const double* r, index_t k, index_t c, const double* x, double* out) {
  for (index_t i = 0; i < k; ++i) {
    const double* row = r + i * c;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (index_t j = 0; j < c; ++j) s += row[j] * x[j];
    out[i] = s;
  }
}

// Rows of R (K x C) that span its row space, in pivot order: pivoted Cholesky of the Gram
// R R^T, one Gram column (a pass over R) per pivot, until every residual row norm^2 is
// below tol2 (absolute).
template <class T>
std::vector<index_t> gram_pivots(const T* r, index_t k, index_t c,
                                 const std::vector<double>& sq_norms, double tol2) {
  const index_t max_rank = std::min(k, c);
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
    // column = (R R_p^T - L[:, :j] L[p, :j]^T) / sqrt(residual_p)
    dot_rows(r, k, c, r + p * c, column.data());
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

template <class T>
std::vector<double> row_space_basis(const T* r, index_t k, index_t c, double rcond,
                                    index_t& rank) {
  std::vector<double> sq(k);
  for (index_t i = 0; i < k; ++i) dot_rows(r + i * c, 1, c, r + i * c, &sq[i]);
  const double largest = *std::max_element(sq.begin(), sq.end());
  rank = 0;
  if (largest == 0) return {};
  // The Gram squares R: its pivots cannot resolve residuals below ~sqrt(eps64) of the
  // largest row. When rcond asks for more, the remaining directions are found by explicit
  // Gram-Schmidt on the exact residual R - R Q Q^T.
  const double cutoff2 = rcond * rcond * largest;
  const double gram_floor2 =
      100.0 * static_cast<double>(std::max(k, c)) * epsilon<double>() * largest;
  const std::vector<index_t> pivots = gram_pivots(r, k, c, sq, std::max(cutoff2, gram_floor2));
  index_t q = static_cast<index_t>(pivots.size());
  std::vector<double> basis;  // C x q
  if (q > 0) {
    std::vector<double> rows_t(c * q), unused;
    for (index_t t = 0; t < q; ++t)
      for (index_t j = 0; j < c; ++j) rows_t[j * q + t] = r[pivots[t] * c + j];
    thin_qr(rows_t.data(), c, q, basis, unused);
  }
  if (cutoff2 < gram_floor2 && q < std::min(k, c)) {
    // E = R - (R Q) Q^T, then pivoted Gram-Schmidt with re-orthogonalisation.
    std::vector<double> e = convert<double>(r, k * c);
    if (q > 0) {
      std::vector<double> coef(k * q);
      blas::gemm_parallel<double>(false, false, k, q, c, 1.0, e.data(), c, basis.data(), q, 0.0, coef.data(), q);
      blas::gemm_parallel<double>(false, true, k, c, q, -1.0, coef.data(), q, basis.data(), q, 1.0, e.data(), c);
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
  rank = q;
  return basis;
}

template <class T>
LowRankPinv<T>::LowRankPinv(const T* r, index_t k, index_t c, double rcond) : k_(k), c_(c) {
  if (rcond < 0) rcond = default_rcond<T>(k, c);
  std::vector<double> qc = row_space_basis(r, k, c, rcond, rank_);
  if (rank_ == 0) return;  // R == 0: R^+ == 0
  const index_t q = rank_;
  // R = U Q_c^T with U = R Q_c (K x q); R^+ = Q_c U^+ = Q_c R_u^-1 Q_u^T. U in float64:
  // its conditioning is R's, and its small singular directions carry the answer.
  const std::vector<double> rd = convert<double>(r, k * c);
  std::vector<double> u(k * q);
  blas::gemm_parallel<double>(false, false, k, q, c, 1.0, rd.data(), c, qc.data(), q, 0.0, u.data(), q);
  std::vector<double> qu, ru;
  thin_qr(u.data(), k, q, qu, ru);
  basis_ = convert<T>(qc.data(), c * q);
  solve_upper_right(ru.data(), q, qc.data(), c);  // Q_c R_u^-1
  left_ = convert<T>(qc.data(), c * q);
  right_.resize(q * k);
  for (index_t i = 0; i < k; ++i)
    for (index_t t = 0; t < q; ++t) right_[t * k + i] = static_cast<T>(qu[i * q + t]);
}

template <class T>
void LowRankPinv<T>::apply(const T* z, index_t n, T* w) const {
  if (rank_ == 0) {
    std::fill(w, w + n * k_, T(0));
    return;
  }
  std::vector<T> projected(n * rank_);
  blas::gemm_parallel<T>(false, false, n, rank_, c_, T(1), z, c_, left_.data(), rank_, T(0),
                projected.data(), rank_);
  blas::gemm_parallel<T>(false, false, n, k_, rank_, T(1), projected.data(), rank_, right_.data(), k_,
                T(0), w, k_);
}

template <class T>
void LowRankPinv<T>::project(const T* z, index_t n, T* out) const {
  if (rank_ == 0) {
    std::fill(out, out + n * c_, T(0));
    return;
  }
  std::vector<T> coef(n * rank_);
  blas::gemm_parallel<T>(false, false, n, rank_, c_, T(1), z, c_, basis_.data(), rank_, T(0),
                         coef.data(), rank_);
  blas::gemm_parallel<T>(false, true, n, c_, rank_, T(1), coef.data(), rank_, basis_.data(),
                         rank_, T(0), out, c_);
}

template <class T>
void pinv_address(const T* z, const T* r, T* w, index_t batch, index_t n, index_t k, index_t c,
                  double rcond) {
  check_dim(batch, "Z", "batch size");
  check_dim(n, "Z", "number of rows N");
  check_dim(k, "R", "number of keys K");
  check_dim(c, "Z", "code size C");
  if (rcond >= 0) check_scalar(rcond, "rcond", true, false);
  check_finite(z, batch * n * c, "Z");
  check_finite(r, batch * k * c, "R");
  parallel_for(batch, [&](index_t b) {
    const LowRankPinv<T> pinv(r + b * k * c, k, c, rcond);
    pinv.apply(z + b * n * c, n, w + b * n * k);
  });
}

template <class T>
void pinv_read(const T* z, const T* m, T* out, index_t batch, index_t n, index_t k, index_t c,
               double rcond) {
  check_dim(batch, "Zq", "batch size");
  check_dim(n, "Zq", "number of rows N");
  check_dim(k, "M", "memory size K");
  check_dim(c, "Zq", "code size C");
  if (rcond >= 0) check_scalar(rcond, "rcond", true, false);
  check_finite(z, batch * n * c, "Zq");
  check_finite(m, batch * k * c, "M");
  const double cutoff = rcond >= 0 ? rcond : default_rcond<T>(k, c);
  parallel_for(batch, [&](index_t b) {
    // (Z M^+) M = Z Q Q^T: M^+ M projects onto M's row space, spanned by Q (C x r).
    index_t rank = 0;
    const std::vector<double> q = row_space_basis(m + b * k * c, k, c, cutoff, rank);
    T* o = out + b * n * c;
    if (rank == 0) {
      std::fill(o, o + n * c, T(0));
      return;
    }
    const std::vector<T> qt = convert<T>(q.data(), c * rank);
    std::vector<T> coef(n * rank);
    blas::gemm_parallel<T>(false, false, n, rank, c, T(1), z + b * n * c, c, qt.data(), rank, T(0), coef.data(), rank);
    blas::gemm_parallel<T>(false, true, n, c, rank, T(1), coef.data(), rank, qt.data(), rank, T(0), o, c);
  });
}

template std::vector<double> row_space_basis<float>(const float*, index_t, index_t, double, index_t&);
template std::vector<double> row_space_basis<double>(const double*, index_t, index_t, double, index_t&);
template void pinv_read<float>(const float*, const float*, float*, index_t, index_t, index_t,
                               index_t, double);
template void pinv_read<double>(const double*, const double*, double*, index_t, index_t, index_t,
                                index_t, double);
template class LowRankPinv<float>;
template class LowRankPinv<double>;
template void pinv_address<float>(const float*, const float*, float*, index_t, index_t, index_t,
                                  index_t, double);
template void pinv_address<double>(const double*, const double*, double*, index_t, index_t,
                                   index_t, index_t, double);

}  // namespace larimar
