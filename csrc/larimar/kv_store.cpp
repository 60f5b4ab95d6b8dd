#include "larimar/kv_store.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <new>

#include "larimar/address.hpp"
#include "larimar/sparse_lstsq.hpp"

namespace larimar {

KeyCodes parse_key_codes(const std::string& name) {
  if (name == "none") return KeyCodes::None;
  if (name == "int8") return KeyCodes::Int8;
  if (name == "int8-only") return KeyCodes::Int8Only;
  fail("key_codes", "expected \"none\", \"int8\" or \"int8-only\", got \"" + name + "\"");
}

std::string key_codes_name(KeyCodes codes) {
  return codes == KeyCodes::Int8 ? "int8" : codes == KeyCodes::Int8Only ? "int8-only" : "none";
}

namespace {
// The codes' integer dot products stay within int32: 127 * 127 * dims < 2^31 (query codes
// reach 127, key codes 63).
constexpr index_t kMaxInt8Dim = 65536;

// 1 <= k <= the keys there are: what every search, read and write through the keys needs.
void check_search_k(index_t k, index_t size) {
  require(k >= 1 && k <= size, "k",
          "expected 1 <= k <= number of stored keys (" + str(size) + "), got " + str(k));
}

// Saved write counts: finite and positive (every saved slot was written).
void check_saved_counts(const double* counts, index_t n) {
  check_finite(counts, n, "counts");
  for (index_t i = 0; i < n; ++i)
    require(counts[i] > 0, "counts", "expected positive write counts");
}

// Every row id in [0, size), all checked before any is used.
void check_row_ids(const index_t* ids, index_t n, index_t size, const std::string& arg = "ids") {
  require(n >= 0, arg, "expected a non-negative number of ids");
  for (index_t i = 0; i < n; ++i)
    require(ids[i] >= 0 && ids[i] < size, arg,
            "expected row ids in [0, " + str(size) + "), got " + str(ids[i]));
}

// The exact top k over the blocks, through their int8 codes when there are some (int8 empty:
// none); finite keys and queries are the caller's, so only overflow is left to refuse.
template <class T>
void search_keys(const T* queries, index_t nq, index_t d, const std::vector<KeyBlock<T>>& blocks,
                 const std::vector<Int8Rows<T>>& int8, index_t k, Metric metric, index_t* ids,
                 T* scores, bool keys_may_be_mapped, const index_t* hints = nullptr, index_t h = 0,
                 const ProjectedScreen<T>* projected = nullptr) {
  const bool finite = int8.empty() ? search(queries, nq, d, blocks, k, metric, ids, scores)
                                   : search_int8(queries, nq, d, blocks, int8, k, metric, ids,
                                                 scores, keys_may_be_mapped, hints, h, projected);
  if (!finite) fail("Q", "scores overflow the range of the dtype (values too large to compare)");
}
}  // namespace

template <class T>
KeyValueStore<T>::KeyValueStore(index_t key_dim, index_t value_dim, Metric metric,
                                bool merge_identical, KeyCodes key_codes)
    : d_(key_dim), v_(value_dim), metric_(metric), merge_(merge_identical), codes_(key_codes) {
  check_dim(key_dim, "key_dim", "key dimension");
  check_dim(value_dim, "value_dim", "value dimension");
  if (has_codes())
    require(key_dim <= kMaxInt8Dim, "key_dim",
            "expected at most " + str(kMaxInt8Dim) + " with int8 key codes, got " + str(key_dim));
  const double row_bytes = double(sizeof(T)) * double(floats_per_row()) +
                           (has_codes() ? double(int8_padded_dim(key_dim)) : 0.0);
  // Whole code tiles per chunk, so that a tile never spans two chunks.
  chunk_rows_ = static_cast<index_t>(
                    std::max(64.0, std::min(double(kMaxChunkRows), kMaxChunkBytes / row_bytes))) /
                kInt8TileRows * kInt8TileRows;
}

template <class T>
typename KeyValueStore<T>::Chunk KeyValueStore<T>::new_chunk() const {
  Chunk chunk;
  if (float_keys()) chunk.keys.reset(new T[chunk_rows_ * d_]);
  chunk.values.reset(new T[chunk_rows_ * v_]);
  chunk.sq_norms.reset(new T[chunk_rows_]);
  if (has_codes()) {
    const std::size_t code_bytes = static_cast<std::size_t>(chunk_rows_ * int8_padded_dim(d_));
    chunk.codes.reset(static_cast<std::int8_t*>(std::calloc(code_bytes, 1)));  // padding is 0
    if (!chunk.codes) throw std::bad_alloc();
    chunk.code_facts.reset(new T[4 * chunk_rows_]);
    chunk.code_sums.reset(new std::int32_t[chunk_rows_]);
  }
  return chunk;
}

template <class T>
std::vector<Int8Rows<T>> KeyValueStore<T>::int8_blocks() const {
  std::vector<Int8Rows<T>> out;
  for (index_t c = 0; has_codes() && c * chunk_rows_ < size_; ++c) {
    const Chunk& ch = chunks_[c];
    out.push_back(int8_rows(ch.codes.get(), ch.code_facts.get(), ch.code_sums.get(), chunk_rows_));
  }
  return out;
}

template <class T>
const T* KeyValueStore<T>::key_row(index_t id) const {
  return chunks_[id / chunk_rows_].keys.get() + (id % chunk_rows_) * d_;
}

template <class T>
void KeyValueStore<T>::key_of(index_t id, T* out) const {
  if (float_keys()) {
    std::memcpy(out, key_row(id), sizeof(T) * d_);
    return;
  }
  const Chunk& chunk = chunks_[id / chunk_rows_];
  const index_t slot = id % chunk_rows_;
  decode_int8_slot(chunk.codes.get(), chunk.code_facts[slot], d_, slot, out);  // scales first
}

template <class T>
T* KeyValueStore<T>::value_row(index_t id) {
  return chunks_[id / chunk_rows_].values.get() + (id % chunk_rows_) * v_;
}

template <class T>
const T* KeyValueStore<T>::value_row(index_t id) const {
  return chunks_[id / chunk_rows_].values.get() + (id % chunk_rows_) * v_;
}

template <class T>
T KeyValueStore<T>::key_sq_norm(index_t id) const {
  return chunks_[id / chunk_rows_].sq_norms[id % chunk_rows_];
}

template <class T>
std::uint64_t KeyValueStore<T>::hash_key(const T* key) const {
  // Bitwise identity is what counts (+0.0 and -0.0 differ): hash the raw bytes, eight at a
  // time, with a multiply-xorshift mix; equal hashes are confirmed by memcmp.
  const std::size_t bytes = sizeof(T) * static_cast<std::size_t>(d_);
  const unsigned char* p = reinterpret_cast<const unsigned char*>(key);
  std::uint64_t h = 0x9E3779B97F4A7C15ull ^ bytes;
  std::size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001B3ull;
  return h ^ (h >> 29);
}

template <class T>
index_t KeyValueStore<T>::find_key(const T* key, std::uint64_t hash) const {
  auto range = by_hash_.equal_range(hash);
  std::vector<T> stored(range.first != range.second && !float_keys() ? d_ : 0);
  for (auto it = range.first; it != range.second; ++it) {
    const T* row = float_keys() ? key_row(it->second) : stored.data();
    if (!float_keys()) key_of(it->second, stored.data());
    if (std::memcmp(row, key, sizeof(T) * d_) == 0) return it->second;
  }
  return -1;
}

template <class T>
std::vector<KeyBlock<T>> KeyValueStore<T>::blocks() const {
  std::vector<KeyBlock<T>> out;
  for (index_t c = 0; c < static_cast<index_t>(chunks_.size()); ++c) {
    const index_t rows = std::min(chunk_rows_, size_ - c * chunk_rows_);
    if (rows > 0)
      out.push_back({chunks_[c].keys.get(), chunks_[c].sq_norms.get(), rows, c * chunk_rows_});
  }
  return out;
}

template <class T>
void KeyValueStore<T>::add(const T* keys, const T* values, index_t n, index_t* ids_out) {
  check_dim(n, "keys", "number of rows");
  check_finite(keys, n * d_, "keys");
  check_finite(values, n * v_, "values");
  if (float_keys()) return add_rows(keys, nullptr, nullptr, values, n, ids_out);
  // An int8-only store keeps each key as its codes: from here on the key is their decoding.
  check_allocation(double(n) * d_ * (sizeof(T) + 1.0), "keys", "coding " + str(n) + " keys");
  std::vector<std::int8_t> codes(static_cast<std::size_t>(n * d_));
  std::vector<T> scales(static_cast<std::size_t>(n)), decoded(static_cast<std::size_t>(n * d_));
  for (index_t i = 0; i < n; ++i) {
    scales[i] = quantize_int8_key(keys + i * d_, d_, codes.data() + i * d_);
    decode_int8_key(codes.data() + i * d_, scales[i], d_, decoded.data() + i * d_);
  }
  add_rows(decoded.data(), codes.data(), scales.data(), values, n, ids_out);
}

template <class T>
void KeyValueStore<T>::add_rows(const T* keys, const std::int8_t* codes, const T* scales,
                                const T* values, index_t n, index_t* ids_out) {
  std::unique_lock<std::shared_mutex> lock(mutex_);

  // Plan without touching the store: which rows are new, which repeat a key.
  std::vector<std::uint64_t> hashes(merge_ ? n : 0);
  for (index_t i = 0; i < static_cast<index_t>(hashes.size()); ++i)
    hashes[i] = hash_key(keys + i * d_);
  std::unordered_multimap<std::uint64_t, index_t> batch_new;  // hash -> row in this call
  std::vector<index_t> target(n);  // >= 0 existing id, < 0: -(1 + new slot ordinal)
  index_t fresh = 0;
  for (index_t i = 0; i < n; ++i) {
    if (!merge_) {  // every row is a slot of its own
      target[i] = -(1 + fresh++);
      continue;
    }
    index_t id = find_key(keys + i * d_, hashes[i]);
    bool found = id >= 0;
    auto range = batch_new.equal_range(hashes[i]);
    for (auto it = range.first; !found && it != range.second; ++it)
      if (std::memcmp(keys + it->second * d_, keys + i * d_, sizeof(T) * d_) == 0)
        id = target[it->second], found = true;
    if (found) {
      target[i] = id;
    } else {
      target[i] = -(1 + fresh++);
      batch_new.emplace(hashes[i], i);
    }
  }

  // Allocate everything that can fail before the first change.
  const index_t new_size = size_ + fresh;
  const index_t rows = fresh + chunk_rows_;
  check_allocation(double(rows) * (sizeof(T) * double(floats_per_row()) + 64.0) +
                       (has_codes() ? double(int8_rows_bytes<T>(rows, d_)) : 0.0),
                   "keys", "storing " + str(fresh) + " new keys");
  std::vector<Chunk> new_chunks;
  for (index_t have = static_cast<index_t>(chunks_.size()) * chunk_rows_; have < new_size;
       have += chunk_rows_)
    new_chunks.push_back(new_chunk());
  chunks_.reserve(chunks_.size() + new_chunks.size());
  counts_.reserve(new_size);
  if (merge_) by_hash_.reserve(new_size);

  // Commit.
  for (auto& chunk : new_chunks) chunks_.push_back(std::move(chunk));
  for (index_t i = 0; i < n; ++i) {
    const T* value = values + i * v_;
    index_t id = target[i];
    if (id < 0) {
      const index_t first_row = -(id + 1);
      id = size_ + first_row;
      if (id == static_cast<index_t>(counts_.size())) {  // first row with this key
        const index_t slot = id % chunk_rows_;
        Chunk& chunk = chunks_[id / chunk_rows_];
        if (float_keys()) std::memcpy(chunk.keys.get() + slot * d_, keys + i * d_, sizeof(T) * d_);
        std::memcpy(chunk.values.get() + slot * v_, value, sizeof(T) * v_);
        row_sq_norms(keys + i * d_, 1, d_, chunk.sq_norms.get() + slot);
        const Int8Slots<T> code_slots = int8_slots(chunk.codes.get(), chunk.code_facts.get(),
                                                   chunk.code_sums.get(), chunk_rows_);
        if (codes_ == KeyCodes::Int8)
          quantize_int8_keys(keys + i * d_, chunk.sq_norms.get() + slot, 1, d_, metric_, code_slots,
                             slot);
        else if (codes_ == KeyCodes::Int8Only)
          put_int8_key(keys + i * d_, chunk.sq_norms[slot], codes + i * d_, scales[i], d_, metric_,
                       code_slots, slot);
        counts_.push_back(1.0);
        if (merge_) by_hash_.emplace(hashes[i], id);
        ids_out[i] = id;
        continue;
      }
    }
    // Running mean: the one-hot least-squares value of a slot written count + 1 times.
    T* slot_value = value_row(id);
    const double count = counts_[id];
    for (index_t j = 0; j < v_; ++j)
      slot_value[j] = static_cast<T>((count * slot_value[j] + value[j]) / (count + 1.0));
    counts_[id] = count + 1.0;
    ids_out[i] = id;
  }
  size_ = new_size;
}

template <class T>
void KeyValueStore<T>::search_checked(const T* queries, index_t nq, index_t k, index_t* ids,
                                      T* scores) const {
  // Stored keys and the queries are finite (checked on the way in).
  search_keys(queries, nq, d_, blocks(), int8_blocks(), k, metric_, ids, scores, false);
}

template <class T>
void KeyValueStore<T>::hit_weights(const T* queries, index_t nq, index_t k, const index_t* ids,
                                   T* scores, double alpha) const {
  // |q|^2 and the hits' stored |key|^2 enter the distances of the inner-product metric only;
  // the formula itself is the kernel's one (address.hpp), shared with gaussian_read_scored.
  std::vector<T> q_sq, k_sq;
  if (metric_ == Metric::InnerProduct) {
    q_sq.resize(nq);
    row_sq_norms(queries, nq, d_, q_sq.data());
    k_sq.resize(nq * k);
    for (index_t i = 0; i < nq * k; ++i) k_sq[i] = key_sq_norm(ids[i]);
  }
  gaussian_weights_from_scores(scores, nq, k, metric_, q_sq.data(), k_sq.data(), alpha);
}

template <class T>
void KeyValueStore<T>::check_queries(const T* queries, index_t nq, const char* arg) const {
  check_dim(nq, arg, "number of queries");
  check_finite(queries, nq * d_, arg);
}

template <class T>
void KeyValueStore<T>::search(const T* queries, index_t nq, index_t k, index_t* ids,
                              T* scores) const {
  check_queries(queries, nq, "Q");
  std::shared_lock<std::shared_mutex> lock(mutex_);
  check_search_k(k, size_);
  search_checked(queries, nq, k, ids, scores);
}

template <class T>
void KeyValueStore<T>::read(const T* queries, index_t nq, index_t k, std::optional<double> alpha,
                            T* out) const {
  check_queries(queries, nq, "Q");
  if (alpha) check_alpha(*alpha);
  std::shared_lock<std::shared_mutex> lock(mutex_);
  read_unlocked(queries, nq, k, alpha, out);
}

template <class T>
void KeyValueStore<T>::read_unlocked(const T* queries, index_t nq, index_t k,
                                     std::optional<double> alpha, T* out) const {
  check_search_k(k, size_);
  const bool soft = alpha.has_value();
  if (!soft) check_hard_read_k(k);
  std::vector<index_t> ids(nq * k);
  std::vector<T> scores(nq * k);
  search_checked(queries, nq, k, ids.data(), scores.data());
  if (!soft) {
    for (index_t i = 0; i < nq; ++i) std::memcpy(out + i * v_, value_row(ids[i]), sizeof(T) * v_);
    return;
  }
  hit_weights(queries, nq, k, ids.data(), scores.data(), *alpha);
  std::vector<const T*> rows(nq * k);
  for (index_t i = 0; i < nq * k; ++i) rows[i] = value_row(ids[i]);
  weighted_sum_of_rows(scores.data(), rows.data(), nq, k, v_, out);
}

template <class T>
void KeyValueStore<T>::reconstruct(const index_t* ids, index_t n, T* out) const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  check_row_ids(ids, n, size_);
  for (index_t i = 0; i < n; ++i) std::memcpy(out + i * v_, value_row(ids[i]), sizeof(T) * v_);
}

