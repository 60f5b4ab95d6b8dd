// The fixed-key memory of Nelson et al. (docs/DESIGN.md section 2.7): keys R grow with the
// context, values M hold the least-squares write of what each key addressed.
#pragma once

#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

#include "larimar/common.hpp"
#include "larimar/int8_keys.hpp"
#include "larimar/topk.hpp"

namespace larimar {

// What a store keeps of its keys for search: the float keys only (search scans them); the
// float keys and their int8 codes (search_int8: a quarter of the bytes scanned, the same
// exact result); or the codes only, each key becoming its codes' decoding scale * code
// (lossy, about a quarter of the float32 bytes; search is exact over the decoded keys).
enum class KeyCodes { None, Int8, Int8Only };
// "none", "int8" or "int8-only"; anything else is an InvalidArgument naming `key_codes`.
KeyCodes parse_key_codes(const std::string& name);
std::string key_codes_name(KeyCodes codes);

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

template <class T>
class KeyValueStore {
 public:
  // merge_identical: a key bitwise identical to a stored one shares its slot (the fixed-key
  // memory of the paper); false keeps every row apart (rows keyed by content that may
  // coincide for distinct texts, e.g. an uncased encoder's "Apple." and "apple.").
  KeyValueStore(index_t key_dim, index_t value_dim, Metric metric, bool merge_identical = true,
                KeyCodes key_codes = KeyCodes::None);

  // Appends rows. With merge_identical, a key bitwise identical to a stored key (or to an
  // earlier row of the same call) is not appended again: with one-hot addresses the
  // least-squares value of a slot is the mean of the values written to it, so that slot's
  // value becomes the running mean and its id is returned. All-or-nothing: on any error
  // nothing changes.
  void add(const T* keys, const T* values, index_t n, index_t* ids_out);

  // Soft write of existing slots: each row is addressed by its top_k keys nearest to query
  // (Gaussian weights, alpha), and the touched values become the least-squares solution of
  // the new rows plus the slots' past writes (each slot's past rows weigh as its count).
  void write(const T* queries, const T* values, index_t n, index_t top_k, double alpha);

  void search(const T* queries, index_t nq, index_t k, index_t* ids, T* scores) const;
  // out (nq x value_dim): no alpha (std::nullopt) reads the best slot's value exactly and
  // needs k = 1; with alpha (checked by check_alpha), Gaussian weights over the top k by
  // squared distance.
  void read(const T* queries, index_t nq, index_t k, std::optional<double> alpha, T* out) const;

  // Values by row id (FAISS's reconstruct_n): out (n x value_dim). Every id is checked
  // before anything is copied.
  void reconstruct(const index_t* ids, index_t n, T* out) const;
  // Squared norms |key|^2 of row ids, as stored for search (out (n)): what a soft read over
  // hits gathered from several stores needs for the inner-product distances. Ids checked
  // first, as in reconstruct.
  void key_sq_norms(const index_t* ids, index_t n, T* out) const;
  // search, then the values of the hits (FAISS's search_and_reconstruct) under one read
  // lock, so a concurrent add cannot slip in between: values_out (nq x k x value_dim).
  void search_and_reconstruct(const T* queries, index_t nq, index_t k, index_t* ids, T* scores,
                              T* values_out) const;

