// Pseudo-inverse of a memory or prior R (K x C) in factored form, for addressing
// W = Z R^+ (docs/DESIGN.md section 2.3).
#pragma once

#include <vector>

#include "larimar/common.hpp"
#include "larimar/linalg.hpp"

namespace larimar {

// R^+ with singular values below rcond * s_max dropped (numpy.linalg.pinv's cutoff), in
// factored form. A pivoted Cholesky of R R^T (float64) picks q rows spanning R's row space
// to the storage precision, a thin QR of them gives an orthonormal basis Q_c, the SVD of
// the small U = R Q_c (K x q) gives R's left singular vectors and values, and one product
// R^T Uu gives the right ones. Cost O(q K C) for a memory of rank q instead of an SVD's
// O(K C min(K, C)): a Larimar memory written from N rows has rank N << K. Stored as
// left (C x r) and right (r x K) in T, so W = (Z left) right.
template <class T>
class LowRankPinv {
 public:
  LowRankPinv() = default;
  // rcond < 0: default max(K, C) * eps(T). dense: on the full-row-rank route, form R^+
  // (an address is then one product: PreparedPinv's many calls of few rows); else keep the
  // Cholesky factor of R R^T (below).
  LowRankPinv(const T* r, index_t k, index_t c, double rcond = -1, bool dense = false);

  // W (n x K) = Z (n x C) R^+.
  void apply(const T* z, index_t n, T* w) const;
  // out (n x C) = Z R^+ R = Z Q Q^T, the projection on R's row space.
  void project(const T* z, index_t n, T* out) const;
  // out (C x K) = R^+.
  void matrix(T* out) const;
  index_t rank() const { return rank_; }
  index_t rows() const { return k_; }
  index_t cols() const { return c_; }
  bool empty() const { return k_ == 0; }

 private:
  // The fast route for a well-conditioned R of full row rank (K <= C): a Cholesky of
  // G = R R^T, kept as the factor with R, so that W = Z R^+ = (Z R^T) G^-1 (N K C + N K^2
  // where forming R^+ = R^T G^-1 first would cost K^2 C more, and one query needs no
  // C-wide solve at all); or, dense, R^+ formed. The batched ops and the sequential
  // memory's prior keep the factor, so a memory's default W for Z is pinv_address's to the
  // bit (the rows a forget names are the rows stored). False, leaving this object
  // untouched, when R does not qualify.
  bool full_row_rank(const T* r, double rcond, bool dense);
  // W (n x K) <- W G^-1 in place, on the factor route (in float32 where it is accurate).
  void solve_gram(T* w, index_t n) const;

  index_t k_ = 0, c_ = 0, rank_ = 0;
  std::vector<T> left_;   // C x r
  std::vector<T> right_;  // r x K
  std::vector<T> basis_;  // C x r, orthonormal basis Q of R's row space
  // The full-row-rank route, else empty: (R^+)^T = G^-1 R (K x C) when dense, the solve's
  // own layout (the products read it transposed); else G's factor and whether its solves
  // run in float32; and R (K x C), for Z R^T and the projection Z R^+ R.
  std::vector<T> dense_pinv_t_;
  Cholesky gram_;
  bool float_solve_ = false;
  std::vector<T> dense_r_;
};

// A prior's pseudo-inverse prepared once for the addresses of many calls (an inference
// caller's W = Z M0^+): the batched ops' argument checks around one dense LowRankPinv
// (its addresses agree with pinv_address's to rounding, not to the bit).
template <class T>
class PreparedPinv {
 public:
  // R (K x C); rcond < 0: the default cutoff.
  PreparedPinv(const T* r, index_t k, index_t c, double rcond);
  // W (n x K) = Z (n x C) R^+.
  void address(const T* z, index_t n, T* w) const;
  // out (n x C) = (Z R^+) R.
  void project(const T* z, index_t n, T* out) const;
  // out (C x K) = R^+.
  void matrix(T* out) const { pinv_.matrix(out); }
  index_t rank() const { return pinv_.rank(); }
  index_t rows() const { return pinv_.rows(); }
  index_t cols() const { return pinv_.cols(); }

 private:
  LowRankPinv<T> pinv_;
};

// Larimar's read z = (Zq M^+) M, per episode, as the projection Zq Q Q^T of the queries on
// M's row space: no pass over M beyond finding Q. Zq (B x N x C), M (B x K x C).
template <class T>
void pinv_read(const T* z, const T* m, T* out, index_t batch, index_t n, index_t k, index_t c,
               double rcond);

// W (B x N x K) = Z (B x N x C) R^+ per episode, R (B x K x C).
template <class T>
void pinv_address(const T* z, const T* r, T* w, index_t batch, index_t n, index_t k, index_t c,
                  double rcond);

}  // namespace larimar
