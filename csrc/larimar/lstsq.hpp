// Dense least-squares write M = W^+ Z (docs/DESIGN.md section 2.2).
#pragma once

#include "larimar/common.hpp"

namespace larimar {

struct LstsqOptions {
  double ridge = 0.0;  // >= 0: M = (W^T W + ridge I)^-1 W^T Z
  double rcond =
      -1;  // < 0: default max(N, K) * eps(T); singular values below rcond * s_max dropped
};

// W (B x N x K), Z (B x N x C) -> M (B x K x C), all row-major. Episodes run in parallel.
// N >= K solves the K x K Gram, N < K the N x N Gram (minimum-norm solution); both by a
// float64 Cholesky, falling back to the SVD pseudo-inverse when the Gram is too
// ill-conditioned for the Cholesky answer to match it.
template <class T>
void lstsq_write(const T* w, const T* z, T* m, index_t batch, index_t n, index_t k, index_t c,
                 const LstsqOptions& options);

}  // namespace larimar
