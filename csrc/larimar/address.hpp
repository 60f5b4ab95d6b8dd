// Soft and one-hot addressing by distance to keys, and reading a memory through addresses
// (docs/DESIGN.md section 2.4: Gaussian soft keys, read z = w M).
#pragma once

#include "larimar/common.hpp"
#include "larimar/topk.hpp"

namespace larimar {

// The check of a Gaussian temperature alpha, finite and > 0, for every soft address, read
// and write of the kernel (and the Python layer's up-front checks, through _core): the one
// place that rule and its error text ("alpha: expected a finite number > 0, got -1") live.
void check_alpha(double alpha);

// A read without alpha returns the best key's value, so it takes k = 1: the rule and its
// error text for the store's read and the Python layer's up-front checks.
void check_hard_read_k(index_t k);

// Dense Gaussian soft keys: W (N x K), w_k ∝ exp(-|z - R_k|^2 / (2 alpha s^2)), s the
// distance to the nearest key, rows summing to 1. A query that coincides with a key
// (s = 0) spreads its weight evenly over the keys it coincides with.
template <class T>
void gaussian_address(const T* z, const T* r, index_t n, index_t k, index_t c, double alpha, T* w);

// Sparse Gaussian soft keys over the top_k nearest keys: ids (N x top_k, nearest first, ties
// lower id first) and their weights, renormalised to sum 1.
template <class T>
void gaussian_address_topk(const T* z, const T* r, index_t n, index_t k, index_t c, double alpha,
                           index_t top_k, index_t* ids, T* w);

// Nearest key by L2 distance (ties: lower id): ids (N), weights (N) all 1.
template <class T>
void onehot_address(const T* z, const T* r, index_t n, index_t k, index_t c, index_t* ids, T* w);

// Turns the top-k squared distances of each row (ascending) into Gaussian weights in place.
template <class T>
void gaussian_weights_from_sq_distances(T* d2, index_t n, index_t k, double alpha);

// The soft read's weights of search hits (KeyValueStore::read and write use it): scores
// (n x k, by `metric`, in place) become squared distances, -s for L2, 2 - 2s for cosine
// (unit vectors), |q|^2 + |key|^2 - 2s for inner products (q_sq (n) and key_sq (n x k) are
// read for InnerProduct only; may be null otherwise), rounding below 0 clamped; then the
// Gaussian weights of gaussian_weights_from_sq_distances. Unchecked: callers validate.
template <class T>
void gaussian_weights_from_scores(T* scores, index_t n, index_t k, Metric metric, const T* q_sq,
                                  const T* key_sq, double alpha);

// out (n x c) = sum_j w[i, j] rows[i * k + j], summed in j order (each rows[] entry points to
// c values): the accumulation of the soft read, shared by every caller so that two readouts
// of the same hits agree bitwise. Unchecked.
template <class T>
void weighted_sum_of_rows(const T* w, const T* const* rows, index_t n, index_t k, index_t c,
                          T* out);

// The soft read over given candidates, e.g. the top-k hits of several stores merged: scores
// (n x k) by `metric`, their values (n x k x c), and for InnerProduct the queries (n x d) and
// the candidates' squared key norms key_sq (n x k) (null otherwise). out (n x c) is what
// KeyValueStore::read returns when these are its hits. Every argument is checked.
template <class T>
void gaussian_read_scored(const T* scores, const T* values, index_t n, index_t k, index_t c,
                          Metric metric, const T* queries, index_t d, const T* key_sq, double alpha,
                          T* out);

// out (B x N x C) = W (B x N x K) M (B x K x C).
template <class T>
void read_dense(const T* w, const T* m, T* out, index_t batch, index_t n, index_t k, index_t c);

// out (N x C) = sum_j weights[n, j] M[ids[n, j]], M (K x C).
template <class T>
void read_sparse(const index_t* ids, const T* weights, index_t n, index_t top_k, const T* m,
                 index_t k, index_t c, T* out);

}  // namespace larimar
