#include "larimar/topk.hpp"

#include <omp.h>

#include <algorithm>

#include "larimar/linalg.hpp"

namespace larimar {
namespace {

// Keys per tile: a tile of scores (queries x tile) and the tile's keys stay in cache.
constexpr index_t kTileRows = 1024;

template <class T>
struct Candidate {
  T score;
  index_t id;
};

// a ranks before b: higher score, then lower id.
template <class T>
inline bool better(const Candidate<T>& a, const Candidate<T>& b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}

// The k best candidates seen so far for one query, as a heap whose top is the worst kept,
// in storage allocated before the parallel region (no allocation may happen inside it).
template <class T>
class TopK {
 public:
  TopK(Candidate<T>* storage, index_t k) : heap_(storage), k_(k) {}
  // Score below the current k-th best can never enter; lets the scan skip the heap.
  T threshold() const { return size_ < k_ ? -std::numeric_limits<T>::infinity() : heap_[0].score; }
  void push(T score, index_t id) {
    const Candidate<T> c{score, id};
    auto worse_first = [](const Candidate<T>& a, const Candidate<T>& b) { return better(a, b); };
    if (size_ < k_) {
      heap_[size_++] = c;
      std::push_heap(heap_, heap_ + size_, worse_first);
    } else if (better(c, heap_[0])) {
      std::pop_heap(heap_, heap_ + size_, worse_first);
      heap_[size_ - 1] = c;
      std::push_heap(heap_, heap_ + size_, worse_first);
    }
  }
  const Candidate<T>* begin() const { return heap_; }
  const Candidate<T>* end() const { return heap_ + size_; }

 private:
  Candidate<T>* heap_;
  index_t k_, size_ = 0;
};

// Up to this many queries a tile is scored by dot products (each key read once and met by
// every query while in L1) instead of a GEMM, whose packing of the tile costs a second pass
// over memory. One query too: the dot product's order of summation is the kernel's own, where
// a BLAS gemv's may change with the number of rows.
constexpr index_t kSmallBatch = 8;

#define LARIMAR_SCORE_SMALL(T)                                                                    \
  LARIMAR_MULTIVERSION                                                                            \
  void score_small(const T* q, index_t nq, const T* keys, index_t rows, index_t d, T* out) {      \
    for (index_t j = 0; j < rows; ++j) {                                                          \
      const T* key = keys + j * d;                                                                \
      for (index_t i = 0; i < nq; ++i) {                                                          \
        const T* qi = q + i * d;                                                                  \
        T s = 0;                                                                                  \
        _Pragma("omp simd reduction(+ : s)") for (index_t t = 0; t < d; ++t) s += qi[t] * key[t]; \
        out[i * rows + j] = s;                                                                    \
      }                                                                                           \
    }                                                                                             \
  }
LARIMAR_SCORE_SMALL(float)
LARIMAR_SCORE_SMALL(double)
#undef LARIMAR_SCORE_SMALL

struct Tile {
  index_t block, offset, rows;
};

// Candidates a GEMM-scanned query keeps beyond k: the band that its re-score examines (see
// rescore_gemm_block) must fit in them, or the query is scanned again by dot products.
constexpr index_t kExtraKept = 32;

template <class T>
bool search_query_block(const T* q, index_t nq, index_t d, const std::vector<KeyBlock<T>>& blocks,
                        const std::vector<Tile>& tiles, index_t k, Metric metric, index_t* out_ids,
                        T* out_scores);

// A GEMM's sums run in an order that depends on the product's shape, so its scores are not
// the bits search() returns (score_rows' dot products, the same for every batch). Each query
// kept its top `keep` GEMM scores per thread; the dot-product scores lie within `slack` of
// them (both sums are within gamma_d |q| |k| of the exact one), so the exact top k is among the
// kept ones within 2 slack of the k-th, provided every thread's last kept one is below that.
// Those are re-scored; a query whose band overflowed what was kept is scanned again alone.
template <class T>
bool rescore_gemm_block(const T* q, index_t nq, index_t d, const T* q_sq,
                        const std::vector<KeyBlock<T>>& blocks, const std::vector<Tile>& tiles,
                        index_t k, Metric metric, const std::vector<TopK<T>>& best, int team,
                        index_t keep, double max_key_norm, index_t* out_ids, T* out_scores) {
  const double u = epsilon<T>() / 2, gamma = double(d) * u / (1 - double(d) * u);
  const double grow = 1 + 0x1p-16;
  bool finite = true;
  std::vector<Candidate<T>> all;
  std::vector<index_t> ids;
  for (index_t i = 0; i < nq; ++i) {
    all.clear();
    for (int t = 0; t < team; ++t)
      all.insert(all.end(), best[t * nq + i].begin(), best[t * nq + i].end());
    std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), better<T>);
    const double qn = std::sqrt(double(q_sq[i])), kn = max_key_norm;
    double slack = 2 * gamma * qn * kn;                       // the two sums' distance, for "ip"
    if (metric == Metric::Cosine) slack = 2 * gamma + 8 * u;  // each rounds its own quotient
    if (metric == Metric::L2) slack = 4 * gamma * qn * kn + 8 * u * (qn + kn) * (qn + kn);
    slack *= grow;
    const double floor = double(all[k - 1].score) - 2 * slack;
    // A NaN band (|q|^2 past the dtype's range times all-zero keys: inf * 0) bounds nothing.
    bool covered = !std::isnan(floor);
    for (int t = 0; t < team; ++t) {
      const TopK<T>& h = best[t * nq + i];
      if (h.end() - h.begin() == keep && double(h.threshold()) >= floor) covered = false;
    }
    if (!covered) {  // many near-ties at the k-th: this query alone, by dot products
      finite &= search_query_block(q + i * d, 1, d, blocks, tiles, k, metric, out_ids + i * k,
                                   out_scores + i * k);
      continue;
    }
    ids.clear();
    for (const Candidate<T>& c : all)
      if (double(c.score) >= floor) ids.push_back(c.id);
    finite &=
        rescore_top_k(q + i * d, q_sq + i, blocks, d, metric, ids.data(),
                      static_cast<index_t>(ids.size()), k, out_ids + i * k, out_scores + i * k);
  }
  return finite;
}

