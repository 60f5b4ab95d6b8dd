// Soft and one-hot addressing by distance to keys, and reading a memory through addresses
// (DESIGN.md section 2: Gaussian soft keys, read z = w M).
#pragma once

#include "larimar/common.hpp"

namespace larimar {

// Dense Gaussian soft keys: W (N x K), w_k ∝ exp(-|z - R_k|^2 / (2 alpha s^2)), s the
// distance to the nearest key, rows summing to 1. A query that coincides with a key
// (s = 0) spreads its weight evenly over the keys it coincides with.
template <class T>
void gaussian_address(const T* z, const T* r, index_t n, index_t k, index_t c, double alpha,
                      T* w);

// Sparse Gaussian soft keys over the top_k nearest keys: ids (N x top_k, nearest first, ties
// lower id first) and their weights, renormalised to sum 1.
template <class T>
void gaussian_address_topk(const T* z, const T* r, index_t n, index_t k, index_t c,
                           double alpha, index_t top_k, index_t* ids, T* w);

// Nearest key by L2 distance (ties: lower id): ids (N), weights (N) all 1.
template <class T>
void onehot_address(const T* z, const T* r, index_t n, index_t k, index_t c, index_t* ids,
                    T* w);

// Turns the top-k squared distances of each row (ascending) into Gaussian weights in place.
template <class T>
void gaussian_weights_from_sq_distances(T* d2, index_t n, index_t k, double alpha);

// out (B x N x C) = W (B x N x K) M (B x K x C).
template <class T>
void read_dense(const T* w, const T* m, T* out, index_t batch, index_t n, index_t k, index_t c);

// out (N x C) = sum_j weights[n, j] M[ids[n, j]], M (K x C).
template <class T>
void read_sparse(const index_t* ids, const T* weights, index_t n, index_t top_k, const T* m,
                 index_t k, index_t c, T* out);

}  // namespace larimar
