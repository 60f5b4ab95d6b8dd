#include "larimar/sequential.hpp"

#include <algorithm>

#include "larimar/linalg.hpp"

namespace larimar {
namespace {

// P = C^-1 through a Cholesky; false when C is not positive definite.
bool invert_spd(const std::vector<double>& c, index_t k, std::vector<double>& inverse) {
  std::vector<double> work(c);
  Cholesky chol;
  if (!chol.factor(work, k)) return false;
  inverse.assign(k * k, 0.0);
  for (index_t i = 0; i < k; ++i) inverse[i * k + i] = 1.0;
  chol.solve(inverse.data(), k);
  return true;
}

}  // namespace

template <class T>
SequentialMemory<T>::SequentialMemory(index_t memory_size, index_t code_size, const T* prior,
                                      double ridge)
    : k_(memory_size), c_(code_size), ridge_(ridge) {
  check_dim(memory_size, "memory_size", "memory size K");
  check_dim(code_size, "code_size", "code size C");
  require(std::isfinite(ridge) && ridge > 0, "ridge",
          "expected a finite number > 0 (it keeps C = W^T W + ridge I invertible before K "
          "rows are stored), got " + std::to_string(ridge));
  if (prior) {
    check_finite(prior, k_ * c_, "prior");
    prior_ = convert<double>(prior, k_ * c_);
    prior_pinv_ = std::make_unique<LowRankPinv<T>>(prior, k_, c_);
  }
  reset_state();
}

template <class T>
void SequentialMemory<T>::reset_state() {
  m_ = prior_.empty() ? std::vector<double>(k_ * c_, 0.0) : prior_;
  gram_.assign(k_ * k_, 0.0);
  precision_.assign(k_ * k_, 0.0);
  for (index_t i = 0; i < k_; ++i) {
    gram_[i * k_ + i] = ridge_;
    precision_[i * k_ + i] = 1.0 / ridge_;
  }
  pending_.clear();
  pending_sign_.clear();
}

template <class T>
void SequentialMemory<T>::check_rows(const T* w, const T* z, index_t n) const {
  check_dim(n, "W", "number of rows");
  check_finite(w, n * k_, "W");
  check_finite(z, n * c_, "Z");
}

template <class T>
void SequentialMemory<T>::invalidate() {
  std::lock_guard<std::mutex> lock(cache_mutex_);
  memory_pinv_.reset();
}

template <class T>
void SequentialMemory<T>::fold_pending() const {
  const index_t rows = static_cast<index_t>(pending_sign_.size());
  if (rows == 0) return;
  // C += sum_i sign_i (sqrt|a_i| w_i)^T (sqrt|a_i| w_i)
  std::vector<double> signed_rows(pending_);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < k_; ++j) signed_rows[i * k_ + j] *= pending_sign_[i];
  blas::gemm_parallel<double>(true, false, k_, k_, rows, 1.0, signed_rows.data(), k_, pending_.data(), k_,
                     1.0, gram_.data(), k_);
  pending_.clear();
  pending_sign_.clear();
}

template <class T>
std::vector<double> SequentialMemory<T>::state_memory() const {
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  return m_;
}

template <class T>
std::vector<double> SequentialMemory<T>::state_gram() const {
  // Folding pending rows changes gram_'s representation, not the state: exclusive anyway.
  std::unique_lock<std::shared_mutex> lock(state_mutex_);
  fold_pending();
  return gram_;
}

template <class T>
std::vector<double> SequentialMemory<T>::state_precision() const {
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  return precision_;
}

template <class T>
void SequentialMemory<T>::write(const T* w, const T* z, index_t n) {
  check_rows(w, z, n);
  std::unique_lock<std::shared_mutex> lock(state_mutex_);
  std::vector<double> m, gram, precision;
  m.swap(m_);
  gram.swap(gram_);
  precision.swap(precision_);
  std::vector<double> pending, pending_sign;
  pending.swap(pending_);
  pending_sign.swap(pending_sign_);
  try {
    reset_state();
    update_locked(w, z, n, 1.0);
  } catch (...) {
    m_.swap(m);
    gram_.swap(gram);
    precision_.swap(precision);
    pending_.swap(pending);
    pending_sign_.swap(pending_sign);
    throw;
  }
  invalidate();
}