template <class T>
void KeyValueStore<T>::key_sq_norms(const index_t* ids, index_t n, T* out) const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  check_row_ids(ids, n, size_);
  for (index_t i = 0; i < n; ++i) out[i] = key_sq_norm(ids[i]);
}

template <class T>
void KeyValueStore<T>::search_and_reconstruct(const T* queries, index_t nq, index_t k, index_t* ids,
                                              T* scores, T* values_out) const {
  check_queries(queries, nq, "Q");
  std::shared_lock<std::shared_mutex> lock(mutex_);
  check_search_k(k, size_);
  search_checked(queries, nq, k, ids, scores);
  for (index_t i = 0; i < nq * k; ++i)
    std::memcpy(values_out + i * v_, value_row(ids[i]), sizeof(T) * v_);
}

template <class T>
void KeyValueStore<T>::write(const T* queries, const T* values, index_t n, index_t top_k,
                             double alpha) {
  check_queries(queries, n, "Q");
  check_finite(values, n * v_, "values");
  check_alpha(alpha);
  std::unique_lock<std::shared_mutex> lock(mutex_);
  check_search_k(top_k, size_);
  std::vector<index_t> ids(n * top_k);
  std::vector<T> weights(n * top_k);
  // Address by the store's metric, weigh by squared distance (as read does).
  search_checked(queries, n, top_k, ids.data(), weights.data());
  hit_weights(queries, n, top_k, ids.data(), weights.data(), alpha);
  // Solve on the touched slots only: gather them into a compact problem.
  std::unordered_map<index_t, index_t> local;
  std::vector<index_t> slots, local_ids(n * top_k);
  for (index_t i = 0; i < n * top_k; ++i) {
    auto it = local.find(ids[i]);
    if (it == local.end())
      it = local.emplace(ids[i], static_cast<index_t>(slots.size())).first, slots.push_back(ids[i]);
    local_ids[i] = it->second;
  }
  const index_t t = static_cast<index_t>(slots.size());
  std::vector<T> prior(t * v_), solved(t * v_);
  std::vector<double> slot_counts(t);
  for (index_t j = 0; j < t; ++j) {
    std::memcpy(prior.data() + j * v_, value_row(slots[j]), sizeof(T) * v_);
    slot_counts[j] = counts_[slots[j]];
  }
  SparseLstsqOptions options;
  options.slot_weights = slot_counts.data();
  sparse_lstsq_write(local_ids.data(), weights.data(), n, top_k, values, v_, t, prior.data(),
                     solved.data(), options);
  for (index_t j = 0; j < t; ++j) {
    std::memcpy(value_row(slots[j]), solved.data() + j * v_, sizeof(T) * v_);
  }
  // Each row adds w^2 to its slots' precision (the diagonal of W^T W).
  for (index_t i = 0; i < n * top_k; ++i) counts_[ids[i]] += double(weights[i]) * weights[i];
}

