#include "larimar/sequential.hpp"

#include <algorithm>

#include "larimar/linalg.hpp"

namespace larimar {
namespace {

// Rows pending before they are folded into C and B.
constexpr std::size_t kPendingRows = 64;

// Forget by Woodbury only while I/|alpha| - W P W^T keeps this fraction of its scale:
// below it the downdate cancels away the digits that matter (rows that pin the memory in
// the underdetermined regime) and a fresh solve is exact instead.
constexpr double kWoodburyFloor = 1e-3;

// Solves for a symmetric A known to be >= floor I in exact arithmetic through its
// eigendecomposition, eigenvalues clamped at floor: the fallback where rounding (rows of
// 1e5 against a ridge of 1e-6) makes a Cholesky fail on a positive definite matrix.
// Applied in the eigenbasis (V diag(1/w) V^T b), never as an explicit inverse, whose
// large entries would swamp the small ones.
class ClampedSolver {
 public:
  ClampedSolver(const std::vector<double>& a, index_t n, double floor) : n_(n) {
    // a Gram of finite rows can still overflow (entries near 1e154 and up): say so rather
    // than let the eigensolver fail on infinities
    require(std::all_of(a.begin(), a.end(), [](double x) { return std::isfinite(x); }), "W",
            "its Gram matrix overflows float64: the entries of W are too large");
    symmetric_eigen(a.data(), n, w_, v_);
    for (double& x : w_) x = std::max(x, floor);
  }
  // B (n x nrhs, row-major) <- A^-1 B.
  void solve(double* b, index_t nrhs) const {
    std::vector<double> t(n_ * nrhs);  // V^T B, scaled by 1/w
    blas::gemm<double>(true, false, n_, nrhs, n_, 1.0, v_.data(), n_, b, nrhs, 0.0, t.data(), nrhs);
    for (index_t i = 0; i < n_; ++i)
      for (index_t j = 0; j < nrhs; ++j) t[i * nrhs + j] /= w_[i];
    blas::gemm<double>(false, false, n_, nrhs, n_, 1.0, v_.data(), n_, t.data(), nrhs, 0.0, b,
                       nrhs);
  }

 private:
  index_t n_;
  std::vector<double> w_, v_;
};

}  // namespace

template <class T>
SequentialMemory<T>::SequentialMemory(index_t memory_size, index_t code_size, const T* prior,
                                      double ridge)
    : k_(memory_size), c_(code_size), ridge_(ridge) {
  check_dim(memory_size, "memory_size", "memory size K");
  check_dim(code_size, "code_size", "code size C");
  require(std::isfinite(ridge) && ridge > 0, "ridge",
          "expected a finite number > 0 (it keeps C = W^T W + ridge I invertible before K "
          "rows are stored), got " +
              std::to_string(ridge));
  check_allocation(8.0 * (3.0 * double(k_) * k_ + 4.0 * double(k_) * c_), "memory_size",
                   "the float64 state (M, C, B, P)");
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
  rhs_ = m_;
  for (double& x : rhs_) x *= ridge_;
  gram_.assign(k_ * k_, 0.0);
  precision_.assign(k_ * k_, 0.0);
  for (index_t i = 0; i < k_; ++i) {
    gram_[i * k_ + i] = ridge_;
    precision_[i * k_ + i] = 1.0 / ridge_;
  }
  pending_w_.clear();
  pending_z_.clear();
  pending_sign_.clear();
}

template <class T>
void SequentialMemory<T>::check_rows(const T* w, const T* z, index_t n) const {
  check_dim(n, "W", "number of rows");
  check_allocation(8.0 * (3.0 * n * double(k_ + c_) + double(std::min(n, k_)) * std::min(n, k_) +
                          (4 * n < k_ ? 0.0 : 2.0 * double(k_) * k_)),
                   "W", "the float64 workspace of the update");
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
  // C += sum_i sign_i w_i^T w_i and B += sum_i sign_i w_i^T z_i (rows pre-scaled).
  std::vector<double> signed_w(pending_w_);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < k_; ++j) signed_w[i * k_ + j] *= pending_sign_[i];
  blas::gemm_parallel<double>(true, false, k_, k_, rows, 1.0, signed_w.data(), k_,
                              pending_w_.data(), k_, 1.0, gram_.data(), k_);
  blas::gemm_parallel<double>(true, false, k_, c_, rows, 1.0, signed_w.data(), k_,
                              pending_z_.data(), c_, 1.0, rhs_.data(), c_);
  pending_w_.clear();
  pending_z_.clear();
  pending_sign_.clear();
}