// Woodbury: U = P W^T (K x n), S = I/alpha + W U (n x n), P' = P - U S^-1 U^T,
// M' = M + U S^-1 R. Returns false, state untouched, when S is too close to singular for
// the update to keep its digits (the caller then refactors C' directly).
template <class T>
bool SequentialMemory<T>::woodbury_update(const std::vector<double>& wd,
                                          std::vector<double>& resid, index_t n, double alpha) {
  const index_t k = k_, c = c_;
  std::vector<double> u(k * n), s(n * n), v(n * k);
  blas::gemm_parallel<double>(false, true, k, n, k, 1.0, precision_.data(), k, wd.data(), k, 0.0, u.data(), n);
  blas::gemm_parallel<double>(false, false, n, n, k, 1.0, wd.data(), k, u.data(), n, 0.0, s.data(), n);
  for (index_t i = 0; i < n; ++i) s[i * n + i] += 1.0 / alpha;
  // S is positive definite for writes; for forgets -S must be.
  const double sign = alpha > 0 ? 1.0 : -1.0;
  for (double& x : s) x *= sign;
  Cholesky chol;
  if (!chol.factor(s, n) || chol.rcond() < 1e-6) return false;
  for (index_t i = 0; i < k; ++i)
    for (index_t j = 0; j < n; ++j) v[j * k + i] = sign * u[i * n + j];
  chol.solve(v.data(), k);  // V = S^-1 U^T
  for (double& x : resid) x *= sign;
  chol.solve(resid.data(), c);  // S^-1 R
  std::vector<double> scaled(wd);
  const double root = std::sqrt(std::abs(alpha));
  for (double& x : scaled) x *= root;
  if (pending_sign_.size() + n > static_cast<size_t>(std::max<index_t>(64, n))) fold_pending();
  // Nothing below can fail: commit in place.
  blas::gemm_parallel<double>(false, false, k, k, n, -1.0, u.data(), n, v.data(), k, 1.0, precision_.data(), k);
  blas::gemm_parallel<double>(false, false, k, c, n, 1.0, u.data(), n, resid.data(), c, 1.0, m_.data(), c);
  pending_.insert(pending_.end(), scaled.begin(), scaled.end());
  pending_sign_.insert(pending_sign_.end(), n, sign);
  return true;
}

template <class T>
void SequentialMemory<T>::update(const T* w, const T* z, index_t n, double alpha) {
  check_scalar(alpha, "alpha", false, true);
  check_rows(w, z, n);
  std::unique_lock<std::shared_mutex> lock(state_mutex_);
  update_locked(w, z, n, alpha);
}

template <class T>
void SequentialMemory<T>::update_locked(const T* w, const T* z, index_t n, double alpha) {
  const index_t k = k_, c = c_;
  const std::vector<double> wd = convert<double>(w, n * k);
  // Residual R = Z - W M (n x C).
  std::vector<double> resid = convert<double>(z, n * c);
  blas::gemm_parallel<double>(false, false, n, c, k, -1.0, wd.data(), k, m_.data(), c, 1.0, resid.data(), c);

  // Woodbury for few rows. A forget near the ridge floor (rows that pin the memory in the
  // underdetermined regime) makes S = I/alpha + W P W^T nearly singular, where Woodbury
  // loses its digits; those go through a fresh Cholesky of C' instead.
  bool done = false;
  if (4 * n < k) done = woodbury_update(wd, resid, n, alpha);
  if (!done) {
    // C' = C + alpha W^T W, P' = C'^-1, M' = M + alpha P' W^T R.
    fold_pending();
    std::vector<double> gram = gram_, precision;
    blas::gemm_parallel<double>(true, false, k, k, n, alpha, wd.data(), k, wd.data(), k, 1.0, gram.data(), k);
    if (!invert_spd(gram, k, precision))
      fail("W", "this update would leave the memory's covariance W^T W + ridge I not "
                "positive definite: forgotten rows are not stored in this memory");
    std::vector<double> wtr(k * c);
    blas::gemm_parallel<double>(true, false, k, c, n, alpha, wd.data(), k, resid.data(), c, 0.0, wtr.data(), c);
    blas::gemm_parallel<double>(false, false, k, c, k, 1.0, precision.data(), k, wtr.data(), c, 1.0, m_.data(), c);
    gram_.swap(gram);
    precision_.swap(precision);
  }
  invalidate();
}

template <class T>
const LowRankPinv<T>& SequentialMemory<T>::memory_pinv() const {
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (!memory_pinv_) {
    const std::vector<T> m = convert<T>(m_.data(), k_ * c_);
    memory_pinv_ = std::make_unique<LowRankPinv<T>>(m.data(), k_, c_);
  }
  return *memory_pinv_;
}

template <class T>
void SequentialMemory<T>::address(const T* z, index_t n, T* w) const {
  check_dim(n, "Z", "number of rows");
  check_finite(z, n * c_, "Z");
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  memory_pinv().apply(z, n, w);
}

template <class T>
void SequentialMemory<T>::prior_address(const T* z, index_t n, T* w) const {
  require(prior_pinv_ != nullptr, "W",
          "no addresses given and the memory has no prior to derive them from (W = Z prior^+)");
  check_dim(n, "Z", "number of rows");
  check_finite(z, n * c_, "Z");
  prior_pinv_->apply(z, n, w);
}

template <class T>
void SequentialMemory<T>::read(const T* z, index_t n, T* out) const {
  check_dim(n, "Zq", "number of rows");
  check_finite(z, n * c_, "Zq");
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  memory_pinv().project(z, n, out);
}

template <class T>
void SequentialMemory<T>::copy_memory(T* out) const {
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  std::copy(m_.begin(), m_.end(), out);
}

template <class T>
void SequentialMemory<T>::set_state(const double* m, const double* gram, const double* precision) {
  check_finite(m, k_ * c_, "memory");
  check_finite(gram, k_ * k_, "gram");
  check_finite(precision, k_ * k_, "precision");
  std::unique_lock<std::shared_mutex> lock(state_mutex_);
  m_.assign(m, m + k_ * c_);
  pending_.clear();
  pending_sign_.clear();
  gram_.assign(gram, gram + k_ * k_);
  precision_.assign(precision, precision + k_ * k_);
  invalidate();
}

template class SequentialMemory<float>;
template class SequentialMemory<double>;

}  // namespace larimar
