// Thin row-major wrappers over the Fortran BLAS/LAPACK symbols, plus the small dense
// factorisations (Cholesky, QR, SVD) the memory ops share. Factorisations run in double:
// a float32 memory is stored in float32, but its Gram matrices are solved in float64.
#pragma once

#include <type_traits>
#include <vector>

#include "larimar/common.hpp"

namespace larimar {
namespace blas {

std::string vendor();  // "OpenBLAS 0.3.x ..." as reported by the library
int threads();
void set_threads(int n);

// C(m x n) = alpha * op(A) op(B) + beta * C, all row-major with leading dimensions.
template <class T>
void gemm(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a,
          index_t lda, const T* b, index_t ldb, T beta, T* c, index_t ldc);

// gemm split into row or column blocks over the kernel's OpenMP threads when it is large
// enough to pay for them; plain gemm otherwise (and inside parallel regions).
template <class T>
void gemm_parallel(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a,
                   index_t lda, const T* b, index_t ldb, T beta, T* c, index_t ldc);

// G (rows x rows, row-major, both triangles) = X X^T for X row-major (rows x cols): the
// lower triangle by GEMMs of row panels, split over the kernel's threads when large.
void gram(const double* x, index_t rows, index_t cols, double* g);

// y(m) = alpha * op(A) x + beta * y, A row-major (rows x cols).
template <class T>
void gemv(bool trans, index_t rows, index_t cols, T alpha, const T* a, index_t lda, const T* x,
          T beta, T* y);

}  // namespace blas

// Cholesky factor of a symmetric positive definite n x n matrix (row-major, overwritten).
// Smallest Gram reciprocal condition for which a Cholesky answer is as good as the SVD's in
// the storage precision T: a Gram squares its matrix's condition number.
template <class T>
double cholesky_rcond_floor() {
  return std::is_same<T, float>::value ? 1e-8 : 1e-6;
}

class Cholesky {
 public:
  // Returns false when the matrix is not numerically positive definite.
  bool factor(std::vector<double>& a, index_t n);
  // Reciprocal condition estimate of the factored matrix (LAPACK dpocon), in [0, 1].
  double rcond() const;
  // B (n x nrhs, row-major) <- A^-1 B, wide B split over the kernel's threads.
  void solve(double* b, index_t nrhs) const;
  // The same in float32 with the factor rounded to float32: twice the speed, and a relative
  // error of about cond(A)^(1/2) * eps32 (the factor's condition), not eps64's.
  void solve(float* b, index_t nrhs) const;
  // Y (n x K, row-major) <- Y A^-1: the solve from the right, many rows split over the
  // kernel's threads; the float32 one as solve's.
  void solve_rows(double* y, index_t n) const;
  void solve_rows(float* y, index_t n) const;
  // Keeps the factor rounded to float32 for the float32 solves, which otherwise round it
  // on every call (K^2: a few times a one-query address's own work).
  void keep_float32() { factor32_.assign(factor_.begin(), factor_.end()); }
  bool empty() const { return n_ == 0; }
  // i-th diagonal entry of the factor (A = U^T U): its square is the i-th pivot.
  double pivot(index_t i) const { return factor_[i * n_ + i]; }

 private:
  // The float32 factor: factor32_ when kept, else rounded into scratch for this call.
  const float* factor32(std::vector<float>& scratch) const;
  std::vector<double> factor_;
  std::vector<float> factor32_;
  index_t n_ = 0;
  double norm1_ = 0;
};

// Thin QR of a tall matrix A (rows x cols, rows >= cols, row-major): A = Q R with Q
// (rows x cols) orthonormal columns, R (cols x cols) upper triangular.
void thin_qr(const double* a, index_t rows, index_t cols, std::vector<double>& q,
             std::vector<double>& r);

// X (rows x n) <- X R^-1 for an upper triangular R (n x n), both row-major.
void solve_upper_right(const double* r, index_t n, double* x, index_t rows);

// Eigendecomposition of a symmetric n x n matrix (row-major): A = V diag(w) V^T, w ascending,
// V's columns the eigenvectors (row-major n x n).
void symmetric_eigen(const double* a, index_t n, std::vector<double>& w, std::vector<double>& v);

// Thin SVD of A (rows x cols, row-major): A = U diag(s) V^T with U (rows x p), s (p,
// descending), Vt (p x cols), p = min(rows, cols), all row-major.
void thin_svd(const double* a, index_t rows, index_t cols, std::vector<double>& u,
              std::vector<double>& s, std::vector<double>& vt);

// Pseudo-inverse solve through the SVD: returns X = A^+ B (cols x nrhs) with singular
// values below rcond * s_max dropped, or the ridge solution when ridge > 0.
std::vector<double> svd_solve(const double* a, index_t rows, index_t cols, const double* b,
                              index_t nrhs, double ridge, double rcond);

}  // namespace larimar
