// Exact top-k key search (docs/DESIGN.md section 2.6, fixed-key memory): blocked GEMM of queries
// against key tiles with the per-query top-k selection fused into each tile.
#pragma once

#include <string>
#include <vector>

#include "larimar/common.hpp"

namespace larimar {

enum class Metric { InnerProduct, Cosine, L2 };

// "ip", "cosine" or "l2"; anything else is an InvalidArgument naming `metric`.
Metric parse_metric(const std::string& name);
std::string metric_name(Metric metric);

// A contiguous run of keys with ids first_id .. first_id + rows - 1. sq_norms (one per key)
// is required for Cosine and L2 and ignored for InnerProduct.
template <class T>
struct KeyBlock {
  const T* keys = nullptr;
  const T* sq_norms = nullptr;
  index_t rows = 0;
  index_t first_id = 0;
};

// Squared L2 norm of each row of x (rows x d).
template <class T>
void row_sq_norms(const T* x, index_t rows, index_t d, T* out);

// Scores: InnerProduct q.k; Cosine q.k / (|q||k|) (0 when either is the zero vector);
// L2 -|q - k|^2. Writes the k best per query (nq x k), best first, equal scores in
// ascending id order. k must not exceed the total number of keys. Returns false when some
// score was NaN or Inf (a non-finite key, or an overflow); the results are then meaningless.
template <class T>
bool search(const T* queries, index_t nq, index_t d, const std::vector<KeyBlock<T>>& blocks,
            index_t k, Metric metric, index_t* out_ids, T* out_scores);

// Convenience for one array of keys (nk x d): validates every argument, naming them
// queries_name and keys_name in errors.
template <class T>
void topk(const T* queries, index_t nq, const T* keys, index_t nk, index_t d, index_t k,
          Metric metric, index_t* out_ids, T* out_scores, const char* queries_name = "Q",
          const char* keys_name = "keys");

}  // namespace larimar