  index_t size() const;
  bool merge_identical() const { return merge_; }
  index_t key_dim() const { return d_; }
  index_t value_dim() const { return v_; }
  Metric metric() const { return metric_; }
  KeyCodes key_codes() const { return codes_; }
  // Host bytes of the stored rows, write counts and key index (reserved false), or of all
  // the memory the store holds, allocated row capacity included (reserved true).
  std::size_t bytes(bool reserved) const;
  // Copies of the stored keys (n x key_dim), values (n x value_dim) and counts (n), at most
  // max_rows of them (the rows the caller allocated), under one read lock; they return the
  // rows copied. A caller's size() can be stale by then: a concurrent add grows the store,
  // an assign may shrink it, and neither may make a copy write past the caller's buffer.
  index_t copy_keys(T* out, index_t max_rows) const;
  index_t copy_values(T* out, index_t max_rows) const;
  index_t copy_counts(double* out, index_t max_rows) const;
  // An int8-only store's (or an int8 one's) codes (n x key_dim, as quantize_int8_key writes
  // them) and scales (n), at most max_rows rows, under one read lock; returns the rows copied.
  index_t copy_codes(std::int8_t* codes, T* scales, index_t max_rows) const;
  // Appends saved rows of an int8-only store: keys as their codes (n x key_dim, each in
  // [-63, 63]) and scales (n, finite, >= 0), so that a loaded store holds the saved keys bit for
  // bit (quantising their decoding again need not give the same codes). As append_saved.
  void append_codes(const std::int8_t* codes, const T* scales, const T* values,
                    const double* counts, index_t n);
  // Replaces the whole content (used by load). counts: rows written per slot.
  void assign(const T* keys, const T* values, const double* counts, index_t n);
  // Appends saved rows with their counts (a load read in blocks, into a fresh store): every
  // key must be new, as in a saved merging store. A refused block leaves the rows appended
  // before it; the loader then drops the whole store.
  void append_saved(const T* keys, const T* values, const double* counts, index_t n);

 private:
  struct Chunk {
    std::unique_ptr<T[]> keys, values, sq_norms;
    // With int8 codes: the codes in tiles, and per row scale, err, norm, inv_norm (4 runs of
    // chunk_rows_) and the code sums (see Int8Rows).
    // calloc'd: zero (the padding rows of a tile) without touching the pages, so that a
    // chunk's unused capacity costs no resident memory until rows arrive
    std::unique_ptr<std::int8_t[], FreeDeleter> codes;
    std::unique_ptr<T[]> code_facts;
    std::unique_ptr<std::int32_t[]> code_sums;
  };
  // Rows per chunk: 16384, fewer for wide rows so that one chunk stays <= 64 MiB (a store
  // of a few wide rows must not reserve hundreds of MiB up front).
  static constexpr index_t kMaxChunkRows = 16384;
  static constexpr double kMaxChunkBytes = 64.0 * 1024 * 1024;

  bool float_keys() const { return codes_ != KeyCodes::Int8Only; }
  bool has_codes() const { return codes_ != KeyCodes::None; }
  // Numbers of T a row keeps: its float key (unless int8-only), value and squared norm.
  index_t floats_per_row() const { return (float_keys() ? d_ : 0) + v_ + 1; }
  // add() of keys (n x d) as stored: with codes (n x d) and scales (n) given, an int8-only
  // store's decoded keys and their codes.
  void add_rows(const T* keys, const std::int8_t* codes, const T* scales, const T* values,
                index_t n, index_t* ids_out);
  const T* key_row(index_t id) const;  // float keys only
  // The stored key of id into out (d): its float row, or its codes' decoding.
  void key_of(index_t id, T* out) const;
  T* value_row(index_t id);
  const T* value_row(index_t id) const;
  std::vector<KeyBlock<T>> blocks() const;
  std::vector<Int8Rows<T>> int8_blocks() const;  // empty without codes
  Chunk new_chunk() const;
  std::uint64_t hash_key(const T* key) const;
  index_t find_key(const T* key, std::uint64_t hash) const;
  void check_queries(const T* queries, index_t nq, const char* arg) const;
  T key_sq_norm(index_t id) const;
  // copy_keys, copy_values and copy_codes: copy(i) for the first min(size, max_rows) rows,
  // under the read lock; returns the rows copied.
  template <class Copy>
  index_t copy_rows(index_t max_rows, Copy copy) const;
  // Turns the top-k scores of each query (nq x k, in place) into Gaussian weights.
  void hit_weights(const T* queries, index_t nq, index_t k, const index_t* ids, T* scores,
                   double alpha) const;
  void search_checked(const T* queries, index_t nq, index_t k, index_t* ids, T* scores) const;
  void read_unlocked(const T* queries, index_t nq, index_t k, std::optional<double> alpha,
                     T* out) const;

