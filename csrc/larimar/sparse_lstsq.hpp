// Least-squares write through sparse (top-k) addresses (docs/DESIGN.md section 2.8, fixed-key
// memory): conjugate gradients on the normal equations over the touched slots only.
#pragma once

#include "larimar/common.hpp"

namespace larimar {

struct SparseLstsqOptions {
  double ridge = 0.0;                    // weight of |M_j - prior_j|^2 for every touched slot
  const double* slot_weights = nullptr;  // optional per-slot weights (K), added to ridge
  double tol = 1e-10;                    // relative residual |A x - b| / |b| per column
  index_t max_iter = -1;                 // < 0: 2 * touched slots + 10
};

struct SparseLstsqReport {
  index_t touched = 0;     // slots addressed by at least one row
  index_t iterations = 0;  // CG iterations (0 on the one-hot fast path)
  double residual = 0.0;   // largest relative residual over columns at exit
};

// M (K x C) = argmin |W M - Z|^2 + sum_j d_j |M_j - prior_j|^2 for W given row-wise by ids
// and weights (N x top_k); slots no row touches keep the prior (zero without one). With
// one address per row the normal equations are diagonal and solved in closed form.
template <class T>
SparseLstsqReport sparse_lstsq_write(const index_t* ids, const T* weights, index_t n, index_t top_k,
                                     const T* z, index_t c, index_t k, const T* prior, T* m,
                                     const SparseLstsqOptions& options);

}  // namespace larimar