template <class T>
index_t KeyValueStore<T>::size() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  return size_;
}

template <class T>
std::size_t KeyValueStore<T>::bytes(bool reserved) const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  // Rows: the stored ones, or every row of the allocated chunks; the key index: a node per
  // key (hash, id, the list link and the cached hash) and a pointer per bucket.
  const std::size_t rows = reserved ? chunks_.size() * static_cast<std::size_t>(chunk_rows_)
                                    : static_cast<std::size_t>(size_);
  const std::size_t counts = reserved ? counts_.capacity() : counts_.size();
  const std::size_t codes = has_codes() ? int8_rows_bytes<T>(static_cast<index_t>(rows), d_) : 0;
  return rows * sizeof(T) * static_cast<std::size_t>(floats_per_row()) + codes +
         counts * sizeof(double) +
         by_hash_.size() * (sizeof(std::uint64_t) + sizeof(index_t) + 2 * sizeof(void*)) +
         by_hash_.bucket_count() * sizeof(void*);
}

template <class T>
template <class Copy>
index_t KeyValueStore<T>::copy_rows(index_t max_rows, Copy copy) const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  const index_t n = std::min(size_, max_rows);
  for (index_t i = 0; i < n; ++i) copy(i);
  return n;
}

template <class T>
index_t KeyValueStore<T>::copy_keys(T* out, index_t max_rows) const {
  return copy_rows(max_rows, [&](index_t i) { key_of(i, out + i * d_); });
}

