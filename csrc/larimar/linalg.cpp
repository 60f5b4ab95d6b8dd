#include "larimar/linalg.hpp"

#include <omp.h>

#include <algorithm>
#include <cstring>

#ifndef LARIMAR_BLAS_PREFIX
#define LARIMAR_BLAS_PREFIX
#endif
#define LARIMAR_CAT2(a, b) a##b
#define LARIMAR_CAT(a, b) LARIMAR_CAT2(a, b)
#define BLAS_SYMBOL(name) LARIMAR_CAT(LARIMAR_BLAS_PREFIX, name)

extern "C" {
void BLAS_SYMBOL(sgemm_)(const char*, const char*, const int*, const int*, const int*, const float*,
                         const float*, const int*, const float*, const int*, const float*, float*,
                         const int*);
void BLAS_SYMBOL(dgemm_)(const char*, const char*, const int*, const int*, const int*,
                         const double*, const double*, const int*, const double*, const int*,
                         const double*, double*, const int*);
void BLAS_SYMBOL(sgemv_)(const char*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);
void BLAS_SYMBOL(dgemv_)(const char*, const int*, const int*, const double*, const double*,
                         const int*, const double*, const int*, const double*, double*, const int*);
void BLAS_SYMBOL(strsm_)(const char*, const char*, const char*, const char*, const int*, const int*,
                         const float*, const float*, const int*, float*, const int*);
void BLAS_SYMBOL(dtrsm_)(const char*, const char*, const char*, const char*, const int*, const int*,
                         const double*, const double*, const int*, double*, const int*);
void BLAS_SYMBOL(dpotrf_)(const char*, const int*, double*, const int*, int*);
void BLAS_SYMBOL(dpocon_)(const char*, const int*, const double*, const int*, const double*,
                          double*, double*, int*, int*);
void BLAS_SYMBOL(dgeqrf_)(const int*, const int*, double*, const int*, double*, double*, const int*,
                          int*);
void BLAS_SYMBOL(dorgqr_)(const int*, const int*, const int*, double*, const int*, const double*,
                          double*, const int*, int*);
void BLAS_SYMBOL(dgesdd_)(const char*, const int*, const int*, double*, const int*, double*,
                          double*, const int*, double*, const int*, double*, const int*, int*,
                          int*);
void BLAS_SYMBOL(dsyevd_)(const char*, const char*, const int*, double*, const int*, double*,
                          double*, const int*, int*, const int*, int*);
void BLAS_SYMBOL(openblas_set_num_threads)(int);
int BLAS_SYMBOL(openblas_get_num_threads)(void);
char* BLAS_SYMBOL(openblas_get_config)(void);
char* BLAS_SYMBOL(openblas_get_corename)(void);
}