template <class T>
typename SequentialMemory<T>::State SequentialMemory<T>::state() const {
  // Folding pending rows changes how C and B are held, not their values: exclusive anyway.
  std::unique_lock<std::shared_mutex> lock(state_mutex_);
  fold_pending();
  return State{m_, gram_, rhs_, precision_};
}

template <class T>
void SequentialMemory<T>::set_state(const State& s) {
  require(s.memory.size() == static_cast<size_t>(k_ * c_), "memory", "expected K x C values");
  require(s.gram.size() == static_cast<size_t>(k_ * k_), "gram", "expected K x K values");
  require(s.rhs.size() == static_cast<size_t>(k_ * c_), "rhs", "expected K x C values");
  require(s.precision.size() == static_cast<size_t>(k_ * k_), "precision", "expected K x K values");
  check_finite(s.memory.data(), k_ * c_, "memory");
  check_finite(s.gram.data(), k_ * k_, "gram");
  check_finite(s.rhs.data(), k_ * c_, "rhs");
  check_finite(s.precision.data(), k_ * k_, "precision");
  std::unique_lock<std::shared_mutex> lock(state_mutex_);
  m_ = s.memory;
  gram_ = s.gram;
  rhs_ = s.rhs;
  precision_ = s.precision;
  pending_w_.clear();
  pending_z_.clear();
  pending_sign_.clear();
  invalidate();
}

template <class T>
void SequentialMemory<T>::write(const T* w, const T* z, index_t n) {
  check_rows(w, z, n);
  std::unique_lock<std::shared_mutex> lock(state_mutex_);
  State saved{std::move(m_), std::move(gram_), std::move(rhs_), std::move(precision_)};
  std::vector<double> pw, pz, ps;
  pw.swap(pending_w_);
  pz.swap(pending_z_);
  ps.swap(pending_sign_);
  try {
    reset_state();
    const std::vector<double> wd = convert<double>(w, n * k_), zd = convert<double>(z, n * c_);
    if (n < k_)
      write_underdetermined(wd, zd, n);
    else
      direct_update(wd, zd, n, 1.0);
  } catch (...) {
    m_.swap(saved.memory);
    gram_.swap(saved.gram);
    rhs_.swap(saved.rhs);
    precision_.swap(saved.precision);
    pending_w_.swap(pw);
    pending_z_.swap(pz);
    pending_sign_.swap(ps);
    throw;
  }
  invalidate();
}

