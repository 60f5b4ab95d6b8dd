#include "larimar/pinv.hpp"

#include <algorithm>

#include "larimar/linalg.hpp"

namespace larimar {
namespace {

// Rows of R (K x C, float64) that span its row space, in pivot order: pivoted Cholesky of
// the Gram R R^T, one Gram column at a time (a GEMV over R each), until every residual row
// norm^2 is below tol2 (absolute).
std::vector<index_t> gram_pivots(const std::vector<double>& rd, index_t k, index_t c,
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
    blas::gemv<double>(false, k, c, 1.0, rd.data(), c, rd.data() + p * c, 0.0, column.data());
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

// Orthonormal basis (C x r, row-major) of R's row space, to relative cutoff rcond.
// The Gram pivots are cheap but cannot resolve residuals below ~sqrt(eps64) of the largest
// row (the Gram squares R); when rcond asks for more, the remaining directions are found by
// explicit Gram-Schmidt on the exact residual R - R Q Q^T.
std::vector<double> row_space_basis(const std::vector<double>& rd, index_t k, index_t c,
                                    double rcond, index_t& rank) {
  std::vector<double> sq(k);
  for (index_t i = 0; i < k; ++i) {
    double s = 0;
    for (index_t j = 0; j < c; ++j) s += rd[i * c + j] * rd[i * c + j];
    sq[i] = s;
  }
  const double largest = *std::max_element(sq.begin(), sq.end());
  rank = 0;
  if (largest == 0) return {};
  const double cutoff2 = rcond * rcond * largest;
  const double gram_floor2 = 100.0 * static_cast<double>(std::max(k, c)) * epsilon<double>() * largest;
  const std::vector<index_t> pivots = gram_pivots(rd, k, c, sq, std::max(cutoff2, gram_floor2));
  index_t r = static_cast<index_t>(pivots.size());
  std::vector<double> basis;  // C x r
  if (r > 0) {
    std::vector<double> rows_t(c * r), unused;
    for (index_t t = 0; t < r; ++t)
      for (index_t j = 0; j < c; ++j) rows_t[j * r + t] = rd[pivots[t] * c + j];
    thin_qr(rows_t.data(), c, r, basis, unused);
  }
  if (cutoff2 < gram_floor2 && r < std::min(k, c)) {
    // E = R - (R Q) Q^T, then pivoted Gram-Schmidt with re-orthogonalisation.
    std::vector<double> e(rd);
    if (r > 0) {
      std::vector<double> coef(k * r);
      blas::gemm_parallel<double>(false, false, k, r, c, 1.0, rd.data(), c, basis.data(), r, 0.0, coef.data(), r);
      blas::gemm_parallel<double>(false, true, k, c, r, -1.0, coef.data(), r, basis.data(), r, 1.0, e.data(), c);
    }
    std::vector<std::vector<double>> extra;
    std::vector<double> h(k);
    while (r + static_cast<index_t>(extra.size()) < std::min(k, c)) {
      index_t p = -1;
      double best = cutoff2;
      for (index_t i = 0; i < k; ++i) {
        double s = 0;
        for (index_t j = 0; j < c; ++j) s += e[i * c + j] * e[i * c + j];
        if (s > best) best = s, p = i;
      }
      if (p < 0) break;
      std::vector<double> q(e.begin() + p * c, e.begin() + (p + 1) * c);
      for (int pass = 0; pass < 2; ++pass) {  // twice is enough
        for (index_t t = 0; t < r; ++t) {
          double d = 0;
          for (index_t j = 0; j < c; ++j) d += basis[j * r + t] * q[j];
          for (index_t j = 0; j < c; ++j) q[j] -= d * basis[j * r + t];
        }
        for (const auto& v : extra) {
          double d = 0;
          for (index_t j = 0; j < c; ++j) d += v[j] * q[j];
          for (index_t j = 0; j < c; ++j) q[j] -= d * v[j];
        }
      }
      double norm = 0;
      for (double x : q) norm += x * x;
      norm = std::sqrt(norm);
      if (!(norm > 0)) break;
      for (double& x : q) x /= norm;
      blas::gemv<double>(false, k, c, 1.0, e.data(), c, q.data(), 0.0, h.data());
      for (index_t i = 0; i < k; ++i)
        for (index_t j = 0; j < c; ++j) e[i * c + j] -= h[i] * q[j];
      extra.push_back(std::move(q));
    }
    if (!extra.empty()) {
      const index_t r2 = r + static_cast<index_t>(extra.size());
      std::vector<double> grown(c * r2);
      for (index_t j = 0; j < c; ++j) {
        for (index_t t = 0; t < r; ++t) grown[j * r2 + t] = basis[j * r + t];
        for (index_t t = r; t < r2; ++t) grown[j * r2 + t] = extra[t - r][j];
      }
      basis.swap(grown);
      r = r2;
    }
  }
  rank = r;
  return basis;
}

}  // namespace

template <class T>
LowRankPinv<T>::LowRankPinv(const T* r, index_t k, index_t c, double rcond) : k_(k), c_(c) {
  if (rcond < 0) rcond = default_rcond<T>(k, c);
  const std::vector<double> rd = convert<double>(r, k * c);
  std::vector<double> qc = row_space_basis(rd, k, c, rcond, rank_);
  if (rank_ == 0) return;  // R == 0: R^+ == 0
  const index_t q = rank_;
  // R = U Q_c^T with U = R Q_c (K x q); R^+ = Q_c U^+ = Q_c R_u^-1 Q_u^T.
  std::vector<double> u(k * q);
  blas::gemm_parallel<double>(false, false, k, q, c, 1.0, rd.data(), c, qc.data(), q, 0.0, u.data(), q);
  std::vector<double> qu, ru;
  thin_qr(u.data(), k, q, qu, ru);
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

template class LowRankPinv<float>;
template class LowRankPinv<double>;
template void pinv_address<float>(const float*, const float*, float*, index_t, index_t, index_t,
                                  index_t, double);
template void pinv_address<double>(const double*, const double*, double*, index_t, index_t,
                                   index_t, index_t, double);

}  // namespace larimar
