#include "larimar/address.hpp"

#include <algorithm>
#include <cstdio>

#include "larimar/linalg.hpp"
#include "larimar/topk.hpp"

namespace larimar {

void check_alpha(double alpha) {
  if (std::isfinite(alpha) && alpha > 0) return;
  char got[32];  // %g: "-1", "0", "nan", "1e-300" (std::to_string would print 0.000000)
  std::snprintf(got, sizeof got, "%g", alpha);
  fail("alpha", std::string("expected a finite number > 0, got ") + got);
}

void check_hard_read_k(index_t k) {
  require(k == 1, "alpha", "a read over k > 1 keys needs Gaussian weights: give alpha > 0");
}

namespace {

// Weights of one row from its squared distances (any order): see gaussian_address.
template <class T>
void gaussian_row(const T* d2, index_t k, double alpha, T* w) {
  double s2 = d2[0];
  for (index_t j = 1; j < k; ++j) s2 = std::min<double>(s2, d2[j]);
  double total = 0;
  if (s2 <= 0) {  // coincides with a key: the alpha -> 0 limit, split over exact matches
    for (index_t j = 0; j < k; ++j) total += (w[j] = d2[j] <= 0 ? T(1) : T(0));
  } else {
    // Subtracting s^2 keeps the largest weight at exp(0) = 1: no underflow of all weights.
    // A tiny alpha makes scale infinite: the nearest keys keep weight 1 (not 0 * inf), the
    // others get exp(-inf) = 0, the one-hot limit.
    const double scale = 1.0 / (2.0 * alpha * s2);
    for (index_t j = 0; j < k; ++j)
      total += (w[j] = d2[j] <= s2 ? T(1) : static_cast<T>(std::exp(-(d2[j] - s2) * scale)));
  }
  const T inv = static_cast<T>(1.0 / total);
  for (index_t j = 0; j < k; ++j) w[j] *= inv;
}

}  // namespace

template <class T>
void gaussian_address(const T* z, const T* r, index_t n, index_t k, index_t c, double alpha, T* w) {
  check_dim(n, "Z", "number of rows N");
  check_dim(k, "R", "number of keys K");
  check_dim(c, "Z", "code size C");
  check_alpha(alpha);
  check_finite(z, n * c, "Z");
  check_finite(r, k * c, "R");
  std::vector<T> z_sq(n), r_sq(k);
  row_sq_norms(z, n, c, z_sq.data());
  row_sq_norms(r, k, c, r_sq.data());
  // |z - R_k|^2 = |z|^2 + |R_k|^2 - 2 z.R_k, one GEMM for all pairs.
  blas::gemm_parallel<T>(false, true, n, k, c, T(-2), z, c, r, c, T(0), w, k);
  parallel_for(n, [&](index_t i) {
    T* row = w + i * k;
    for (index_t j = 0; j < k; ++j) row[j] = std::max(T(0), row[j] + z_sq[i] + r_sq[j]);
    std::vector<T> d2(row, row + k);
    gaussian_row(d2.data(), k, alpha, row);
  });
  check_result(w, n * k, "Z, R");
}

template <class T>
void gaussian_weights_from_sq_distances(T* d2, index_t n, index_t k, double alpha) {
  check_alpha(alpha);
  std::vector<T> row(k);
  for (index_t i = 0; i < n; ++i) {
    std::copy(d2 + i * k, d2 + (i + 1) * k, row.begin());
    gaussian_row(row.data(), k, alpha, d2 + i * k);
  }
}

template <class T>
void gaussian_weights_from_scores(T* scores, index_t n, index_t k, Metric metric, const T* q_sq,
                                  const T* key_sq, double alpha) {
  for (index_t i = 0; i < n * k; ++i) {
    T& s = scores[i];
    if (metric == Metric::L2)
      s = -s;
    else if (metric == Metric::Cosine)
      s = std::max(T(0), T(2) - T(2) * s);
    else
      s = std::max(T(0), q_sq[i / k] + key_sq[i] - T(2) * s);
  }
  gaussian_weights_from_sq_distances(scores, n, k, alpha);
}

template <class T>
void weighted_sum_of_rows(const T* w, const T* const* rows, index_t n, index_t k, index_t c,
                          T* out) {
  std::fill(out, out + n * c, T(0));
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < k; ++j) {
      const T wij = w[i * k + j];
      const T* row = rows[i * k + j];
      T* o = out + i * c;
      for (index_t t = 0; t < c; ++t) o[t] += wij * row[t];
    }
}

template <class T>
void gaussian_read_scored(const T* scores, const T* values, index_t n, index_t k, index_t c,
                          Metric metric, const T* queries, index_t d, const T* key_sq, double alpha,
                          T* out) {
  check_dim(n, "scores", "number of rows");
  check_dim(k, "scores", "number of candidates per row");
  check_dim(c, "values", "value dimension");
  check_alpha(alpha);
  check_finite(scores, n * k, "scores");
  check_finite(values, n * k * c, "values");
  if (metric == Metric::L2)  // a positive "distance score" would read as an exact match
    for (index_t i = 0; i < n * k; ++i)
      require(scores[i] <= 0, "scores",
              "an 'l2' score is -|q - key|^2 <= 0, got " + std::to_string(scores[i]));
  std::vector<T> q_sq;
  if (metric == Metric::InnerProduct) {
    require(queries != nullptr, "Q",
            "the 'ip' metric needs the queries (|q|^2 enters the distances)");
    require(key_sq != nullptr, "key_sq", "the 'ip' metric needs the candidates' squared key norms");
    check_dim(d, "Q", "key dimension");
    check_finite(queries, n * d, "Q");
    check_finite(key_sq, n * k, "key_sq");
    for (index_t i = 0; i < n * k; ++i)
      require(key_sq[i] >= 0, "key_sq",
              "expected squared norms >= 0, got " + std::to_string(key_sq[i]));
    q_sq.resize(n);
    row_sq_norms(queries, n, d, q_sq.data());  // as the store computes |q|^2
  }
  std::vector<T> w(scores, scores + n * k);
  gaussian_weights_from_scores(w.data(), n, k, metric, q_sq.data(), key_sq, alpha);
  std::vector<const T*> rows(n * k);
  for (index_t i = 0; i < n * k; ++i) rows[i] = values + i * c;
  weighted_sum_of_rows(w.data(), rows.data(), n, k, c, out);
  // The weights sum to 1, but values near the dtype's maximum can still round past it.
  check_result(out, n * c, "values");
}

