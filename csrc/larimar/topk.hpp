// Exact top-k key search (docs/DESIGN.md section 2.6, fixed-key memory): blocked GEMM of queries
// against key tiles with the per-query top-k selection fused into each tile.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "larimar/common.hpp"

namespace larimar {

enum class Metric { InnerProduct, Cosine, L2 };

// "ip", "cosine" or "l2"; anything else is an InvalidArgument naming `metric`.
Metric parse_metric(const std::string& name);
std::string metric_name(Metric metric);

// A contiguous run of keys with ids first_id .. first_id + rows - 1. sq_norms (one per key)
// is required for Cosine and L2, and for searches of more than 8 queries.
template <class T>
struct KeyBlock {
  const T* keys = nullptr;
  const T* sq_norms = nullptr;
  index_t rows = 0;
  index_t first_id = 0;
};

// The key row of id (and its squared norm, 0 when the block keeps none) among blocks sorted by
// first_id; id must be one of theirs.
template <class T>
struct KeyRow {
  const T* key;
  T sq_norm;
};
// The index of the block that holds id: the last whose first_id <= id.
template <class T>
index_t block_of(const std::vector<KeyBlock<T>>& blocks, index_t id) {
  index_t lo = 0, hi = static_cast<index_t>(blocks.size());
  while (hi - lo > 1) {
    const index_t mid = (lo + hi) / 2;
    (blocks[mid].first_id <= id ? lo : hi) = mid;
  }
  return lo;
}
template <class T>
KeyRow<T> find_key_row(const std::vector<KeyBlock<T>>& blocks, index_t d, index_t id) {
  const KeyBlock<T>& b = blocks[block_of(blocks, id)];
  const index_t row = id - b.first_id;
  return {b.keys + row * d, b.sq_norms ? b.sq_norms[row] : T(0)};
}

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

// Queries that search() scores together.
constexpr index_t kSearchQueryBlock = 256;

// Runs block(first query, count) over the query blocks of nq queries; true when every call
// returned true (all scores finite).
template <class Block>
bool for_query_blocks(index_t nq, Block&& block) {
  bool finite = true;
  for (index_t q0 = 0; q0 < nq; q0 += kSearchQueryBlock)
    finite &= block(q0, nq - q0 < kSearchQueryBlock ? nq - q0 : kSearchQueryBlock);
  return finite;
}

// Scores (out, nq x rows) of queries q (nq x d) against rows of keys (rows x d). Up to 8
// queries, by the kernel's own dot products: a pair gets the same bits whatever else is scored
// with it, and these bits are what search() returns for every batch size. More queries go
// through a GEMM, whose bits depend on the product's shape (search() re-scores its top
// candidates). q_sq and k_sq are the squared norms (row_sq_norms) of the queries and keys,
// read unless the metric is InnerProduct.
template <class T>
void score_rows(const T* q, index_t nq, const T* q_sq, const T* keys, const T* k_sq, index_t rows,
                index_t d, Metric metric, T* out);

// The k best of n candidate key ids (n >= k, ids among the blocks') for one query q (d; q_sq its
// squared norm, read unless InnerProduct), each scored by score_rows' dot products in place:
// best first, equal scores by ascending id, into out_ids and out_scores (k). Returns false
// when a score was not finite. The exact step of every search that screens first.
template <class T>
bool rescore_top_k(const T* q, const T* q_sq, const std::vector<KeyBlock<T>>& blocks, index_t d,
                   Metric metric, const index_t* ids, index_t n, index_t k, index_t* out_ids,
                   T* out_scores);
// The same, for keys made on demand: row_of(id, buffer) returns the key row of id, written
// into buffer (d) when it has none of its own (an int8-only store decodes its codes there).
template <class T>
using KeyRowOf = std::function<KeyRow<T>(index_t id, T* buffer)>;
template <class T>
bool rescore_top_k(const T* q, const T* q_sq, const KeyRowOf<T>& row_of, index_t d, Metric metric,
                   const index_t* ids, index_t n, index_t k, index_t* out_ids, T* out_scores);

// Convenience for one array of keys (nk x d): validates every argument, naming them
// queries_name and keys_name in errors.
template <class T>
void topk(const T* queries, index_t nq, const T* keys, index_t nk, index_t d, index_t k,
          Metric metric, index_t* out_ids, T* out_scores, const char* queries_name = "Q",
          const char* keys_name = "keys");

}  // namespace larimar