// Returns false when any score was NaN or Inf: a NaN or Inf in a key always reaches its
// score, so callers need not scan the keys beforehand.
template <class T>
bool search_query_block(const T* q, index_t nq, index_t d, const std::vector<KeyBlock<T>>& blocks,
                        const std::vector<Tile>& tiles, index_t k, Metric metric, index_t* out_ids,
                        T* out_scores) {
  const bool gemm = nq > kSmallBatch;
  std::vector<T> q_sq(nq, T(0));
  if (metric != Metric::InnerProduct || gemm) row_sq_norms(q, nq, d, q_sq.data());
  const int team =
      static_cast<int>(std::min<index_t>(num_threads(), static_cast<index_t>(tiles.size())));
  const index_t keep = gemm ? k + kExtraKept : k;
  check_allocation(
      double(team) * nq * (16.0 * keep + sizeof(T) * double(kTileRows)) + 16.0 * nq * keep, "k",
      "keeping the top " + str(k) + " of " + str(nq) + " queries");
  std::vector<Candidate<T>> storage(static_cast<std::size_t>(team) * nq * keep);
  std::vector<T> score_buffers(static_cast<std::size_t>(team) * nq * kTileRows);
  std::vector<TopK<T>> best;
  best.reserve(static_cast<std::size_t>(team) * nq);
  for (index_t h = 0; h < static_cast<index_t>(team) * nq; ++h)
    best.emplace_back(storage.data() + h * keep, keep);
  bool finite = true;
  T max_sq = 0;  // the largest |key|^2 scanned, for the GEMM's re-score

#pragma omp parallel num_threads(team) reduction(&& : finite) reduction(max : max_sq)
  {
    const int tid = omp_get_thread_num();
    TopK<T>* mine = best.data() + tid * nq;
    T* scores = score_buffers.data() + tid * nq * kTileRows;
#pragma omp for schedule(dynamic, 4)
    for (index_t t = 0; t < static_cast<index_t>(tiles.size()); ++t) {
      const Tile& tile = tiles[t];
      const KeyBlock<T>& block = blocks[tile.block];
      const T* keys = block.keys + tile.offset * d;
      const index_t rows = tile.rows;
      const T* k_sq = metric == Metric::InnerProduct ? nullptr : block.sq_norms + tile.offset;
      score_rows(q, nq, q_sq.data(), keys, k_sq, rows, d, metric, scores);
      const index_t first = block.first_id + tile.offset;
      for (index_t j = 0; gemm && j < rows; ++j)
        max_sq = std::max(max_sq, block.sq_norms[tile.offset + j]);
      for (index_t i = 0; i < nq; ++i) {
        T* s = scores + i * rows;
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (index_t j = 0; j < rows; ++j) sum += s[j] * T(0);  // NaN iff some s[j] is not finite
        finite = finite && sum == T(0);
        TopK<T>& heap = mine[i];
        T bar = heap.threshold();
        for (index_t j = 0; j < rows; ++j) {
          if (s[j] < bar) continue;
          heap.push(s[j], first + j);
          bar = heap.threshold();
        }
      }
    }
  }

  if (gemm)
    return finite && rescore_gemm_block(q, nq, d, q_sq.data(), blocks, tiles, k, metric, best, team,
                                        keep, std::sqrt(double(max_sq)), out_ids, out_scores);
  // Merge the per-thread candidates; order fully by (score desc, id asc).
  std::vector<Candidate<T>> all;
  for (index_t i = 0; i < nq; ++i) {
    all.clear();
    for (int t = 0; t < team; ++t)
      all.insert(all.end(), best[t * nq + i].begin(), best[t * nq + i].end());
    std::partial_sort(all.begin(), all.begin() + k, all.end(), better<T>);
    for (index_t j = 0; j < k; ++j) {
      out_ids[i * k + j] = all[j].id;
      out_scores[i * k + j] = all[j].score;
    }
  }
  return finite;
}

}  // namespace