// From the reset state, n < K rows in the n x n form, which keeps its digits where C
// (condition ~ |W|^2 / ridge) would not: G = W W^T + ridge I,
// M = M0 + W^T G^-1 (Z - W M0), P = (I - W^T G^-1 W) / ridge.
template <class T>
void SequentialMemory<T>::write_underdetermined(const std::vector<double>& wd,
                                                const std::vector<double>& zd, index_t n) {
  const index_t k = k_, c = c_;
  std::vector<double> g(n * n);
  blas::gemm_parallel<double>(false, true, n, n, k, 1.0, wd.data(), k, wd.data(), k, 0.0, g.data(),
                              n);
  for (index_t i = 0; i < n; ++i) g[i * n + i] += ridge_;
  // G >= ridge I exactly; rounding can still defeat a Cholesky when |W|^2 >> ridge.
  std::vector<double> y(zd);  // Z - W M0, then G^-1 (Z - W M0)
  blas::gemm_parallel<double>(false, false, n, c, k, -1.0, wd.data(), k, m_.data(), c, 1.0,
                              y.data(), c);
  std::vector<double> v(wd);  // G^-1 W
  std::vector<double> factor(g);
  Cholesky chol;
  if (chol.factor(factor, n)) {
    chol.solve(y.data(), c);
    chol.solve(v.data(), k);
  } else {
    const ClampedSolver solver(g, n, ridge_);
    solver.solve(y.data(), c);
    solver.solve(v.data(), k);
  }
  blas::gemm_parallel<double>(true, false, k, c, n, 1.0, wd.data(), k, y.data(), c, 1.0, m_.data(),
                              c);
  blas::gemm_parallel<double>(true, false, k, k, n, -1.0 / ridge_, wd.data(), k, v.data(), k, 1.0,
                              precision_.data(), k);
  blas::gemm_parallel<double>(true, false, k, k, n, 1.0, wd.data(), k, wd.data(), k, 1.0,
                              gram_.data(), k);
  blas::gemm_parallel<double>(true, false, k, c, n, 1.0, wd.data(), k, zd.data(), c, 1.0,
                              rhs_.data(), c);
}

// Woodbury: U = P W^T (K x n), S = I/alpha + W U (n x n), P' = P - U S^-1 U^T,
// M' = M + U S^-1 (Z - W M). Returns false, state untouched, when a forget would cancel
// S down below kWoodburyFloor of its scale.
template <class T>
bool SequentialMemory<T>::woodbury_update(const std::vector<double>& wd,
                                          const std::vector<double>& zd, index_t n, double alpha) {
  const index_t k = k_, c = c_;
  std::vector<double> u(k * n), s(n * n), v(n * k);
  blas::gemm_parallel<double>(false, true, k, n, k, 1.0, precision_.data(), k, wd.data(), k, 0.0,
                              u.data(), n);
  blas::gemm_parallel<double>(false, false, n, n, k, 1.0, wd.data(), k, u.data(), n, 0.0, s.data(),
                              n);
  for (index_t i = 0; i < n; ++i) s[i * n + i] += 1.0 / alpha;
  // S is positive definite for writes; for forgets -S must be, with room to spare.
  const double sign = alpha > 0 ? 1.0 : -1.0;
  for (double& x : s) x *= sign;
  std::vector<double> diag(n);
  for (index_t i = 0; i < n; ++i) diag[i] = s[i * n + i];
  Cholesky chol;
  if (!chol.factor(s, n)) return false;
  if (alpha < 0) {
    const double floor = kWoodburyFloor / std::abs(alpha);
    for (index_t i = 0; i < n; ++i)
      if (chol.pivot(i) * chol.pivot(i) < floor) return false;
  }
  std::vector<double> resid(zd);  // R = Z - W M, then S^-1 R
  blas::gemm_parallel<double>(false, false, n, c, k, -1.0, wd.data(), k, m_.data(), c, 1.0,
                              resid.data(), c);
  for (index_t i = 0; i < k; ++i)
    for (index_t j = 0; j < n; ++j) v[j * k + i] = sign * u[i * n + j];
  chol.solve(v.data(), k);  // V = S^-1 U^T
  for (double& x : resid) x *= sign;
  chol.solve(resid.data(), c);
  const double root = std::sqrt(std::abs(alpha));
  std::vector<double> sw(wd), sz(zd);
  for (double& x : sw) x *= root;
  for (double& x : sz) x *= root;
  if (pending_sign_.size() + n > std::max<std::size_t>(kPendingRows, n)) fold_pending();
  // Nothing below can fail: commit in place.
  blas::gemm_parallel<double>(false, false, k, k, n, -1.0, u.data(), n, v.data(), k, 1.0,
                              precision_.data(), k);
  blas::gemm_parallel<double>(false, false, k, c, n, 1.0, u.data(), n, resid.data(), c, 1.0,
                              m_.data(), c);
  pending_w_.insert(pending_w_.end(), sw.begin(), sw.end());
  pending_z_.insert(pending_z_.end(), sz.begin(), sz.end());
  pending_sign_.insert(pending_sign_.end(), n, sign);
  return true;
}