template <class T>
void gaussian_address_topk(const T* z, const T* r, index_t n, index_t k, index_t c, double alpha,
                           index_t top_k, index_t* ids, T* w) {
  check_alpha(alpha);
  require(top_k >= 1 && top_k <= k, "top_k",
          "expected 1 <= top_k <= number of keys (" + str(k) + "), got " + str(top_k));
  // L2 search scores are -|z - R_k|^2, nearest first.
  topk(z, n, r, k, c, top_k, Metric::L2, ids, w, "Z", "R");
  for (index_t i = 0; i < n * top_k; ++i) w[i] = -w[i];
  gaussian_weights_from_sq_distances(w, n, top_k, alpha);
  check_result(w, n * top_k, "Z, R");
}

template <class T>
void onehot_address(const T* z, const T* r, index_t n, index_t k, index_t c, index_t* ids, T* w) {
  topk(z, n, r, k, c, 1, Metric::L2, ids, w, "Z", "R");
  std::fill(w, w + n, T(1));
}

template <class T>
void read_dense(const T* w, const T* m, T* out, index_t batch, index_t n, index_t k, index_t c) {
  check_dim(batch, "W", "batch size");
  check_dim(n, "W", "number of rows N");
  check_dim(k, "W", "memory size K");
  check_dim(c, "M", "code size C");
  parallel_for(batch, [&](index_t b) {
    blas::gemm_parallel<T>(false, false, n, c, k, T(1), w + b * n * k, k, m + b * k * c, c, T(0),
                           out + b * n * c, c);
  });
  // Every entry of W and of M is multiplied into some output (0 * Inf is NaN too), so a
  // finite result proves finite inputs: the inputs are scanned only to explain a failure.
  bool finite = true;
  for (index_t i = 0; i < batch * n * c && finite; ++i) finite = std::isfinite(out[i]);
  if (!finite) {
    check_finite(w, batch * n * k, "W");
    check_finite(m, batch * k * c, "M");
    check_result(out, batch * n * c, "W, M");
  }
}

template <class T>
void read_sparse(const index_t* ids, const T* weights, index_t n, index_t top_k, const T* m,
                 index_t k, index_t c, T* out) {
  check_dim(n, "W", "number of rows N");
  check_dim(top_k, "W", "number of addresses per row");
  check_dim(k, "M", "memory size K");
  check_dim(c, "M", "code size C");
  for (index_t i = 0; i < n * top_k; ++i)
    require(ids[i] >= 0 && ids[i] < k, "W",
            "address index " + str(ids[i]) + " is outside the memory [0, " + str(k) + ")");
  check_finite(weights, n * top_k, "W");
  check_finite(m, k * c, "M");
#pragma omp parallel for num_threads(n* c > (1 << 16) ? num_threads() : 1) schedule(static)
  for (index_t i = 0; i < n; ++i) {
    T* row = out + i * c;
    std::fill(row, row + c, T(0));
    for (index_t j = 0; j < top_k; ++j) {
      const T wj = weights[i * top_k + j];
      const T* slot = m + ids[i * top_k + j] * c;
#pragma omp simd
      for (index_t t = 0; t < c; ++t) row[t] += wj * slot[t];
    }
  }
  check_result(out, n * c, "W, M");
}

#define LARIMAR_INSTANTIATE(T)                                                                     \
  template void gaussian_address<T>(const T*, const T*, index_t, index_t, index_t, double, T*);    \
  template void gaussian_address_topk<T>(const T*, const T*, index_t, index_t, index_t, double,    \
                                         index_t, index_t*, T*);                                   \
  template void gaussian_weights_from_sq_distances<T>(T*, index_t, index_t, double);               \
  template void gaussian_weights_from_scores<T>(T*, index_t, index_t, Metric, const T*, const T*,  \
                                                double);                                           \
  template void weighted_sum_of_rows<T>(const T*, const T* const*, index_t, index_t, index_t, T*); \
  template void gaussian_read_scored<T>(const T*, const T*, index_t, index_t, index_t, Metric,     \
                                        const T*, index_t, const T*, double, T*);                  \
  template void onehot_address<T>(const T*, const T*, index_t, index_t, index_t, index_t*, T*);    \
  template void read_dense<T>(const T*, const T*, T*, index_t, index_t, index_t, index_t);         \
  template void read_sparse<T>(const index_t*, const T*, index_t, index_t, const T*, index_t,      \
                               index_t, T*);
LARIMAR_INSTANTIATE(float)
LARIMAR_INSTANTIATE(double)
#undef LARIMAR_INSTANTIATE

}  // namespace larimar