template <class T>
index_t KeyValueStore<T>::copy_codes(std::int8_t* codes, T* scales, index_t max_rows) const {
  require(has_codes(), "key_codes", "the store keeps no codes (key_codes \"none\")");
  return copy_rows(max_rows, [&](index_t i) {
    const Chunk& chunk = chunks_[i / chunk_rows_];
    int8_slot_codes(chunk.codes.get(), d_, i % chunk_rows_, codes + i * d_);
    scales[i] = chunk.code_facts[i % chunk_rows_];  // facts: the scales first
  });
}

template <class T>
index_t KeyValueStore<T>::copy_values(T* out, index_t max_rows) const {
  return copy_rows(max_rows,
                   [&](index_t i) { std::memcpy(out + i * v_, value_row(i), sizeof(T) * v_); });
}

template <class T>
index_t KeyValueStore<T>::copy_counts(double* out, index_t max_rows) const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  const index_t n = std::min(size_, max_rows);
  std::copy(counts_.begin(), counts_.begin() + n, out);
  return n;
}

template <class T>
void KeyValueStore<T>::append_saved(const T* keys, const T* values, const double* counts,
                                    index_t n) {
  require(n >= 0, "keys", "expected a non-negative number of rows");
  if (n == 0) return;
  check_finite(keys, n * d_, "keys");
  check_finite(values, n * v_, "values");
  check_saved_counts(counts, n);
  const index_t before = size();
  std::vector<index_t> ids(n);
  add(keys, values, n, ids.data());
  std::unique_lock<std::shared_mutex> lock(mutex_);
  require(size_ == before + n, "keys", "holds duplicate keys; a saved merging store never does");
  std::copy(counts, counts + n, counts_.begin() + before);
}