  index_t d_, v_;
  Metric metric_;
  bool merge_;
  KeyCodes codes_;
  index_t chunk_rows_ = kMaxChunkRows;
  index_t size_ = 0;
  std::vector<Chunk> chunks_;
  std::vector<double> counts_;
  std::unordered_multimap<std::uint64_t, index_t> by_hash_;
  mutable std::shared_mutex mutex_;  // readers share, writers are exclusive
};

// Exact search over keys the caller owns and keeps alive (n x d, e.g. memory-mapped read-only
// from a saved store's file): one pass checks them finite and builds their squared norms,
// and the int8 codes when asked, which the view keeps; the keys themselves are only read,
// so a view over a file of float32 keys holds 4 bytes a key, or d + 24 with codes (a quarter
// of the keys' 4 d bytes): a file larger than RAM can be searched.
template <class T>
class KeyView {
 public:
  // projected_screen: hinted cosine searches may use a ProjectedScreen (see search);
  // coarse_screen: with its coarse screen where it has the dimensions for one;
  // neighbourhoods: with its anchors' neighbourhoods.
  KeyView(const T* keys, index_t n, index_t d, Metric metric, KeyCodes key_codes,
          bool projected_screen = true, bool coarse_screen = true, bool neighbourhoods = true);
  // As KeyValueStore::search: the same ids and score bits for the same keys. hints (nq, h
  // row ids; h = 0: none): keys each query's top k likely holds, which with int8 codes start
  // the screen's bar (search_int8); the result does not depend on them.
  void search(const T* queries, index_t nq, index_t k, index_t* ids, T* scores,
              const index_t* hints = nullptr, index_t h = 0) const;
  // Squared norms of row ids (out (n)), ids checked first.
  void key_sq_norms(const index_t* ids, index_t n, T* out) const;
  index_t size() const { return n_; }
  index_t key_dim() const { return d_; }
  Metric metric() const { return metric_; }
  KeyCodes key_codes() const { return codes_; }
  bool keys_may_be_mapped() const { return keys_may_be_mapped_; }
  // The projected screen hinted cosine searches of a large int8 view start with
  // (ProjectedScreen, built on the first): its dimensions (0 before or without one), those of
  // its coarse screen (0 without one), the queries it has answered, how many of those the
  // coarse screen did and how many its anchors' neighbourhoods did, and the neighbourhoods it
  // has found.
  index_t projected_dims() const { return screen() ? screen()->dims() : 0; }
  index_t projected_coarse_dims() const { return screen() ? screen()->coarse_dims() : 0; }
  std::int64_t projected_answers() const { return screen() ? screen()->answers() : 0; }
  std::int64_t projected_coarse_answers() const {
    return screen() ? screen()->coarse_answers() : 0;
  }
  std::int64_t projected_neighbour_answers() const {
    return screen() ? screen()->neighbour_answers() : 0;
  }
  std::int64_t projected_neighbourhoods() const {
    return screen() ? screen()->neighbourhoods() : 0;
  }
  // Bytes the view itself holds (norms, codes and their facts, the projected screen once
  // built), not the keys'.
  std::size_t bytes() const;

 private:
  std::vector<KeyBlock<T>> blocks() const { return {{keys_, sq_norms_.data(), n_, 0}}; }
  // The projected screen once built (null before), for readers outside its once-flag.
  const ProjectedScreen<T>* screen() const {
    return projected_ready_.load(std::memory_order_acquire);
  }

  const T* keys_;
  index_t n_, d_;
  Metric metric_;
  KeyCodes codes_;
  bool projected_screen_, coarse_screen_, neighbourhoods_;
  bool keys_may_be_mapped_;  // keys on disk once the view had read them: read them sparingly
  mutable std::once_flag projected_once_;
  mutable std::unique_ptr<ProjectedScreen<T>> projected_;
  // projected_ once built, for readers outside the once-flag (a search may be building it)
  mutable std::atomic<const ProjectedScreen<T>*> projected_ready_{nullptr};
  std::vector<T> sq_norms_;
  std::vector<std::int8_t> codes_buf_;
  std::vector<T> facts_;  // scale, err, norm, inv_norm: 4 runs of n
  std::vector<std::int32_t> sums_;
};

}  // namespace larimar