namespace larimar {
namespace {
int as_int(index_t v) { return static_cast<int>(v); }

// fn(lo, hi) on 2 x threads panels [lo, hi) of [0, extent) whose cost grows with hi (the
// panels of a triangle), thread t taking panels t and P - 1 - t so that every thread gets
// the same share; one thread when team is 1.
template <class Fn>
void for_triangle_panels(index_t extent, int threads, int team, Fn&& fn) {
  const index_t panels = std::max<index_t>(1, std::min<index_t>(2 * threads, extent / 32));
  const index_t step = (extent + panels - 1) / panels, pairs = (panels + 1) / 2;
  auto panel = [&](index_t p) {
    const index_t lo = std::min(extent, p * step), hi = std::min(extent, lo + step);
    if (hi > lo) fn(lo, hi);
  };
#pragma omp parallel for num_threads(static_cast<int>(std::min<index_t>(team, pairs))) \
    schedule(static)
  for (index_t t = 0; t < pairs; ++t) {
    panel(t);
    if (panels - 1 - t != t) panel(panels - 1 - t);
  }
}

// Thin SVD of the column-major m x n matrix a (overwritten): u (m x p, leading dimension m)
// and vt (p x n, leading dimension p) for p = min(m, n), both column-major.
void thin_gesdd(int m, int n, double* a, double* s, double* u, double* vt) {
  const int p = std::min(m, n);
  const char jobz = 'S';
  std::vector<int> iwork(8 * static_cast<std::size_t>(p));
  int info = 0, lwork = -1;
  double query = 0;
  BLAS_SYMBOL(dgesdd_)(&jobz, &m, &n, a, &m, s, u, &m, vt, &p, &query, &lwork, iwork.data(), &info);
  lwork = std::max(1, static_cast<int>(query));
  std::vector<double> work(lwork);
  BLAS_SYMBOL(dgesdd_)(&jobz, &m, &n, a, &m, s, u, &m, vt, &p, work.data(), &lwork, iwork.data(),
                       &info);
  if (info != 0)
    throw NumericalError("SVD did not converge (dgesdd info " + std::to_string(info) + ")");
}
}  // namespace

namespace blas {

std::string vendor() {
  return std::string(BLAS_SYMBOL(openblas_get_config)()) +
         " core=" + BLAS_SYMBOL(openblas_get_corename)();
}
int threads() { return BLAS_SYMBOL(openblas_get_num_threads)(); }
void set_threads(int n) { BLAS_SYMBOL(openblas_set_num_threads)(n); }

// The Fortran routine of each precision, overloaded so that one template serves both.
void xgemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
           const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
           const float* beta, float* c, const int* ldc) {
  BLAS_SYMBOL(sgemm_)(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void xgemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
           const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
           const double* beta, double* c, const int* ldc) {
  BLAS_SYMBOL(dgemm_)(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void xgemv(const char* t, const int* m, const int* n, const float* alpha, const float* a,
           const int* lda, const float* x, const int* incx, const float* beta, float* y,
           const int* incy) {
  BLAS_SYMBOL(sgemv_)(t, m, n, alpha, a, lda, x, incx, beta, y, incy);
}
void xgemv(const char* t, const int* m, const int* n, const double* alpha, const double* a,
           const int* lda, const double* x, const int* incx, const double* beta, double* y,
           const int* incy) {
  BLAS_SYMBOL(dgemv_)(t, m, n, alpha, a, lda, x, incx, beta, y, incy);
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
template <class T>
void gemm(bool ta, bool tb, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda,
          const T* b, index_t ldb, T beta, T* c, index_t ldc) {
  if (m == 0 || n == 0) return;
  const char tra = ta ? 'T' : 'N', trb = tb ? 'T' : 'N';
  const int M = as_int(m), N = as_int(n), K = as_int(k), LDA = as_int(lda), LDB = as_int(ldb),
            LDC = as_int(ldc);
  xgemm(&trb, &tra, &N, &M, &K, &alpha, b, &LDB, a, &LDA, &beta, c, &LDC);
}
template void gemm<float>(bool, bool, index_t, index_t, index_t, float, const float*, index_t,
                          const float*, index_t, float, float*, index_t);
template void gemm<double>(bool, bool, index_t, index_t, index_t, double, const double*, index_t,
                           const double*, index_t, double, double*, index_t);

template <class T>
void gemm_parallel(bool ta, bool tb, index_t m, index_t n, index_t k, T alpha, const T* a,
                   index_t lda, const T* b, index_t ldb, T beta, T* c, index_t ldc) {
  const int threads = num_threads();
  // Below ~4 MFLOP a second thread costs more than it saves.
  if (threads <= 1 || omp_in_parallel() || m * n * k < (index_t(1) << 21)) {
    gemm<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Split the larger output dimension; op(A) rows are A's rows (or columns when
  // transposed), op(B) columns likewise.
  const bool split_rows = m >= n;
  const index_t extent = split_rows ? m : n;
  for_blocks(extent, std::min<index_t>(threads, (extent + 63) / 64), [&](index_t lo, index_t len) {
    if (split_rows)
      gemm<T>(ta, tb, len, n, k, alpha, ta ? a + lo : a + lo * lda, lda, b, ldb, beta, c + lo * ldc,
              ldc);
    else
      gemm<T>(ta, tb, m, len, k, alpha, a, lda, tb ? b + lo * ldb : b + lo, ldb, beta, c + lo, ldc);
  });
}
template void gemm_parallel<float>(bool, bool, index_t, index_t, index_t, float, const float*,
                                   index_t, const float*, index_t, float, float*, index_t);
template void gemm_parallel<double>(bool, bool, index_t, index_t, index_t, double, const double*,
                                    index_t, const double*, index_t, double, double*, index_t);

void gram(const double* x, index_t rows, index_t cols, double* g) {
  // The lower triangle by row panels, each one GEMM: G[lo:hi, :hi] = X[lo:hi] X[:hi]^T.
  // OpenBLAS's dsyrk runs at about 60% of its dgemm's rate here; P panels of GEMMs do
  // (P + 1) / 2P of a GEMM's work at the GEMM's rate, balanced over the threads.
  const int threads = omp_in_parallel() ? 1 : num_threads();
  const bool split = rows * rows * cols >= (index_t(1) << 22);
  for_triangle_panels(rows, threads, split ? threads : 1, [&](index_t lo, index_t hi) {
    gemm<double>(false, true, hi - lo, hi, cols, 1.0, x + lo * cols, cols, x, cols, 0.0,
                 g + lo * rows, rows);
  });
  constexpr index_t kTile = 32;  // the upper triangle mirrored in cache-sized tiles
  for (index_t i0 = 0; i0 < rows; i0 += kTile)
    for (index_t j0 = i0; j0 < rows; j0 += kTile)
      for (index_t i = i0; i < std::min(rows, i0 + kTile); ++i)
        for (index_t j = std::max(j0, i + 1); j < std::min(rows, j0 + kTile); ++j)
          g[i * rows + j] = g[j * rows + i];
}

// Row-major A (rows x cols) is column-major A^T: flip the transpose flag.
template <class T>
void gemv(bool trans, index_t rows, index_t cols, T alpha, const T* a, index_t lda, const T* x,
          T beta, T* y) {
  const char t = trans ? 'N' : 'T';
  const int M = as_int(cols), N = as_int(rows), LDA = as_int(lda), one = 1;
  xgemv(&t, &M, &N, &alpha, a, &LDA, x, &one, &beta, y, &one);
}
template void gemv<float>(bool, index_t, index_t, float, const float*, index_t, const float*, float,
                          float*);
template void gemv<double>(bool, index_t, index_t, double, const double*, index_t, const double*,
                           double, double*);

}  // namespace blas

namespace {

// The upper Cholesky factor (column-major) of the n x n matrix a, lda n, in place: blocks
// of kBlock columns, each factored by dpotrf, its row panel solved and the trailing matrix
// updated by GEMMs split over the kernel's threads. OpenBLAS's dpotrf runs on one thread
// (the BLAS is single-threaded, common.hpp) at a third of its GEMM's rate here. The
// updates also write below the diagonal, which no reader of the factor looks at. Returns
// dpotrf's info (0: positive definite).
int blocked_potrf(double* a, index_t n) {
  const char uplo = 'U', left = 'L', trans = 'T', notrans = 'N', nonunit = 'N';
  const int threads = omp_in_parallel() ? 1 : num_threads();
  constexpr index_t kBlock = 192;
  const int lda = as_int(n);
  if (threads <= 1 || n < 2 * kBlock) {
    const int N = as_int(n);
    int info = 0;
    BLAS_SYMBOL(dpotrf_)(&uplo, &N, a, &lda, &info);
    return info;
  }
  for (index_t j0 = 0; j0 < n; j0 += kBlock) {
    const index_t jb = std::min(kBlock, n - j0), rest = n - j0 - jb;
    double* a11 = a + j0 + j0 * n;
    const int JB = as_int(jb);
    int info = 0;
    BLAS_SYMBOL(dpotrf_)(&uplo, &JB, a11, &lda, &info);
    if (info != 0) return as_int(j0) + info;
    if (rest == 0) break;
    double* a12 = a + j0 + (j0 + jb) * n;  // jb x rest: U12 = U11^-T A12
    double* a22 = a + (j0 + jb) + (j0 + jb) * n;
    const double one = 1.0, minus_one = -1.0;
    for_blocks(rest, threads, [&](index_t lo, index_t len) {
      const int L = as_int(len);
      BLAS_SYMBOL(dtrsm_)(&left, &uplo, &trans, &nonunit, &JB, &L, &one, a11, &lda, a12 + lo * n,
                          &lda);
    });
    // Upper triangle of A22 -= U12^T U12 by column panels [lo, hi), rows [0, hi)
    for_triangle_panels(rest, threads, threads, [&](index_t lo, index_t hi) {
      const int M = as_int(hi), W = as_int(hi - lo);
      BLAS_SYMBOL(dgemm_)(&trans, &notrans, &M, &W, &JB, &minus_one, a12, &lda, a12 + lo * n, &lda,
                          &one, a22 + lo * n, &lda);
    });
  }
  return 0;
}

}  // namespace

// The row-major symmetric matrix is its own column-major image; 'U' in column-major is the
// upper triangle of the column-major view. We factor A = U^T U (column-major upper).
bool Cholesky::factor(std::vector<double>& a, index_t n) {
  n_ = n;
  factor32_.clear();
  norm1_ = 0;  // symmetric: the largest row sum is the largest column sum, read contiguously
  for (index_t i = 0; i < n; ++i) {
    double s = 0;
    for (index_t j = 0; j < n; ++j) s += std::abs(a[i * n + j]);
    norm1_ = std::max(norm1_, s);
  }
  factor_.swap(a);
  return blocked_potrf(factor_.data(), n) == 0;
}

double Cholesky::rcond() const {
  const char uplo = 'U';
  const int N = as_int(n_);
  double rc = 0;
  std::vector<double> work(3 * n_);
  std::vector<int> iwork(n_);
  int info = 0;
  BLAS_SYMBOL(dpocon_)(&uplo, &N, factor_.data(), &N, &norm1_, &rc, work.data(), iwork.data(),
                       &info);
  return info == 0 ? rc : 0.0;
}

namespace {
void xtrsm(const char* side, const char* uplo, const char* trans, const char* diag, const int* m,
           const int* n, const double* alpha, const double* a, const int* lda, double* b,
           const int* ldb) {
  BLAS_SYMBOL(dtrsm_)(side, uplo, trans, diag, m, n, alpha, a, lda, b, ldb);
}
void xtrsm(const char* side, const char* uplo, const char* trans, const char* diag, const int* m,
           const int* n, const float* alpha, const float* a, const int* lda, float* b,
           const int* ldb) {
  BLAS_SYMBOL(strsm_)(side, uplo, trans, diag, m, n, alpha, a, lda, b, ldb);
}

// A^-1 applied to the independent vectors of a row-major matrix, count of them split over
// the kernel's threads (at least 64 each). Columns (B, n x count): row-major B is
// column-major B^T, and A^-1 B in row-major is B^T A^-1 = B^T U^-1 U^-T in column-major,
// two right-side triangular solves. Rows (Y, count x n): row-major Y is column-major Y^T,
// and Y A^-1 in row-major is A^-1 Y^T = U^-1 U^-T Y^T (A symmetric), two left-side ones.
template <class T>
void cholesky_solve(const T* factor, index_t n, T* b, index_t count, bool rows) {
  const int N = as_int(n), ld = rows ? N : as_int(count);
  const T one = 1;
  const char side = rows ? 'L' : 'R', upper = 'U', nonunit = 'N';
  const char first = rows ? 'T' : 'N', second = rows ? 'N' : 'T';
  const int threads = omp_in_parallel() || n < 128 ? 1 : num_threads();
  for_blocks(count, std::max<index_t>(1, std::min<index_t>(threads, count / 64)),
             [&](index_t lo, index_t len) {
               const int L = as_int(len);
               T* block = rows ? b + lo * n : b + lo;
               const int &m = rows ? N : L, &cols = rows ? L : N;
               xtrsm(&side, &upper, &first, &nonunit, &m, &cols, &one, factor, &N, block, &ld);
               xtrsm(&side, &upper, &second, &nonunit, &m, &cols, &one, factor, &N, block, &ld);
             });
}
}  // namespace

void Cholesky::solve(double* b, index_t nrhs) const {
  cholesky_solve(factor_.data(), n_, b, nrhs, false);
}

void Cholesky::solve_rows(double* y, index_t n) const {
  cholesky_solve(factor_.data(), n_, y, n, true);
}

const float* Cholesky::factor32(std::vector<float>& scratch) const {
  if (!factor32_.empty()) return factor32_.data();
  scratch.assign(factor_.begin(), factor_.end());
  return scratch.data();
}

void Cholesky::solve_rows(float* y, index_t n) const {
  std::vector<float> scratch;
  cholesky_solve(factor32(scratch), n_, y, n, true);
}

void Cholesky::solve(float* b, index_t nrhs) const {
  std::vector<float> scratch;
  cholesky_solve(factor32(scratch), n_, b, nrhs, false);
}

void thin_qr(const double* a, index_t rows, index_t cols, std::vector<double>& q,
             std::vector<double>& r) {
  // Column-major copy of A for LAPACK.
  std::vector<double> qc(rows * cols);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) qc[j * rows + i] = a[i * cols + j];
  const int M = as_int(rows), N = as_int(cols);
  std::vector<double> tau(cols);
  int info = 0, lwork = -1;
  double query = 0;
  BLAS_SYMBOL(dgeqrf_)(&M, &N, qc.data(), &M, tau.data(), &query, &lwork, &info);
  lwork = std::max(1, static_cast<int>(query));
  std::vector<double> work(lwork);
  BLAS_SYMBOL(dgeqrf_)(&M, &N, qc.data(), &M, tau.data(), work.data(), &lwork, &info);
  if (info != 0)
    throw NumericalError("QR factorisation failed (dgeqrf info " + std::to_string(info) + ")");
  r.assign(cols * cols, 0.0);
  for (index_t i = 0; i < cols; ++i)
    for (index_t j = i; j < cols; ++j) r[i * cols + j] = qc[j * rows + i];
  lwork = -1;
  BLAS_SYMBOL(dorgqr_)(&M, &N, &N, qc.data(), &M, tau.data(), &query, &lwork, &info);
  lwork = std::max(1, static_cast<int>(query));
  work.resize(lwork);
  BLAS_SYMBOL(dorgqr_)(&M, &N, &N, qc.data(), &M, tau.data(), work.data(), &lwork, &info);
  if (info != 0)
    throw NumericalError("QR factorisation failed (dorgqr info " + std::to_string(info) + ")");
  q.resize(rows * cols);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j) q[i * cols + j] = qc[j * rows + i];
}

// Column-major, the row-major upper R reads as the lower L = R^T and X as X^T:
// X R^-1 = (L^-1 X^T)^T, a left solve.
void solve_upper_right(const double* r, index_t n, double* x, index_t rows) {
  const int N = as_int(n), M = as_int(rows);
  const double one = 1.0;
  const char left = 'L', lower = 'L', notrans = 'N', nonunit = 'N';
  BLAS_SYMBOL(dtrsm_)(&left, &lower, &notrans, &nonunit, &N, &M, &one, r, &N, x, &N);
}

void symmetric_eigen(const double* a, index_t n, std::vector<double>& w, std::vector<double>& v) {
  // Symmetric: the row-major buffer is its own column-major image. dsyevd returns the
  // eigenvectors as columns of the column-major result, i.e. rows of the row-major one.
  std::vector<double> vc(a, a + n * n);
  w.resize(n);
  const int N = as_int(n);
  const char jobz = 'V', uplo = 'U';
  int info = 0, lwork = -1, liwork = -1, iquery = 0;
  double query = 0;
  BLAS_SYMBOL(dsyevd_)(&jobz, &uplo, &N, vc.data(), &N, w.data(), &query, &lwork, &iquery, &liwork,
                       &info);
  lwork = std::max(1, static_cast<int>(query));
  liwork = std::max(1, iquery);
  std::vector<double> work(lwork);
  std::vector<int> iwork(liwork);
  BLAS_SYMBOL(dsyevd_)(&jobz, &uplo, &N, vc.data(), &N, w.data(), work.data(), &lwork, iwork.data(),
                       &liwork, &info);
  if (info != 0)
    throw NumericalError("eigendecomposition failed (dsyevd info " + std::to_string(info) + ")");
  v.resize(n * n);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) v[i * n + j] = vc[j * n + i];
}

void thin_svd(const double* a, index_t rows, index_t cols, std::vector<double>& u,
              std::vector<double>& s, std::vector<double>& vt) {
  // Row-major A is column-major At (cols x rows) = Uc S Vc^T, so A = Vc S Uc^T: the
  // column-major Vc^T (p x rows) read row-major is U (rows x p), and Uc (cols x p)
  // read row-major is Vt (p x cols).
  const index_t p = std::min(rows, cols);
  std::vector<double> at(a, a + rows * cols);
  s.resize(p);
  u.resize(rows * p);
  vt.resize(p * cols);
  thin_gesdd(as_int(cols), as_int(rows), at.data(), s.data(), vt.data(), u.data());
}

std::vector<double> svd_solve(const double* a, index_t rows, index_t cols, const double* b,
                              index_t nrhs, double ridge, double rcond) {
  // Row-major A (rows x cols) is column-major At (cols x rows) = U S V^T, so A = V S U^T
  // and A^+ = U S^+ V^T with U (cols x p), V (rows x p).
  const index_t p = std::min(rows, cols);
  std::vector<double> at(a, a + rows * cols), s(p), u(cols * p), vt(p * rows);
  thin_gesdd(as_int(cols), as_int(rows), at.data(), s.data(), u.data(), vt.data());
  // Column-major u (cols x p) is row-major u^T (p x cols); column-major vt (p x rows) is
  // row-major V (rows x p). X = U diag(f(s)) V^T B.
  std::vector<double> vtb(p * nrhs);
  blas::gemm<double>(true, false, p, nrhs, rows, 1.0, vt.data(), p, b, nrhs, 0.0, vtb.data(), nrhs);
  const double cutoff = rcond * s[0];
  for (index_t i = 0; i < p; ++i) {
    double f = 0;
    if (ridge > 0)
      f = s[i] / (s[i] * s[i] + ridge);
    else if (s[i] > cutoff && s[i] > 0)
      f = 1.0 / s[i];
    for (index_t j = 0; j < nrhs; ++j) vtb[i * nrhs + j] *= f;
  }
  std::vector<double> x(cols * nrhs);
  blas::gemm<double>(true, false, cols, nrhs, p, 1.0, u.data(), cols, vtb.data(), nrhs, 0.0,
                     x.data(), nrhs);
  return x;
}

}  // namespace larimar