template <class T>
void KeyValueStore<T>::append_codes(const std::int8_t* codes, const T* scales, const T* values,
                                    const double* counts, index_t n) {
  require(codes_ == KeyCodes::Int8Only, "codes",
          "only an int8-only store takes its keys as codes (key_codes \"int8-only\")");
  require(n >= 0, "codes", "expected a non-negative number of rows");
  if (n == 0) return;
  for (index_t i = 0; i < n * d_; ++i)
    require(codes[i] >= -kInt8KeyLevels && codes[i] <= kInt8KeyLevels, "codes",
            "expected codes in [-" + str(kInt8KeyLevels) + ", " + str(kInt8KeyLevels) + "]");
  check_finite(scales, n, "scales");
  for (index_t i = 0; i < n; ++i)  // codes reach 63: 63 times a scale must stay finite
    require(scales[i] >= 0 && std::isfinite(scales[i] * T(kInt8KeyLevels)), "scales",
            "expected non-negative scales whose codes decode to finite keys");
  check_finite(values, n * v_, "values");
  check_saved_counts(counts, n);
  const index_t before = size();
  // Decoded 256 rows at a time (384 KB for 384-number keys): a load's peak is the store.
  constexpr index_t kPiece = 256;
  std::vector<T> decoded(static_cast<std::size_t>(std::min(n, kPiece) * d_));
  std::vector<index_t> ids(std::min(n, kPiece));
  for (index_t lo = 0; lo < n; lo += kPiece) {
    const index_t m = std::min(kPiece, n - lo);
    for (index_t i = 0; i < m; ++i)
      decode_int8_key(codes + (lo + i) * d_, scales[lo + i], d_, decoded.data() + i * d_);
    add_rows(decoded.data(), codes + lo * d_, scales + lo, values + lo * v_, m, ids.data());
  }
  std::unique_lock<std::shared_mutex> lock(mutex_);
  require(size_ == before + n, "codes", "holds duplicate keys; a saved merging store never does");
  std::copy(counts, counts + n, counts_.begin() + before);
}