template <class T>
void score_rows(const T* q, index_t nq, const T* q_sq, const T* keys, const T* k_sq, index_t rows,
                index_t d, Metric metric, T* out) {
  if (nq <= kSmallBatch)
    score_small(q, nq, keys, rows, d, out);
  else
    blas::gemm<T>(false, true, nq, rows, d, T(1), q, d, keys, d, T(0), out, rows);
  for (index_t i = 0; metric != Metric::InnerProduct && i < nq; ++i) {
    T* s = out + i * rows;
    if (metric == Metric::Cosine) {
      const T qn = std::sqrt(q_sq[i]);
      for (index_t j = 0; j < rows; ++j) {
        const T denom = qn * std::sqrt(k_sq[j]);
        s[j] = denom > T(0) ? s[j] / denom : T(0);
      }
    } else {
      for (index_t j = 0; j < rows; ++j) s[j] = std::min(T(0), T(2) * s[j] - q_sq[i] - k_sq[j]);
    }
  }
}

template <class T>
bool rescore_top_k(const T* q, const T* q_sq, const std::vector<KeyBlock<T>>& blocks, index_t d,
                   Metric metric, const index_t* ids, index_t n, index_t k, index_t* out_ids,
                   T* out_scores) {
  const KeyRowOf<T> row_of = [&](index_t id, T*) { return find_key_row(blocks, d, id); };
  return rescore_top_k(q, q_sq, row_of, d, metric, ids, n, k, out_ids, out_scores);
}

template <class T>
bool rescore_top_k(const T* q, const T* q_sq, const KeyRowOf<T>& row_of, index_t d, Metric metric,
                   const index_t* ids, index_t n, index_t k, index_t* out_ids, T* out_scores) {
  std::vector<Candidate<T>> scored(static_cast<std::size_t>(n));
  std::vector<T> buffer(static_cast<std::size_t>(d));
  bool finite = true;
  for (index_t j = 0; j < n; ++j) {
    const KeyRow<T> row = row_of(ids[j], buffer.data());
    scored[j].id = ids[j];
    score_rows(q, 1, q_sq, row.key, &row.sq_norm, 1, d, metric, &scored[j].score);
    finite = finite && std::isfinite(scored[j].score);
  }
  std::partial_sort(scored.begin(), scored.begin() + k, scored.end(), better<T>);
  for (index_t j = 0; j < k; ++j) {
    out_ids[j] = scored[j].id;
    out_scores[j] = scored[j].score;
  }
  return finite;
}