// C' = C + alpha W^T W, B' = B + alpha W^T Z, then M' = C'^-1 B' and P' = C'^-1 from one
// Cholesky: the batch solution itself, whatever came before.
template <class T>
void SequentialMemory<T>::direct_update(const std::vector<double>& wd,
                                        const std::vector<double>& zd, index_t n, double alpha) {
  const index_t k = k_, c = c_;
  fold_pending();
  std::vector<double> gram = gram_, rhs = rhs_;
  blas::gemm_parallel<double>(true, false, k, k, n, alpha, wd.data(), k, wd.data(), k, 1.0,
                              gram.data(), k);
  blas::gemm_parallel<double>(true, false, k, c, n, alpha, wd.data(), k, zd.data(), c, 1.0,
                              rhs.data(), c);
  std::vector<double> factor(gram);
  Cholesky chol;
  std::vector<double> m(rhs), precision(k * k, 0.0);
  if (chol.factor(factor, k)) {
    chol.solve(m.data(), c);
    for (index_t i = 0; i < k; ++i) precision[i * k + i] = 1.0;
    chol.solve(precision.data(), k);
  } else if (alpha > 0) {
    // Adding rows keeps C' >= ridge I exactly: only rounding failed the Cholesky.
    const ClampedSolver solver(gram, k, ridge_);
    solver.solve(m.data(), c);
    for (index_t i = 0; i < k; ++i) precision[i * k + i] = 1.0;
    solver.solve(precision.data(), k);
  } else {
    fail("W",
         "this update would leave the memory's covariance W^T W + ridge I not "
         "positive definite: forgotten rows are not stored in this memory");
  }
  m_.swap(m);
  gram_.swap(gram);
  rhs_.swap(rhs);
  precision_.swap(precision);
}

template <class T>
void SequentialMemory<T>::update(const T* w, const T* z, index_t n, double alpha) {
  check_scalar(alpha, "alpha", false, true);
  check_rows(w, z, n);
  std::unique_lock<std::shared_mutex> lock(state_mutex_);
  update_locked(w, z, n, alpha);
  invalidate();  // under the exclusive lock: no reader sees the old M^+ with the new M
}

template <class T>
void SequentialMemory<T>::update_locked(const T* w, const T* z, index_t n, double alpha) {
  const std::vector<double> wd = convert<double>(w, n * k_), zd = convert<double>(z, n * c_);
  if (4 * n < k_ && woodbury_update(wd, zd, n, alpha)) return;
  direct_update(wd, zd, n, alpha);
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
void SequentialMemory<T>::through_memory_pinv(const T* z, index_t n, const char* name, bool project,
                                              T* out) const {
  check_dim(n, name, "number of rows");
  check_finite(z, n * c_, name);
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  const LowRankPinv<T>& pinv = memory_pinv();
  if (project) {
    pinv.project(z, n, out);
  } else {
    pinv.apply(z, n, out);
  }
  check_result(out, n * (project ? c_ : k_), name);
}

template <class T>
void SequentialMemory<T>::address(const T* z, index_t n, T* w) const {
  through_memory_pinv(z, n, "Z", false, w);
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
  through_memory_pinv(z, n, "Zq", true, out);
}

template <class T>
void SequentialMemory<T>::copy_memory(T* out) const {
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  std::copy(m_.begin(), m_.end(), out);
}

template class SequentialMemory<float>;
template class SequentialMemory<double>;

}  // namespace larimar