template <class T>
void KeyValueStore<T>::assign(const T* keys, const T* values, const double* counts, index_t n) {
  KeyValueStore fresh(d_, v_, metric_, merge_, codes_);
  fresh.append_saved(keys, values, counts, n);
  std::unique_lock<std::shared_mutex> lock(mutex_);
  size_ = fresh.size_;
  chunks_.swap(fresh.chunks_);
  counts_.swap(fresh.counts_);
  by_hash_.swap(fresh.by_hash_);
}

template <class T>
KeyView<T>::KeyView(const T* keys, index_t n, index_t d, Metric metric, KeyCodes key_codes,
                    bool projected_screen, bool coarse_screen, bool neighbourhoods)
    : keys_(keys),
      n_(n),
      d_(d),
      metric_(metric),
      codes_(key_codes),
      projected_screen_(projected_screen),
      coarse_screen_(coarse_screen),
      neighbourhoods_(neighbourhoods) {
  require(key_codes != KeyCodes::Int8Only, "key_codes",
          "expected \"none\" or \"int8\" (a view searches float keys it does not own)");
  check_dim(n, "keys", "number of rows");
  check_dim(d, "keys", "key dimension");
  const bool int8 = codes_ == KeyCodes::Int8;
  if (int8)
    require(d <= kMaxInt8Dim, "keys",
            "expected at most " + str(kMaxInt8Dim) + " columns with int8 key codes, got " + str(d));
  const index_t rows = (n + kInt8TileRows - 1) / kInt8TileRows * kInt8TileRows;
  check_allocation(double(n) * sizeof(T) + (int8 ? double(int8_rows_bytes<T>(n, d)) : 0.0), "keys",
                   "the norms and codes of " + str(n) + " keys");
  sq_norms_.resize(static_cast<std::size_t>(n));
  codes_buf_.assign(int8 ? static_cast<std::size_t>(rows * int8_padded_dim(d)) : 0, 0);
  facts_.resize(int8 ? static_cast<std::size_t>(4 * n) : 0);
  sums_.resize(int8 ? static_cast<std::size_t>(n) : 0);
  const Int8Slots<T> slots = int8_slots(codes_buf_.data(), facts_.data(), sums_.data(), n);
  // One pass over the keys, a block at a time (whole code tiles): the check, the norms and
  // the codes of a block read it while it is in cache, so a file is read from disk once.
  constexpr index_t kRows = 4096;
  parallel_for((n + kRows - 1) / kRows, [&](index_t t) {
    const index_t first = t * kRows, count = std::min(kRows, n - first);
    const T* block = keys + first * d;
    check_finite(block, count * d, "keys");
    row_sq_norms(block, count, d, sq_norms_.data() + first);
    if (int8) quantize_int8_keys(block, sq_norms_.data() + first, count, d, metric, slots, first);
  });
  // Asked after the pass, which has read every key: a mapped file that fits in memory is
  // resident now (a model's weights mapped from their checkpoint, the slot snap's table), one
  // larger than memory is not. Asked before, the first view over a freshly loaded model's
  // table took it for keys on disk for good, and never used the projected screen.
  keys_may_be_mapped_ = may_read_from_disk(keys, static_cast<std::size_t>(n * d) * sizeof(T));
}