Metric parse_metric(const std::string& name) {
  if (name == "ip") return Metric::InnerProduct;
  if (name == "cosine") return Metric::Cosine;
  if (name == "l2") return Metric::L2;
  fail("metric", "expected \"ip\", \"cosine\" or \"l2\", got \"" + name + "\"");
}

std::string metric_name(Metric metric) {
  switch (metric) {
    case Metric::InnerProduct:
      return "ip";
    case Metric::Cosine:
      return "cosine";
    case Metric::L2:
      return "l2";
  }
  return "?";
}

template <class T>
void row_sq_norms(const T* x, index_t rows, index_t d, T* out) {
#pragma omp parallel for num_threads(rows > 4096 ? num_threads() : 1) schedule(static)
  for (index_t i = 0; i < rows; ++i) {
    const T* row = x + i * d;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (index_t j = 0; j < d; ++j) s += row[j] * row[j];
    out[i] = s;
  }
}

template <class T>
bool search(const T* queries, index_t nq, index_t d, const std::vector<KeyBlock<T>>& blocks,
            index_t k, Metric metric, index_t* out_ids, T* out_scores) {
  std::vector<Tile> tiles;
  for (index_t b = 0; b < static_cast<index_t>(blocks.size()); ++b)
    for (index_t off = 0; off < blocks[b].rows; off += kTileRows)
      tiles.push_back({b, off, std::min(kTileRows, blocks[b].rows - off)});
  return for_query_blocks(nq, [&](index_t q0, index_t n) {
    return search_query_block(queries + q0 * d, n, d, blocks, tiles, k, metric, out_ids + q0 * k,
                              out_scores + q0 * k);
  });
}

template <class T>
void topk(const T* queries, index_t nq, const T* keys, index_t nk, index_t d, index_t k,
          Metric metric, index_t* out_ids, T* out_scores, const char* queries_name,
          const char* keys_name) {
  check_dim(nq, queries_name, "number of queries");
  check_dim(nk, keys_name, "number of keys");
  check_dim(d, queries_name, "key dimension");
  require(k >= 1 && k <= nk, "k",
          "expected 1 <= k <= number of keys (" + str(nk) + "), got " + str(k));
  check_finite(queries, nq * d, queries_name);
  // The keys are not scanned up front (a pass as long as the search itself): a NaN or Inf
  // in a key shows up in its norm or score, and only then are they checked to say which.
  auto explain = [&]() {
    check_finite(keys, nk * d, keys_name);
    fail(keys_name, "scores overflow the range of the dtype (values too large to compare)");
  };
  std::vector<T> sq;
  if (metric != Metric::InnerProduct || nq > kSmallBatch) {
    sq.resize(nk);
    row_sq_norms(keys, nk, d, sq.data());
    T sum = 0;
    for (index_t i = 0; i < nk; ++i) sum += sq[i] * T(0);
    if (sum != T(0)) explain();
  }
  const std::vector<KeyBlock<T>> blocks{{keys, sq.empty() ? nullptr : sq.data(), nk, 0}};
  if (!search(queries, nq, d, blocks, k, metric, out_ids, out_scores)) explain();
}

#define LARIMAR_INSTANTIATE(T)                                                                    \
  template void row_sq_norms<T>(const T*, index_t, index_t, T*);                                  \
  template void score_rows<T>(const T*, index_t, const T*, const T*, const T*, index_t, index_t,  \
                              Metric, T*);                                                        \
  template bool rescore_top_k<T>(const T*, const T*, const std::vector<KeyBlock<T>>&, index_t,    \
                                 Metric, const index_t*, index_t, index_t, index_t*, T*);         \
  template bool rescore_top_k<T>(const T*, const T*, const KeyRowOf<T>&, index_t, Metric,         \
                                 const index_t*, index_t, index_t, index_t*, T*);                 \
  template bool search<T>(const T*, index_t, index_t, const std::vector<KeyBlock<T>>&, index_t,   \
                          Metric, index_t*, T*);                                                  \
  template void topk<T>(const T*, index_t, const T*, index_t, index_t, index_t, Metric, index_t*, \
                        T*, const char*, const char*);
LARIMAR_INSTANTIATE(float)
LARIMAR_INSTANTIATE(double)
#undef LARIMAR_INSTANTIATE

}  // namespace larimar
