#include "larimar/lstsq.hpp"

#include <algorithm>
#include <type_traits>

#include "larimar/linalg.hpp"

namespace larimar {
namespace {

template <class T>
void solve_episode(const T* w, const T* z, T* m, index_t n, index_t k, index_t c, double ridge,
                   double rcond) {
  const std::vector<double> wd = convert<double>(w, n * k);
  const bool tall = n >= k;
  const index_t g = tall ? k : n;
  std::vector<double> gram(g * g);
  // Gram: W^T W (tall) or W W^T (wide), plus the ridge.
  blas::gemm_parallel<double>(tall, !tall, g, g, tall ? n : k, 1.0, wd.data(), k, wd.data(), k, 0.0,
                              gram.data(), g);
  for (index_t i = 0; i < g; ++i) gram[i * g + i] += ridge;

  Cholesky chol;
  const double floor = std::max(cholesky_rcond_floor<T>(), ridge > 0 ? 0.0 : rcond * rcond);
  const bool ok = chol.factor(gram, g) && chol.rcond() >= floor;
  if (!ok) {
    const std::vector<double> zd = convert<double>(z, n * c);
    const std::vector<double> md = svd_solve(wd.data(), n, k, zd.data(), c, ridge, rcond);
    std::copy(md.begin(), md.end(), m);
    return;
  }
  if (tall) {
    // M = G^-1 (W^T Z), in float64 throughout.
    const std::vector<double> zd = convert<double>(z, n * c);
    std::vector<double> rhs(k * c);
    blas::gemm_parallel<double>(true, false, k, c, n, 1.0, wd.data(), k, zd.data(), c, 0.0,
                                rhs.data(), c);
    chol.solve(rhs.data(), c);
    std::copy(rhs.begin(), rhs.end(), m);
  } else {
    // M = W^T (G^-1 Z): the small solve in float64, the K x N x C product in T.
    std::vector<double> y = convert<double>(z, n * c);
    chol.solve(y.data(), c);
    const std::vector<T> yt = convert<T>(y.data(), n * c);
    blas::gemm_parallel<T>(true, false, k, c, n, T(1), w, k, yt.data(), c, T(0), m, c);
  }
}

}  // namespace

template <class T>
void lstsq_write(const T* w, const T* z, T* m, index_t batch, index_t n, index_t k, index_t c,
                 const LstsqOptions& options) {
  check_dim(batch, "W", "batch size");
  check_dim(n, "W", "number of rows N");
  check_dim(k, "W", "memory size K");
  check_dim(c, "Z", "code size C");
  check_scalar(options.ridge, "ridge", true, false);
  if (options.rcond >= 0) check_scalar(options.rcond, "rcond", true, false);
  check_finite(w, batch * n * k, "W");
  check_finite(z, batch * n * c, "Z");
  const double g = double(std::min(n, k));
  check_allocation(8.0 * num_threads() * (3.0 * n * k + g * g + 3.0 * double(std::max(n, k)) * c),
                   "W", "the float64 workspace of the solve");
  const double rcond = options.rcond >= 0 ? options.rcond : default_rcond<T>(n, k);
  parallel_for(batch, [&](index_t b) {
    solve_episode(w + b * n * k, z + b * n * c, m + b * k * c, n, k, c, options.ridge, rcond);
  });
  check_result(m, batch * k * c, "W, Z");
}

template void lstsq_write<float>(const float*, const float*, float*, index_t, index_t, index_t,
                                 index_t, const LstsqOptions&);
template void lstsq_write<double>(const double*, const double*, double*, index_t, index_t, index_t,
                                  index_t, const LstsqOptions&);

}  // namespace larimar
