// Int8 key codes for exact search (docs/DESIGN.md section 2.6): each key is scalar-quantised
// with a scale of its own, the scan runs integer dot products over the codes (a quarter of
// the float32 bytes), and a rigorous bound on the quantisation error picks the shortlist that
// is re-scored by the float search's own arithmetic, so the result is the float top-k, bit
// for bit.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "larimar/common.hpp"
#include "larimar/topk.hpp"

namespace larimar {

// Keys per code tile. A tile stores its keys 4 dimensions at a time: group g holds, for each
// of the 16 keys, its bytes 4g .. 4g + 3 (64 bytes), so one vector load feeds a dot-product
// step of 16 keys against one broadcast group of the query.
constexpr index_t kInt8TileRows = 16;

// Dimensions stored per code row: d rounded up to a whole group of 4 (padding is zero).
inline index_t int8_padded_dim(index_t d) { return (d + 3) / 4 * 4; }

// The integer dot products the scan runs: AVX-512 VNNI, AVX2 or portable C++, the best the
// CPU has unless set otherwise (tests run every path the CPU can on one machine).
// Names: "auto", "avx512-vnni", "avx2", "scalar"; one the CPU lacks is an InvalidArgument.
void set_int8_isa(const std::string& name);
std::string int8_isa();
std::vector<std::string> int8_isas_supported();

// Integer dot products of nq query codes (each dp bytes, dp a multiple of 4, offset codes in
// [1, 127] as the scan quantises queries) with the keys of ntiles tiles: out[i * stride + j]
// = sum_t q_i,t code_j,t for the tiles' 16 * ntiles keys j, nq at most the path's block.
using Int8DotsFn = void (*)(const std::uint8_t* q, int nq, index_t dp, const std::int8_t* tiles,
                            index_t ntiles, std::int32_t* out, index_t stride);
struct Int8Dots {
  Int8DotsFn dots;
  int block;  // query rows per call
};
// The path in use (set_int8_isa), for other integer products over the same codes.
Int8Dots int8_dots();
// A query code is c + kInt8QueryOffset, c in [-kInt8QueryLevels, kInt8QueryLevels].
constexpr int kInt8QueryLevels = 63;
constexpr int kInt8QueryOffset = 64;

// What the scan needs of each key, for rows of one KeyBlock (id first_id + j is row j):
// codes in tiles (rows rounded up to whole tiles, the padding rows zero), and per key
// scale s_j (key ~ s_j * code), the code sum (the VNNI path's offset), err_j >= |key -
// s_j code| + gamma_d |key| (quantisation error plus the float sum's rounding), norm_j >=
// |s_j code|, and inv_norm_j = 1 / |key| as the search computes it (0 for a zero key).
template <class T>
struct Int8Rows {
  const std::int8_t* codes = nullptr;
  const T* scale = nullptr;
  const std::int32_t* code_sum = nullptr;
  const T* err = nullptr;
  const T* norm = nullptr;
  const T* inv_norm = nullptr;
};

// Codes and per-key facts of rows (n x d), written for slots first .. first + n - 1 of a
// chunk whose arrays are laid out as Int8Rows describes; sq_norms (n) are the keys' squared
// norms as the search keeps them. A cosine key of (near) zero norm gets unbounded facts: the
// search always re-scores it.
template <class T>
struct Int8Slots {
  std::int8_t* codes;
  T* scale;
  std::int32_t* code_sum;
  T* err;
  T* norm;
  T* inv_norm;
};

// The two views over codes, facts and sums as the stores keep them: the facts are 4 runs of
// `stride` (scale, err, norm, inv_norm).
template <class T>
Int8Slots<T> int8_slots(std::int8_t* codes, T* facts, std::int32_t* sums, index_t stride) {
  return {codes, facts, sums, facts + stride, facts + 2 * stride, facts + 3 * stride};
}
template <class T>
Int8Rows<T> int8_rows(const std::int8_t* codes, const T* facts, const std::int32_t* sums,
                      index_t stride) {
  return {codes, facts, sums, facts + stride, facts + 2 * stride, facts + 3 * stride};
}

template <class T>
void quantize_int8_keys(const T* keys, const T* sq_norms, index_t n, index_t d, Metric metric,
                        Int8Slots<T> out, index_t first);

// Keys kept as their codes only (KeyCodes::Int8Only): such a key is, from then on, its
// decoding scale * code computed in T, and the search is exact over these decoded keys.
// The largest code magnitude: a code row is refused outside [-kInt8KeyLevels, kInt8KeyLevels].
constexpr int kInt8KeyLevels = 63;
// A key's codes (d) by the same scalar quantisation as quantize_int8_keys; returns its scale.
template <class T>
T quantize_int8_key(const T* key, index_t d, std::int8_t* code);
// The key that codes (d) and scale stand for: out_t = scale * code_t, in T.
template <class T>
void decode_int8_key(const std::int8_t* code, T scale, index_t d, T* out);
// Slot `slot` of a chunk (as quantize_int8_keys writes it) takes the codes (d) and scale as
// given, with the facts that bound its scan against key (the float key the search scores:
// for an int8-only store, the decoding itself, so that only the float sum's rounding is left).
template <class T>
void put_int8_key(const T* key, T sq_norm, const std::int8_t* code, T scale, index_t d,
                  Metric metric, Int8Slots<T> out, index_t slot);
// The codes (d) of slot `slot` out of its tile, and the key they decode to (decode_int8_key,
// bit for bit) with the slot's scale.
void int8_slot_codes(const std::int8_t* codes, index_t d, index_t slot, std::int8_t* out);
// The inverse: codes (d) written into slot `slot` of the tiles at codes (padding zero).
void put_int8_slot_codes(const std::int8_t* code, index_t d, std::int8_t* codes, index_t slot);
template <class T>
void decode_int8_slot(const std::int8_t* codes, T scale, index_t d, index_t slot, T* out);

// Bytes of codes and per-key facts for `rows` rows (rows rounded up to whole tiles).
template <class T>
std::size_t int8_rows_bytes(index_t rows, index_t d);

// The exact top-k of search() (same ids, scores and order), scanning the int8 codes of each
// block (int8 must hold one Int8Rows per block) and re-scoring a shortlist from the float
// keys. A block without float keys (keys null: an int8-only store) is scored on its codes'
// decoding (decode_int8_key), as if those were its keys. Returns false when a re-scored score was
// not finite (as search does). keys_may_be_mapped: the float keys may be a file's memory map, so
// the shortlisted rows are asked of the OS together (posix_madvise WILLNEED) before they are read:
// their page faults overlap instead of waiting on the disk one row at a time. Keys not mapped:
// a query whose shortlist is wide (more than a sixteenth of the keys) is answered by search()
// itself, whose one product costs less than re-scoring that many scattered rows.
// hints (nq, h; valid ids, h = 0: none): keys each query's top k likely holds. With k distinct
// hints, the k-th best of their exact scores is a score the k-th best of all keys reaches, so
// the screen starts its bar there instead of at minus infinity: only keys that could beat the
// hints are kept. The result is the same with or without hints; only the time changes.
// projected (one block of keys, with hints): a ProjectedScreen of those keys tried first.
template <class T>
class ProjectedScreen;
template <class T>
bool search_int8(const T* queries, index_t nq, index_t d, const std::vector<KeyBlock<T>>& blocks,
                 const std::vector<Int8Rows<T>>& int8, index_t k, Metric metric, index_t* out_ids,
                 T* out_scores, bool keys_may_be_mapped = false, const index_t* hints = nullptr,
                 index_t h = 0, const ProjectedScreen<T>* projected = nullptr);

// A screen over the top principal directions of cosine keys, for searches that start from a
// floor (hints). With U (d x r) orthonormal, the unit key and query split as u = U p + w, and
// cos(q, k) = p_q . p_k + w_q . w_k <= p_q . p_k + |w_q| |w_k|; the first term is bounded from
// int8 codes of the r-dimensional p as the full scan bounds its products, the second by the
// residual norms, and gamma_d more covers the search's own rounding. Keys whose bound is
// below a query's floor score below it in the search too, so the ones left (survivors) hold
// the query's top k. U is the top of the eigenbasis of the unit rows' Gram (any orthonormal U
// is exact; this one makes the residuals small), the codes a third of the full scan's.
// A query whose floor is high (a slot close to its hinted token) is pruned as well by the
// first kCoarseDims directions alone, a twelfth of the products: such queries try that coarse
// screen first. Which ones do is decided on a stride sample of the keys (kCoarseSurvivors
// sampled keys for each one kept): a query none of the sample's keys can reach.
// Before either, a query whose floor is that of a key it is close to (its anchor: the hint
// whose score set the floor) needs no scan at all when that key's neighbourhood is known: on
// the unit sphere, a key x scoring at least the floor a (less the search's rounding) against
// q lies within twice q's angle to the anchor h, so cos(h, x) >= 2 a^2 - 1. The keys that
// close to h are found once per anchor (the screens above, run for h itself with the bar
// kNeighbourFloor, then re-scored in double) and kept; a query with 2 a^2 - 1 above that bar
// survives with those of them that reach its own bound. In the slot snap the high floors
// belong to a few hundred frequent tokens (RESULTS section 19), so a few hundred
// neighbourhoods answer a third to two thirds of an ingest's queries with no scan.
// Views that get one: at least this many keys of at least this many dimensions.
constexpr index_t kProjectedMinRows = 4096;
constexpr index_t kProjectedMinDim = 48;
constexpr index_t kCoarseDims = 16;  // a coarse screen where r >= 2 kCoarseDims
constexpr index_t kCoarseSurvivors = 64;
// A neighbourhood holds the keys whose cosine with its anchor reaches kNeighbourFloor, at
// most kNeighbourLimit of them (an anchor with more has none: its queries are screened).
constexpr double kNeighbourFloor = 0.7;
constexpr index_t kNeighbourLimit = 64;
template <class T>
class ProjectedScreen {
 public:
  // keys (n x d) must outlive the screen (neighbourhoods are re-scored from them); coarse:
  // with the coarse screen (where r >= 2 kCoarseDims); neighbourhoods: with the stage above.
  ProjectedScreen(const T* keys, const T* sq_norms, index_t n, index_t d, index_t r,
                  bool coarse = true, bool neighbourhoods = true);
  index_t dims() const { return fine_.r; }
  index_t coarse_dims() const { return coarse_.r; }  // 0: no coarse screen
  // For each query i (d; q_sq its squared norm) with a finite floors[i]: the ids of every key
  // whose search score can reach floors[i], into survivors[i], and ok[i] = 1; ok[i] = 0 where
  // the floor is not finite, the query cannot be bounded (near-zero norm) or more than
  // `limit` keys survive. anchors (nq; null: none): the key whose search score against query
  // i is floors[i] (-1: none), which survivors[i] may leave out.
  void survivors(const T* queries, const T* q_sq, index_t nq, const T* floors,
                 const index_t* anchors, index_t limit,
                 std::vector<std::vector<index_t>>& survivors, std::vector<char>& ok) const;
  // Queries answered from their survivors so far, and of those, by the coarse screen and by
  // neighbourhoods; the neighbourhoods found (statistics for tests and profiles).
  void count_answers(index_t n) const { answers_ += n; }
  std::int64_t answers() const { return answers_.load(); }
  std::int64_t coarse_answers() const { return coarse_answers_.load(); }
  std::int64_t neighbour_answers() const { return neighbour_answers_.load(); }
  std::int64_t neighbourhoods() const;
  // Bytes it holds: the basis, both screens' codes, facts and residual bounds, the sample,
  // the neighbourhoods found so far.
  std::size_t bytes() const {
    return basis_.size() * sizeof(double) + coarse_.bytes() + fine_.bytes() +
           (sample_p_.size() + sample_w_.size()) * sizeof(double) + tiny_.size() * sizeof(index_t) +
           neighbour_bytes_.load();
  }