template <class T>
void KeyView<T>::search(const T* queries, index_t nq, index_t k, index_t* ids, T* scores,
                        const index_t* hints, index_t h) const {
  check_dim(nq, "Q", "number of queries");
  check_finite(queries, nq * d_, "Q");
  check_search_k(k, n_);
  if (h > 0) check_row_ids(hints, nq * h, n_, "hints");
  std::vector<Int8Rows<T>> int8;
  if (codes_ == KeyCodes::Int8)
    int8.push_back(int8_rows(codes_buf_.data(), facts_.data(), sums_.data(), n_));
  // A hinted cosine search of a large table in memory (the slot snap) starts with the screen
  // over its top principal directions: a third of the scan's products (RESULTS section 16).
  const bool project = h > 0 && projected_screen_ && codes_ == KeyCodes::Int8 &&
                       metric_ == Metric::Cosine && !keys_may_be_mapped_ &&
                       n_ >= kProjectedMinRows && d_ >= kProjectedMinDim;
  if (project)
    std::call_once(projected_once_, [&] {
      projected_ = std::make_unique<ProjectedScreen<T>>(keys_, sq_norms_.data(), n_, d_,
                                                        int8_padded_dim(d_ / 3), coarse_screen_,
                                                        neighbourhoods_);
      projected_ready_.store(projected_.get(), std::memory_order_release);
    });
  search_keys(queries, nq, d_, blocks(), int8, k, metric_, ids, scores, keys_may_be_mapped_, hints,
              h, project ? projected_.get() : nullptr);
}

template <class T>
void KeyView<T>::key_sq_norms(const index_t* ids, index_t n, T* out) const {
  check_row_ids(ids, n, n_);
  for (index_t i = 0; i < n; ++i) out[i] = sq_norms_[ids[i]];
}

template <class T>
std::size_t KeyView<T>::bytes() const {
  const ProjectedScreen<T>* p = screen();
  return sq_norms_.size() * sizeof(T) + codes_buf_.size() + facts_.size() * sizeof(T) +
         sums_.size() * sizeof(std::int32_t) + (p ? p->bytes() : 0);
}

template class KeyValueStore<float>;
template class KeyValueStore<double>;
template class KeyView<float>;
template class KeyView<double>;

}  // namespace larimar
