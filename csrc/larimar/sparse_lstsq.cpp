#include "larimar/sparse_lstsq.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace larimar {

template <class T>
SparseLstsqReport sparse_lstsq_write(const index_t* ids, const T* weights, index_t n, index_t top_k,
                                     const T* z, index_t c, index_t k, const T* prior, T* m,
                                     const SparseLstsqOptions& options) {
  check_dim(n, "Z", "number of rows N");
  check_dim(top_k, "indices", "number of addresses per row");
  check_dim(c, "Z", "code size C");
  check_dim(k, "memory_size", "memory size K");
  check_scalar(options.ridge, "ridge", true, false);
  check_scalar(options.tol, "tol", true, false);
  for (index_t i = 0; i < n * top_k; ++i)
    require(ids[i] >= 0 && ids[i] < k, "indices",
            "address " + str(ids[i]) + " is outside the memory [0, " + str(k) + ")");
  check_finite(weights, n * top_k, "weights");
  check_finite(z, n * c, "Z");
  if (prior) check_finite(prior, k * c, "prior");

  // Compress the touched slots to 0 .. t-1.
  std::vector<index_t> local(k, -1), slots;
  for (index_t i = 0; i < n * top_k; ++i)
    if (local[ids[i]] < 0)
      local[ids[i]] = static_cast<index_t>(slots.size()), slots.push_back(ids[i]);
  const index_t t = static_cast<index_t>(slots.size());
  std::vector<double> d(t, options.ridge);
  if (options.slot_weights)
    for (index_t j = 0; j < t; ++j) d[j] += options.slot_weights[slots[j]];

  // b = W^T Z + D prior, over touched slots (t x C); x0 = prior.
  std::vector<double> b(t * c, 0.0), x(t * c, 0.0);
  for (index_t j = 0; j < t; ++j)
    for (index_t col = 0; col < c; ++col) {
      const double p = prior ? prior[slots[j] * c + col] : 0.0;
      x[j * c + col] = p;
      b[j * c + col] = d[j] * p;
    }
  for (index_t i = 0; i < n; ++i)
    for (index_t a = 0; a < top_k; ++a) {
      const double w = weights[i * top_k + a];
      double* row = b.data() + local[ids[i * top_k + a]] * c;
      for (index_t col = 0; col < c; ++col) row[col] += w * z[i * c + col];
    }

  SparseLstsqReport report;
  report.touched = t;
  if (top_k == 1) {
    // One address per row: A = diag(sum w^2 + d).
    std::vector<double> diag(d);
    for (index_t i = 0; i < n; ++i) diag[local[ids[i]]] += double(weights[i]) * weights[i];
    for (index_t j = 0; j < t; ++j)
      if (diag[j] > 0)
        for (index_t col = 0; col < c; ++col) x[j * c + col] = b[j * c + col] / diag[j];
  } else {
    // A X = W^T (W X) + D X, applied matrix-free; one CG per column, run side by side.
    auto apply = [&](const std::vector<double>& in, std::vector<double>& out) {
      std::vector<double> wx(n * c, 0.0);
      for (index_t i = 0; i < n; ++i)
        for (index_t a = 0; a < top_k; ++a) {
          const double w = weights[i * top_k + a];
          const double* src = in.data() + local[ids[i * top_k + a]] * c;
          for (index_t col = 0; col < c; ++col) wx[i * c + col] += w * src[col];
        }
      for (index_t j = 0; j < t; ++j)
        for (index_t col = 0; col < c; ++col) out[j * c + col] = d[j] * in[j * c + col];
      for (index_t i = 0; i < n; ++i)
        for (index_t a = 0; a < top_k; ++a) {
          const double w = weights[i * top_k + a];
          double* dst = out.data() + local[ids[i * top_k + a]] * c;
          for (index_t col = 0; col < c; ++col) dst[col] += w * wx[i * c + col];
        }
    };
    std::vector<double> r(t * c), p(t * c), ap(t * c);
    apply(x, ap);
    for (index_t i = 0; i < t * c; ++i) r[i] = b[i] - ap[i];
    p = r;
    std::vector<double> rr(c, 0.0), bnorm(c, 0.0);
    for (index_t j = 0; j < t; ++j)
      for (index_t col = 0; col < c; ++col) {
        rr[col] += r[j * c + col] * r[j * c + col];
        bnorm[col] += b[j * c + col] * b[j * c + col];
      }
    check_result(rr.data(), c, "weights, Z");
    check_result(bnorm.data(), c, "weights, Z");
    const index_t max_iter = options.max_iter >= 0 ? options.max_iter : 2 * t + 10;
    auto residual = [&](index_t col) {
      return bnorm[col] > 0 ? std::sqrt(rr[col] / bnorm[col]) : std::sqrt(rr[col]);
    };
    // A column stops when it converges, or when its search direction has no curvature above
    // the rounding of A p (p'Ap <= 8 eps rho p'p, rho the largest Rayleigh quotient seen, a
    // lower bound on |A|): p then lies in A's numerical null space, every later step repeats
    // rounding error, and no max_iter should make that run on.
    const double flat = 8 * std::numeric_limits<double>::epsilon();
    std::vector<char> live(c, 1);
    std::vector<double> rho(c, 0.0);
    auto working = [&]() {
      for (index_t col = 0; col < c; ++col)
        if (live[col] && !(residual(col) <= options.tol)) return true;
      return false;
    };
    index_t it = 0;
    for (; it < max_iter && working(); ++it) {
      apply(p, ap);
      std::vector<double> pap(c, 0.0), pp(c, 0.0);
      for (index_t j = 0; j < t; ++j)
        for (index_t col = 0; col < c; ++col) {
          pap[col] += p[j * c + col] * ap[j * c + col];
          pp[col] += p[j * c + col] * p[j * c + col];
        }
      check_result(pap.data(), c, "weights, Z");  // |W|^2 |p|^2 past float64: refuse
      check_result(pp.data(), c, "weights, Z");
      std::vector<double> step(c, 0.0), rr_new(rr);
      for (index_t col = 0; col < c; ++col) {
        if (pp[col] > 0) rho[col] = std::max(rho[col], pap[col] / pp[col]);
        live[col] = live[col] && pap[col] > flat * rho[col] * pp[col];
        if (live[col]) step[col] = rr[col] / pap[col], rr_new[col] = 0.0;
      }
      for (index_t j = 0; j < t; ++j)
        for (index_t col = 0; col < c; ++col) {
          if (!live[col]) continue;
          x[j * c + col] += step[col] * p[j * c + col];
          r[j * c + col] -= step[col] * ap[j * c + col];
          rr_new[col] += r[j * c + col] * r[j * c + col];
        }
      for (index_t j = 0; j < t; ++j)
        for (index_t col = 0; col < c; ++col) {
          if (!live[col]) continue;
          const double beta = rr[col] > 0 ? rr_new[col] / rr[col] : 0.0;
          p[j * c + col] = r[j * c + col] + beta * p[j * c + col];
        }
      rr.swap(rr_new);
    }
    double worst = 0;
    for (index_t col = 0; col < c; ++col) worst = std::max(worst, residual(col));
    report.iterations = it;
    report.residual = worst;
  }

  if (prior)
    std::copy(prior, prior + k * c, m);
  else
    std::fill(m, m + k * c, T(0));
  for (index_t j = 0; j < t; ++j)
    for (index_t col = 0; col < c; ++col) m[slots[j] * c + col] = static_cast<T>(x[j * c + col]);
  check_result(m, k * c, "weights, Z");
  return report;
}

template SparseLstsqReport sparse_lstsq_write<float>(const index_t*, const float*, index_t, index_t,
                                                     const float*, index_t, index_t, const float*,
                                                     float*, const SparseLstsqOptions&);
template SparseLstsqReport sparse_lstsq_write<double>(const index_t*, const double*, index_t,
                                                      index_t, const double*, index_t, index_t,
                                                      const double*, double*,
                                                      const SparseLstsqOptions&);

}  // namespace larimar