 private:
  // The keys whose cosine with an anchor reaches kNeighbourFloor (not the anchor itself),
  // their cosines in double, largest first; usable = false where more than kNeighbourLimit
  // do (or the anchor has (near) zero norm).
  struct Neighbourhood {
    bool usable = false;
    std::vector<index_t> ids;
    std::vector<double> cos;
  };
  // Answers what it can of queries (floors, anchors) from neighbourhoods, finding the ones
  // it lacks; marks them in ok and fills their survivors.
  void answer_from_neighbourhoods(const T* floors, const index_t* anchors, index_t nq,
                                  std::vector<std::vector<index_t>>& out,
                                  std::vector<char>& ok) const;
  Neighbourhood find_neighbourhood(index_t anchor, const double* unit,
                                   const std::vector<index_t>& found) const;
  // Coordinates (m x dims()) of m unit rows (m x d) in the basis.
  std::vector<double> project(const double* units, index_t m) const;
  // The coarse then the fine screen for m unit queries (proj: their projections, m x dims();
  // bars: their floors); returns how many the coarse screen answered.
  index_t screen_projected(const double* proj, index_t m, const T* bars, index_t limit,
                           std::vector<std::vector<index_t>>& out, std::vector<char>& ok) const;
  // One screen: int8 codes of the keys' first r coordinates p (as Int8Rows over them) and the
  // bounds >= |w_k| of what those leave (+inf for a key of (near) zero norm: always survives).
  struct Level {
    index_t r = 0;
    std::vector<std::int8_t> codes;
    std::vector<T> facts;
    std::vector<std::int32_t> sums;
    std::vector<T> residual;
    std::size_t bytes() const {
      return codes.size() + facts.size() * sizeof(T) + sums.size() * sizeof(std::int32_t) +
             residual.size() * sizeof(T);
    }
  };
  void make_level(Level& level, index_t r);
  // Fills rows first .. first + count of level from their projections proj (count x dims()).
  void fill_level(Level& level, const double* proj, const char* tiny, index_t first, index_t count);
  // The screen of level for the queries which (rows of proj, m x dims(); bars[j] their
  // floors): found[j] its survivors, ok[j] whether at most limit survived.
  void scan(const Level& level, const std::vector<index_t>& which, const double* proj,
            const T* bars, index_t limit, std::vector<std::vector<index_t>>& found,
            std::vector<char>& ok) const;

  mutable std::atomic<std::int64_t> answers_{0}, coarse_answers_{0}, neighbour_answers_{0};
  const T* keys_;
  index_t n_, d_;
  bool use_neighbourhoods_;
  std::vector<index_t> tiny_;  // keys of (near) zero norm: they survive every screen
  mutable std::mutex neighbour_mutex_;
  mutable std::unordered_map<index_t, std::shared_ptr<const Neighbourhood>> neighbourhoods_;
  mutable std::atomic<std::size_t> neighbour_bytes_{0};
  std::vector<double> basis_;  // U, d x dims() row-major
  Level coarse_, fine_;
  // the coarse coordinates (kCoarseDims each) and residual bounds of every step-th key
  std::vector<double> sample_p_, sample_w_;
};

}  // namespace larimar
