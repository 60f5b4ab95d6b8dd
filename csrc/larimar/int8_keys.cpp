#include "larimar/int8_keys.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "larimar/linalg.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LARIMAR_X86_INT8 1
#endif

namespace larimar {
namespace {

// Codes: a query's c in [-63, 63] stored as c + 64 in [1, 127], a key's in [-63, 63]. Seven
// bits each, so that AVX2 can sum the u8 x s8 products of two groups in 16 bits (at most
// 4 * 127 * 63 < 2^15) before widening them: one widening per 8 products, not per 4, on a
// CPU whose integer multiplies are the scan's limit. VNNI and the portable path use the same
// codes, so every path computes the same integers.
static_assert(kInt8QueryLevels == 63 && kInt8QueryOffset == 64 && kInt8KeyLevels == 63,
              "the 16-bit sums of two groups need 7-bit codes");
// Keys scanned per task: their codes (1,024 x the padded dimension) stay in L2 while every
// micro-block of queries passes over them.
constexpr index_t kScanRows = 1024;
constexpr index_t kScanTiles = kScanRows / kInt8TileRows;

// Where a slot's codes live: its tile (dp the padded dimension), and code t of the slot within
// the tile (groups of 4 dimensions of the 16 keys, as int8_keys.hpp lays them out).
template <class Byte>
Byte* slot_tile(Byte* codes, index_t dp, index_t slot) {
  return codes + (slot / kInt8TileRows) * kInt8TileRows * dp;
}
inline index_t tile_offset(index_t slot, index_t t) {
  return (t / 4) * 64 + (slot % kInt8TileRows) * 4 + t % 4;
}

void dots_scalar(const std::uint8_t* q, int nq, index_t dp, const std::int8_t* tiles,
                 index_t ntiles, std::int32_t* out, index_t stride) {
  const index_t groups = dp / 4;
  for (index_t t = 0; t < ntiles; ++t) {
    const std::int8_t* tile = tiles + t * kInt8TileRows * dp;
    for (int i = 0; i < nq; ++i) {
      std::int32_t acc[kInt8TileRows] = {};
      for (index_t g = 0; g < groups; ++g)
        for (index_t j = 0; j < kInt8TileRows; ++j)
          for (int b = 0; b < 4; ++b)
            acc[j] += std::int32_t(q[i * dp + 4 * g + b]) * tile[g * 64 + j * 4 + b];
      std::memcpy(out + i * stride + t * kInt8TileRows, acc, sizeof acc);
    }
  }
}

#ifdef LARIMAR_X86_INT8
inline std::int32_t group_of(const std::uint8_t* q, index_t g) {
  std::int32_t v;
  std::memcpy(&v, q + 4 * g, 4);
  return v;
}

__attribute__((target("avx2"))) inline __m256i tile_keys(const std::int8_t* tile, index_t g,
                                                         int half) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile + 64 * g + 32 * half));
}

// AVX2: u8 x s8 products summed in pairs to 16 bits (maddubs), the pairs of two groups added
// in 16 bits (7-bit codes keep them below 2^15), then widened to 32 (madd).
template <int NQ>
__attribute__((target("avx2"))) void dots_avx2_tile(const std::uint8_t* q, index_t dp,
                                                    const std::int8_t* tile, std::int32_t* out,
                                                    index_t stride) {
  __m256i acc[NQ][2];
  for (int i = 0; i < NQ; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  const index_t groups = dp / 4;
  index_t g = 0;
  for (; g + 1 < groups; g += 2) {
    const __m256i a0 = tile_keys(tile, g, 0), a1 = tile_keys(tile, g, 1);
    const __m256i b0 = tile_keys(tile, g + 1, 0), b1 = tile_keys(tile, g + 1, 1);
    for (int i = 0; i < NQ; ++i) {
      const __m256i qa = _mm256_set1_epi32(group_of(q + i * dp, g));
      const __m256i qb = _mm256_set1_epi32(group_of(q + i * dp, g + 1));
      const __m256i s0 =
          _mm256_add_epi16(_mm256_maddubs_epi16(qa, a0), _mm256_maddubs_epi16(qb, b0));
      const __m256i s1 =
          _mm256_add_epi16(_mm256_maddubs_epi16(qa, a1), _mm256_maddubs_epi16(qb, b1));
      acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(s0, ones));
      acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(s1, ones));
    }
  }
  if (g < groups) {  // an odd last group
    const __m256i a0 = tile_keys(tile, g, 0), a1 = tile_keys(tile, g, 1);
    for (int i = 0; i < NQ; ++i) {
      const __m256i qa = _mm256_set1_epi32(group_of(q + i * dp, g));
      acc[i][0] =
          _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(qa, a0), ones));
      acc[i][1] =
          _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(qa, a1), ones));
    }
  }
  for (int i = 0; i < NQ; ++i) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i * stride), acc[i][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i * stride + 8), acc[i][1]);
  }
}

// 6 accumulators, 4 key vectors, 2 broadcasts, the ones and 2 sums fill the 16 registers.
constexpr int kAvx2Queries = 3;

__attribute__((target("avx2"))) void dots_avx2(const std::uint8_t* q, int nq, index_t dp,
                                               const std::int8_t* tiles, index_t ntiles,
                                               std::int32_t* out, index_t stride) {
  for (index_t t = 0; t < ntiles; ++t) {
    const std::int8_t* tile = tiles + t * kInt8TileRows * dp;
    std::int32_t* o = out + t * kInt8TileRows;
    switch (nq) {
      case 1:
        dots_avx2_tile<1>(q, dp, tile, o, stride);
        break;
      case 2:
        dots_avx2_tile<2>(q, dp, tile, o, stride);
        break;
      default:
        dots_avx2_tile<3>(q, dp, tile, o, stride);
        break;
    }
  }
}

// AVX-512 VNNI: one vpdpbusd per group does the 4 u8 x s8 products of 16 keys and their sum.
// Two tiles at a time, so each broadcast query group feeds two instructions.
template <int NQ, int NT>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void dots_vnni_tiles(
    const std::uint8_t* q, index_t dp, const std::int8_t* tiles, std::int32_t* out,
    index_t stride) {
  // The unroll pragmas make GCC unroll these loops before scalar replacement, so that the
  // accumulators live in registers; without them it kept acc on the stack, storing every
  // accumulator on every group (half the scan's time).
  __m512i acc[NQ][NT];
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_setzero_si512();
  const index_t tile_bytes = kInt8TileRows * dp;
  for (index_t g = 0; g < dp / 4; ++g) {
    __m512i k[NT];
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) k[t] = _mm512_loadu_si512(tiles + t * tile_bytes + 64 * g);
#pragma GCC unroll 16
    for (int i = 0; i < NQ; ++i) {
      const __m512i b = _mm512_set1_epi32(group_of(q + i * dp, g));
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_dpbusd_epi32(acc[i][t], b, k[t]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NQ; ++i)
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t)
      _mm512_storeu_si512(out + i * stride + t * kInt8TileRows, acc[i][t]);
}

constexpr int kVnniQueries = 12;  // 24 accumulators, 2 key vectors, a broadcast

template <int NT>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void dots_vnni_nq(const std::uint8_t* q,
                                                                         int nq, index_t dp,
                                                                         const std::int8_t* tiles,
                                                                         std::int32_t* out,
                                                                         index_t stride) {
  switch (nq) {
#define LARIMAR_VNNI_CASE(N) \
  case N:                    \
    return dots_vnni_tiles<N, NT>(q, dp, tiles, out, stride);
    LARIMAR_VNNI_CASE(1)
    LARIMAR_VNNI_CASE(2)
    LARIMAR_VNNI_CASE(3)
    LARIMAR_VNNI_CASE(4)
    LARIMAR_VNNI_CASE(5)
    LARIMAR_VNNI_CASE(6)
    LARIMAR_VNNI_CASE(7)
    LARIMAR_VNNI_CASE(8)
    LARIMAR_VNNI_CASE(9)
    LARIMAR_VNNI_CASE(10)
    LARIMAR_VNNI_CASE(11)
#undef LARIMAR_VNNI_CASE
    default:
      return dots_vnni_tiles<12, NT>(q, dp, tiles, out, stride);
  }
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) void dots_vnni(
    const std::uint8_t* q, int nq, index_t dp, const std::int8_t* tiles, index_t ntiles,
    std::int32_t* out, index_t stride) {
  index_t t = 0;
  // One or two queries take four tiles at a time: two tiles would leave them 2-4 chains of
  // dependent vpdpbusd, too few to hide its latency (a single query's scan: 1.13-1.21x).
  if (nq == 1 || nq == 2) {
    const auto four_tiles = nq == 1 ? dots_vnni_tiles<1, 4> : dots_vnni_tiles<2, 4>;
    for (; t + 4 <= ntiles; t += 4)
      four_tiles(q, dp, tiles + t * kInt8TileRows * dp, out + t * kInt8TileRows, stride);
  }
  for (; t + 2 <= ntiles; t += 2)
    dots_vnni_nq<2>(q, nq, dp, tiles + t * kInt8TileRows * dp, out + t * kInt8TileRows, stride);
  if (t < ntiles)
    dots_vnni_nq<1>(q, nq, dp, tiles + t * kInt8TileRows * dp, out + t * kInt8TileRows, stride);
}
#endif

struct IntPath {
  const char* name;
  Int8DotsFn dots;
  int max_queries;
};

std::vector<IntPath> supported_paths() {
  std::vector<IntPath> paths;
#ifdef LARIMAR_X86_INT8
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vnni"))
    paths.push_back({"avx512-vnni", dots_vnni, kVnniQueries});
  if (__builtin_cpu_supports("avx2")) paths.push_back({"avx2", dots_avx2, kAvx2Queries});
#endif
  paths.push_back({"scalar", dots_scalar, 4});
  return paths;
}

// The path in use: an index into supported_paths() (0, the best, unless set).
std::atomic<int> g_path{0};

IntPath current_path() {
  static const std::vector<IntPath> paths = supported_paths();
  return paths[static_cast<std::size_t>(g_path.load())];
}

// Rounds a non-negative double up to the next representable T at or above it.
template <class T>
T round_up(double x) {
  const T t = static_cast<T>(x);
  return double(t) >= x ? t : std::nextafter(t, std::numeric_limits<T>::infinity());
}

// Relative slack on every bound: covers the few roundings of the bound's own arithmetic in T
// and of the search's post-processing (cosine's sqrt, product and quotient; l2's sums).
constexpr double kRelSlack = 1.0 / (1 << 18);
// Squared norm below which a cosine key or query is not bounded (its 1 / |x| could overflow
// or the search's denominator underflow): such keys are always re-scored, and a block with
// such a query is searched in float.
constexpr double kTinySq = 0x1p-80;
// A shortlist longer than 1 / kWideShortlist of the keys is searched in float instead of
// re-scored (measured crossover on 49,152 x 576 and 200,000 x 384 keys: benchmarks/RESULTS.md).
constexpr index_t kWideShortlist = 16;
// A query the projected screen leaves more than 1 / kProjectedSurvivors of the keys goes the
// full way (its survivors would cost more to re-score than the full scan).
constexpr index_t kProjectedSurvivors = 64;

// What the screen needs of one query: its scale and code error, its norm and the metric's
// factors, all rounded up where they bound.
template <class T>
struct QueryFacts {
  T scale, norm, err, inv_norm, sq;
};

// Scalar quantisation of one row x (d values; dp >= d codes, 0 past d): scale s = max|x| /
// levels, codes c_t = round(x_t / s) clamped to +-levels, each handed to put(t, c). Returns s
// with |x|^2, |x - s c|^2 and |s c|^2, in float64 (the bounds are rounded up from these).
struct RowCode {
  double sq, err2, norm2;
};

template <class T, class Put>
T quantize_row(const T* x, index_t d, index_t dp, int levels, RowCode& rc, Put&& put) {
  double m = 0;
  rc = {0, 0, 0};
  for (index_t t = 0; t < d; ++t)
    m = std::max(m, std::abs(double(x[t]))), rc.sq += double(x[t]) * x[t];
  const T s = static_cast<T>(m / levels);
  for (index_t t = 0; t < dp; ++t) {
    int c = 0;
    if (t < d && s > T(0))
      c = static_cast<int>(
          std::max(-double(levels), std::min(double(levels), std::nearbyint(double(x[t]) / s))));
    put(t, c);
    if (t < d) {
      const double r = double(x[t]) - double(s) * c;
      rc.err2 += r * r;
      rc.norm2 += double(s) * c * double(s) * c;
    }
  }
  return s;
}

template <class T>
QueryFacts<T> quantize_query(const T* q, index_t d, index_t dp, T q_sq, Metric metric,
                             std::uint8_t* code) {
  RowCode rc;
  QueryFacts<T> f;
  f.scale = quantize_row(q, d, dp, kInt8QueryLevels, rc, [code](index_t t, int c) {
    code[t] = static_cast<std::uint8_t>(c + kInt8QueryOffset);
  });
  f.norm = round_up<T>(std::sqrt(rc.sq) * (1 + kRelSlack));
  f.err = round_up<T>(std::sqrt(rc.err2) * (1 + kRelSlack));
  f.inv_norm = metric == Metric::Cosine && double(q_sq) > 0
                   ? round_up<T>(1.0 / std::sqrt(double(q_sq)))
                   : T(0);
  f.sq = q_sq;
  return f;
}

// A min-heap of the k largest lower bounds seen: its top is the bar a key's upper bound must
// reach to be kept.
// floor: a score the k-th best is known to reach (from hints), the bar's least value.
template <class T>
class LowerBounds {
 public:
  LowerBounds(index_t k, T floor) : k_(k), floor_(floor) {
    heap_.reserve(static_cast<std::size_t>(k));
  }
  T bar() const {
    return static_cast<index_t>(heap_.size()) < k_ ? floor_ : std::max(floor_, heap_.front());
  }
  void push(T v) {
    if (static_cast<index_t>(heap_.size()) < k_) {
      heap_.push_back(v);
      std::push_heap(heap_.begin(), heap_.end(), std::greater<T>());
    } else if (v > heap_.front()) {
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<T>());
      heap_.back() = v;
      std::push_heap(heap_.begin(), heap_.end(), std::greater<T>());
    }
  }
  const std::vector<T>& values() const { return heap_; }

 private:
  index_t k_;
  T floor_;
  std::vector<T> heap_;
};

template <class T>
struct Kept {
  T upper;
  index_t id;
};

// [lo, hi] holds the search's score of one query against key j of kr, from their integer
// dot product (dot_u8: the query's offset codes against the key's codes).
template <Metric M, class T>
inline void pair_bounds(std::int32_t dot_u8, index_t j, const QueryFacts<T>& qf,
                        const Int8Rows<T>& kr, const T* k_sq, T& lo, T& hi) {
  const T rel = T(kRelSlack), grow = T(1 + kRelSlack), tiny = T(0x1p-120);
  const std::int32_t dot = dot_u8 - kInt8QueryOffset * kr.code_sum[j];
  const T approx = qf.scale * kr.scale[j] * T(dot);
  const T b = (qf.norm * kr.err[j] + qf.err * kr.norm[j] + rel * std::abs(approx)) * grow + tiny;
  T l = approx - b, h = approx + b;
  if constexpr (M == Metric::Cosine) {
    const T f = qf.inv_norm * kr.inv_norm[j];
    l = l * f - rel * std::abs(l * f);
    h = h * f + rel * std::abs(h * f);
  } else if constexpr (M == Metric::L2) {
    const T off = qf.sq + k_sq[j];
    l = std::min(T(0), T(2) * l - off - rel * (T(2) * std::abs(l) + off));
    h = std::min(T(0), T(2) * h - off + rel * (T(2) * std::abs(h) + off));
  }
  // inf - inf (a score past the dtype's range): no bound, so the key is kept and re-scored,
  // where the search finds what it finds.
  lo = std::isnan(l) ? -std::numeric_limits<T>::infinity() : l;
  hi = std::isnan(h) ? std::numeric_limits<T>::infinity() : h;
}

// Keys per chunk of the screen: the largest upper bound of each chunk is kept, so that the
// keys that pass are found a vector at a time (a scalar pass over every key's bound cost a
// fifth of the scan).
constexpr index_t kScreenChunk = 16;
static_assert(kScanRows % kScreenChunk == 0, "a run is whole chunks");

// A run's bounds: lo and hi of every key, and the largest hi of each chunk.
template <class T>
struct RunBounds {
  std::vector<T> lo = std::vector<T>(kScanRows), hi = std::vector<T>(kScanRows),
                 chunk_top = std::vector<T>(kScanRows / kScreenChunk);
};

// Bounds (lo, hi, rows) of one query against rows keys, and the largest hi of each chunk of
// kScreenChunk (chunk_top): the screen's one pass over every pair, vectorised. Returns the
// largest hi, so that a run none of whose keys can pass costs one comparison.
template <Metric M, class T>
LARIMAR_MULTIVERSION T run_bounds(const std::int32_t* dots, index_t rows, QueryFacts<T> qf,
                                  Int8Rows<T> kr, const T* k_sq, T* __restrict lo, T* __restrict hi,
                                  T* __restrict chunk_top) {
  T top = -std::numeric_limits<T>::infinity();
  for (index_t j0 = 0; j0 < rows; j0 += kScreenChunk) {
    const index_t j1 = std::min(rows, j0 + kScreenChunk);
    T chunk = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : chunk)
    for (index_t j = j0; j < j1; ++j) {
      T l, h;
      pair_bounds<M>(dots[j], j, qf, kr, k_sq, l, h);
      lo[j] = l;
      hi[j] = h;
      chunk = std::max(chunk, h);
    }
    chunk_top[j0 / kScreenChunk] = chunk;
    top = std::max(top, chunk);
  }
  // A last partial chunk's tail passes nothing (the screen reads whole chunks).
  for (index_t j = rows; j % kScreenChunk != 0; ++j) hi[j] = -std::numeric_limits<T>::infinity();
  return top;
}

// Screens one query against one run of keys: every key whose upper bound reaches the bar (the
// k-th largest lower bound so far) is kept and its lower bound raises the bar. The bar only
// rises, so a chunk whose largest upper bound is below it holds no key to keep.
template <Metric M, class T>
void screen(const std::int32_t* dots, index_t rows, index_t first_id, const QueryFacts<T>& qf,
            const Int8Rows<T>& kr, const T* k_sq, RunBounds<T>& rb, LowerBounds<T>& bar,
            std::vector<Kept<T>>& kept) {
  T at_least = bar.bar();
  const T* lo = rb.lo.data();
  const T* hi = rb.hi.data();
  if (run_bounds<M>(dots, rows, qf, kr, k_sq, rb.lo.data(), rb.hi.data(), rb.chunk_top.data()) <
      at_least)
    return;
  for (index_t j0 = 0; j0 < rows; j0 += kScreenChunk) {
    if (rb.chunk_top[j0 / kScreenChunk] < at_least) continue;
    // The chunk's keys that reach the bar as a bit mask (a vector compare), visited bit by
    // bit: a branch per key on its bound mispredicted on most keys of a passing chunk.
    std::uint32_t pass = 0;
    for (index_t b = 0; b < kScreenChunk; ++b) pass |= std::uint32_t(hi[j0 + b] >= at_least) << b;
    for (; pass != 0; pass &= pass - 1) {
      const index_t j = j0 + __builtin_ctz(pass);
      if (hi[j] < at_least) continue;  // the bar rose since the mask
      bar.push(lo[j]);
      at_least = bar.bar();
      kept.push_back({hi[j], first_id + j});
    }
  }
}

// Asks the OS for the pages of the shortlisted key rows at once (a hint: errors are ignored),
// one call per run of adjacent pages (a query's ids are sorted), not one per row.
template <class T>
void request_rows(const std::vector<KeyBlock<T>>& blocks, index_t d,
                  const std::vector<std::vector<index_t>>& shortlist) {
  const std::uintptr_t page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  auto ask = [](std::uintptr_t lo, std::uintptr_t hi) {
    if (hi > lo) posix_madvise(reinterpret_cast<void*>(lo), hi - lo, POSIX_MADV_WILLNEED);
  };
  for (const auto& ids : shortlist) {
    std::uintptr_t run_lo = 0, run_hi = 0;
    for (index_t id : ids) {
      const auto at = reinterpret_cast<std::uintptr_t>(find_key_row(blocks, d, id).key);
      const std::uintptr_t lo = at / page * page, hi = at + sizeof(T) * d;
      if (lo <= run_hi + page && lo >= run_lo) {
        run_hi = std::max(run_hi, hi);
        continue;
      }
      ask(run_lo, run_hi);
      run_lo = lo, run_hi = hi;
    }
    ask(run_lo, run_hi);
  }
}

// Searches the queries of rows (with their hints, h per query; h = 0: none) as one batch:
// copies them together, calls search(queries, n, hints, ids, scores) and writes its ids and
// scores back to their queries' places in out_ids and out_scores (k each). Returns search's.
template <class T, class Search>
bool search_subset(const std::vector<index_t>& rows, const T* queries, index_t d,
                   const index_t* hints, index_t h, index_t k, index_t* out_ids, T* out_scores,
                   Search&& search) {
  const index_t n = static_cast<index_t>(rows.size());
  std::vector<T> q(static_cast<std::size_t>(n * d)), scores(static_cast<std::size_t>(n * k));
  std::vector<index_t> hint_ids(static_cast<std::size_t>(n * h)),
      ids(static_cast<std::size_t>(n * k));
  for (index_t r = 0; r < n; ++r) {
    std::copy_n(queries + rows[r] * d, d, q.data() + r * d);
    if (h > 0) std::copy_n(hints + rows[r] * h, h, hint_ids.data() + r * h);
  }
  const bool finite = search(q.data(), n, hint_ids.data(), ids.data(), scores.data());
  for (index_t r = 0; r < n; ++r) {
    std::copy_n(ids.data() + r * k, k, out_ids + rows[r] * k);
    std::copy_n(scores.data() + r * k, k, out_scores + rows[r] * k);
  }
  return finite;
}

// One query block (nq <= kSearchQueryBlock): screen every key by its bounds, then re-score
// the kept ones with score_rows, whose bits search() returns.
template <class T>
bool search_block(const T* queries, index_t nq, index_t d, const std::vector<KeyBlock<T>>& blocks,
                  const std::vector<Int8Rows<T>>& int8, index_t k, Metric metric, index_t* out_ids,
                  T* out_scores, bool keys_may_be_mapped, const index_t* hints, index_t h,
                  const ProjectedScreen<T>* projected) {
  const index_t dp = int8_padded_dim(d);
  std::vector<T> q_sq(nq, T(0));
  row_sq_norms(queries, nq, d, q_sq.data());
  // Blocks without float keys (an int8-only store): a key is scored on its codes' decoding,
  // made when it is needed.
  const bool decoded = blocks.front().keys == nullptr;
  const KeyRowOf<T> key_row = [&](index_t id, T* buffer) {
    if (!decoded) return find_key_row(blocks, d, id);
    const index_t b = block_of(blocks, id), row = id - blocks[b].first_id;
    decode_int8_slot(int8[b].codes, int8[b].scale[row], d, row, buffer);
    return KeyRow<T>{buffer, blocks[b].sq_norms ? blocks[b].sq_norms[row] : T(0)};
  };
  // The float search, for what the codes cannot bound. Without float keys to scan, every key
  // is scored from its decoding: slow, but only a query of (near) zero norm or scores past the
  // dtype's range come here.
  auto float_search = [&]() {
    if (!decoded) return search(queries, nq, d, blocks, k, metric, out_ids, out_scores);
    std::vector<index_t> all;
    for (const KeyBlock<T>& b : blocks)
      for (index_t j = 0; j < b.rows; ++j) all.push_back(b.first_id + j);
    std::vector<char> finite(nq, 1);
    parallel_for(nq, [&](index_t i) {
      finite[i] =
          rescore_top_k(queries + i * d, q_sq.data() + i, key_row, d, metric, all.data(),
                        static_cast<index_t>(all.size()), k, out_ids + i * k, out_scores + i * k);
    });
    return std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
  };
  if (metric == Metric::Cosine)
    for (index_t i = 0; i < nq; ++i)
      if (double(q_sq[i]) < kTinySq) return float_search();
  // Each query's floor: the k-th best exact score among its distinct hints (scored as the
  // re-score scores), which the k-th best of all keys reaches; none without k of them. Its
  // anchor: the hint that scored it.
  std::vector<T> floors(nq, -std::numeric_limits<T>::infinity());
  std::vector<index_t> anchors(nq, -1);
  if (h > 0)
    parallel_for(nq, [&](index_t i) {
      std::vector<index_t> ids(hints + i * h, hints + (i + 1) * h);
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      if (static_cast<index_t>(ids.size()) < k) return;
      std::vector<index_t> top_ids(k);
      std::vector<T> top(k);
      if (rescore_top_k(queries + i * d, q_sq.data() + i, key_row, d, metric, ids.data(),
                        static_cast<index_t>(ids.size()), k, top_ids.data(), top.data())) {
        floors[i] = top[k - 1];
        anchors[i] = top_ids[k - 1];
      }
    });
  if (projected != nullptr && h > 0) {
    // The projected screen first; each query it leaves (too many survivors, no floor) is
    // searched the full way below, by a call without it.
    std::vector<std::vector<index_t>> survivors;
    std::vector<char> ok;
    const index_t total = blocks.front().rows;
    projected->survivors(queries, q_sq.data(), nq, floors.data(), anchors.data(),
                         std::max<index_t>(k, total / kProjectedSurvivors), survivors, ok);
    std::vector<char> finite(nq, 1);
    parallel_for(nq, [&](index_t i) {
      if (!ok[i]) return;
      std::vector<index_t>& ids = survivors[i];
      ids.insert(ids.end(), hints + i * h, hints + (i + 1) * h);
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      finite[i] =
          rescore_top_k(queries + i * d, q_sq.data() + i, key_row, d, metric, ids.data(),
                        static_cast<index_t>(ids.size()), k, out_ids + i * k, out_scores + i * k);
    });
    std::vector<index_t> rest;
    for (index_t i = 0; i < nq; ++i)
      if (!ok[i]) rest.push_back(i);
    projected->count_answers(nq - static_cast<index_t>(rest.size()));
    const bool rest_finite =
        rest.empty() ||
        search_subset(rest, queries, d, hints, h, k, out_ids, out_scores,
                      [&](const T* q, index_t n, const index_t* hint_ids, index_t* ids, T* scores) {
                        return search_block(q, n, d, blocks, int8, k, metric, ids, scores,
                                            keys_may_be_mapped, hint_ids, h,
                                            static_cast<const ProjectedScreen<T>*>(nullptr));
                      });
    return rest_finite && std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
  }
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(nq * dp));
  std::vector<QueryFacts<T>> facts(nq);
  for (index_t i = 0; i < nq; ++i)
    facts[i] = quantize_query(queries + i * d, d, dp, q_sq[i], metric, codes.data() + i * dp);

  // Tasks: runs of up to kScanRows keys of one block.
  struct Task {
    index_t block, offset, rows;
  };
  std::vector<Task> tasks;
  for (index_t b = 0; b < static_cast<index_t>(blocks.size()); ++b)
    for (index_t off = 0; off < blocks[b].rows; off += kScanRows)
      tasks.push_back({b, off, std::min(kScanRows, blocks[b].rows - off)});
  // Each worker (a contiguous share of the tasks) keeps its own bounds and kept keys.
  const index_t workers = std::min<index_t>(num_threads(), static_cast<index_t>(tasks.size()));
  std::vector<std::vector<LowerBounds<T>>> bars(workers);
  std::vector<std::vector<std::vector<Kept<T>>>> kept(workers);
  const IntPath path = current_path();
  parallel_for(workers, [&](index_t w) {
    bars[w].reserve(static_cast<std::size_t>(nq));
    for (index_t i = 0; i < nq; ++i) bars[w].emplace_back(k, floors[i]);
    kept[w].resize(nq);
    std::vector<std::int32_t> dots(static_cast<std::size_t>(path.max_queries) * kScanRows);
    RunBounds<T> rb;
    const index_t first_task = w * static_cast<index_t>(tasks.size()) / workers;
    const index_t end_task = (w + 1) * static_cast<index_t>(tasks.size()) / workers;
    for (index_t t = first_task; t < end_task; ++t) {
      const Task& task = tasks[t];
      const KeyBlock<T>& block = blocks[task.block];
      const Int8Rows<T>& all = int8[task.block];
      const index_t o = task.offset;
      const Int8Rows<T> kr{all.codes + o * dp, all.scale + o, all.code_sum + o,
                           all.err + o,        all.norm + o,  all.inv_norm + o};
      const T* k_sq = block.sq_norms ? block.sq_norms + o : nullptr;
      const index_t ntiles = (task.rows + kInt8TileRows - 1) / kInt8TileRows;
      for (index_t i0 = 0; i0 < nq; i0 += path.max_queries) {
        const int m = static_cast<int>(std::min<index_t>(path.max_queries, nq - i0));
        path.dots(codes.data() + i0 * dp, m, dp, kr.codes, ntiles, dots.data(), kScanRows);
        for (int i = 0; i < m; ++i) {
          const std::int32_t* di = dots.data() + i * kScanRows;
          const index_t first = block.first_id + o;
          LowerBounds<T>& bar = bars[w][i0 + i];
          std::vector<Kept<T>>& mine = kept[w][i0 + i];
          const QueryFacts<T>& qf = facts[i0 + i];
          if (metric == Metric::Cosine)
            screen<Metric::Cosine>(di, task.rows, first, qf, kr, k_sq, rb, bar, mine);
          else if (metric == Metric::L2)
            screen<Metric::L2>(di, task.rows, first, qf, kr, k_sq, rb, bar, mine);
          else
            screen<Metric::InnerProduct>(di, task.rows, first, qf, kr, k_sq, rb, bar, mine);
        }
      }
    }
  });

  // Per query: the bar is the k-th largest lower bound of all; a key whose upper bound is
  // below it scores below k others in float too (the bounds hold the search's rounding), so
  // only the rest are re-scored.
  std::vector<std::vector<index_t>> shortlist(nq);
  bool bounded = true;
  for (index_t i = 0; i < nq && bounded; ++i) {
    std::vector<T> lows;
    for (index_t w = 0; w < workers; ++w)
      lows.insert(lows.end(), bars[w][i].values().begin(), bars[w][i].values().end());
    // every kept hint pushed its lower bound, so with a floor there are still k lows
    if (static_cast<index_t>(lows.size()) < k) {
      bounded = false;
      break;
    }
    std::nth_element(lows.begin(), lows.begin() + (k - 1), lows.end(), std::greater<T>());
    const T bar = std::max(lows[k - 1], floors[i]);
    for (index_t w = 0; w < workers; ++w)
      for (const Kept<T>& c : kept[w][i])
        if (c.upper >= bar) shortlist[i].push_back(c.id);
    std::sort(shortlist[i].begin(), shortlist[i].end());
    bounded = static_cast<index_t>(shortlist[i].size()) >= k;
  }
  bars.clear();
  kept.clear();
  // Scores past the dtype's range leave no bound (NaN): the float search says what it says.
  if (!bounded) return float_search();
  if (keys_may_be_mapped && !decoded) request_rows(blocks, d, shortlist);

  // Queries whose shortlist is wide (near-ties around the k-th score, common at k > 1 on
  // anisotropic keys) go to the float search together: one product over the keys costs less
  // than re-scoring thousands of scattered rows one by one, and gives the same result.
  // Not for keys that may be mapped from disk (the float scan would read them all) nor for
  // an int8-only store (it has no float keys to scan).
  bool all_finite = true;
  if (!keys_may_be_mapped && !decoded) {
    index_t total = 0;
    for (const KeyBlock<T>& b : blocks) total += b.rows;
    std::vector<index_t> wide;
    for (index_t i = 0; i < nq; ++i)
      if (static_cast<index_t>(shortlist[i].size()) * kWideShortlist > total) wide.push_back(i);
    if (!wide.empty()) {
      all_finite =
          search_subset(wide, queries, d, hints, 0, k, out_ids, out_scores,
                        [&](const T* q, index_t n, const index_t*, index_t* ids, T* scores) {
                          return search(q, n, d, blocks, k, metric, ids, scores);
                        });
      for (index_t i : wide) shortlist[i].clear();  // answered
    }
  }

  // The exact step, each query's shortlist re-scored in place. Queries in parallel: the
  // shortlisted rows are scattered, so this is latency-bound.
  std::vector<char> finite(nq, 1);
  parallel_for(nq, [&](index_t i) {
    if (shortlist[i].empty()) return;  // answered by the float search
    finite[i] = rescore_top_k(queries + i * d, q_sq.data() + i, key_row, d, metric,
                              shortlist[i].data(), static_cast<index_t>(shortlist[i].size()), k,
                              out_ids + i * k, out_scores + i * k);
  });
  return all_finite && std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
}

}  // namespace

void set_int8_isa(const std::string& name) {
  static const std::vector<IntPath> paths = supported_paths();
  if (name == "auto") {
    g_path.store(0);
    return;
  }
  std::string known;
  for (std::size_t i = 0; i < paths.size(); ++i) {
    if (paths[i].name == name) {
      g_path.store(static_cast<int>(i));
      return;
    }
    known += std::string(i ? ", " : "") + "\"" + paths[i].name + "\"";
  }
  fail("isa", "expected \"auto\" or one this CPU runs (" + known + "), got \"" + name + "\"");
}

std::string int8_isa() { return current_path().name; }

Int8Dots int8_dots() {
  const IntPath path = current_path();
  return {path.dots, path.max_queries};
}

std::vector<std::string> int8_isas_supported() {
  std::vector<std::string> names;
  for (const IntPath& p : supported_paths()) names.push_back(p.name);
  return names;
}

template <class T>
T quantize_int8_key(const T* key, index_t d, std::int8_t* code) {
  RowCode rc;
  return quantize_row(key, d, d, kInt8KeyLevels, rc,
                      [code](index_t t, int c) { code[t] = static_cast<std::int8_t>(c); });
}

template <class T>
void decode_int8_key(const std::int8_t* code, T scale, index_t d, T* out) {
  for (index_t t = 0; t < d; ++t) out[t] = scale * static_cast<T>(code[t]);
}

template <class T>
void decode_int8_slot(const std::int8_t* codes, T scale, index_t d, index_t slot, T* out) {
  const std::int8_t* tile = slot_tile(codes, int8_padded_dim(d), slot);
  for (index_t t = 0; t < d; ++t)  // decode_int8_key's products
    out[t] = scale * static_cast<T>(tile[tile_offset(slot, t)]);
}

void int8_slot_codes(const std::int8_t* codes, index_t d, index_t slot, std::int8_t* out) {
  const std::int8_t* tile = slot_tile(codes, int8_padded_dim(d), slot);
  for (index_t t = 0; t < d; ++t) out[t] = tile[tile_offset(slot, t)];
}

void put_int8_slot_codes(const std::int8_t* code, index_t d, std::int8_t* codes, index_t slot) {
  const index_t dp = int8_padded_dim(d);
  std::int8_t* tile = slot_tile(codes, dp, slot);
  for (index_t t = 0; t < dp; ++t) tile[tile_offset(slot, t)] = t < d ? code[t] : 0;
}

template <class T>
void put_int8_key(const T* key, T sq_norm, const std::int8_t* code, T scale, index_t d,
                  Metric metric, Int8Slots<T> out, index_t slot) {
  const index_t dp = int8_padded_dim(d);
  // The search's float sum of d products is within gamma_d sum |q_t k_t| <= gamma_d |q| |k|
  // of the exact inner product (Higham, Accuracy and Stability, section 3.1).
  const double u = epsilon<T>() / 2, gamma = double(d) * u / (1 - double(d) * u);
  std::int8_t* tile = slot_tile(out.codes, dp, slot);
  std::int32_t sum = 0;
  double sq = 0, err2 = 0, norm2 = 0;
  for (index_t t = 0; t < dp; ++t) {
    const int c = t < d ? code[t] : 0;
    tile[tile_offset(slot, t)] = static_cast<std::int8_t>(c);
    if (t >= d) continue;
    sum += c;
    const double x = double(key[t]), sc = double(scale) * c;
    sq += x * x, err2 += (x - sc) * (x - sc), norm2 += double(scale) * c * double(scale) * c;
  }
  out.scale[slot] = scale;
  out.code_sum[slot] = sum;
  out.norm[slot] = round_up<T>(std::sqrt(norm2) * (1 + kRelSlack));
  const bool unbounded = metric == Metric::Cosine && double(sq_norm) < kTinySq;
  out.err[slot] = unbounded
                      ? std::numeric_limits<T>::infinity()
                      : round_up<T>((std::sqrt(err2) + gamma * std::sqrt(sq)) * (1 + kRelSlack));
  out.inv_norm[slot] = unbounded                  ? std::numeric_limits<T>::infinity()
                       : metric == Metric::Cosine ? round_up<T>(1.0 / std::sqrt(double(sq_norm)))
                                                  : T(0);
}

template <class T>
void quantize_int8_keys(const T* keys, const T* sq_norms, index_t n, index_t d, Metric metric,
                        Int8Slots<T> out, index_t first) {
  std::vector<std::int8_t> code(static_cast<std::size_t>(d));
  for (index_t i = 0; i < n; ++i) {
    const T s = quantize_int8_key(keys + i * d, d, code.data());
    put_int8_key(keys + i * d, sq_norms[i], code.data(), s, d, metric, out, first + i);
  }
}

template <class T>
std::size_t int8_rows_bytes(index_t rows, index_t d) {
  const std::size_t padded_rows =
      static_cast<std::size_t>((rows + kInt8TileRows - 1) / kInt8TileRows * kInt8TileRows);
  return padded_rows * static_cast<std::size_t>(int8_padded_dim(d)) +
         static_cast<std::size_t>(rows) * (4 * sizeof(T) + sizeof(std::int32_t));
}

template <class T>
bool search_int8(const T* queries, index_t nq, index_t d, const std::vector<KeyBlock<T>>& blocks,
                 const std::vector<Int8Rows<T>>& int8, index_t k, Metric metric, index_t* out_ids,
                 T* out_scores, bool keys_may_be_mapped, const index_t* hints, index_t h,
                 const ProjectedScreen<T>* projected) {
  return for_query_blocks(nq, [&](index_t q0, index_t n) {
    return search_block(queries + q0 * d, n, d, blocks, int8, k, metric, out_ids + q0 * k,
                        out_scores + q0 * k, keys_may_be_mapped, h > 0 ? hints + q0 * h : nullptr,
                        h, projected);
  });
}

namespace {
// Rounding of a cosine as the search computes it (a dot product of d terms, two norms and a
// quotient), relative to |q| |k|: twice gamma_{d + 8}, the unit roundoff of T.
template <class T>
double search_rounding(index_t d) {
  const double u = std::numeric_limits<T>::epsilon() / 2, g = double(d + 8) * u;
  return 2 * g / (1 - g);
}

// x / |x| in double (the norm summed in double), or false for a row of (near) zero norm.
template <class T>
bool unit_row(const T* x, index_t d, double* out) {
  double sq = 0;
  for (index_t t = 0; t < d; ++t) sq += double(x[t]) * x[t];
  if (sq < kTinySq) return false;
  const double inv = 1 / std::sqrt(sq);
  for (index_t t = 0; t < d; ++t) out[t] = x[t] * inv;
  return true;
}

// |w| >= the residual norm of a unit row whose projection p has squared norm p2, rounded up
// to T (the floor of 2^-40 under the root covers the double sums' rounding).
template <class T>
T residual_norm(double p2) {
  return round_up<T>(std::sqrt(std::max(0.0, 1 - p2) + 0x1p-40) * (1 + kRelSlack));
}

// Upper bounds (rows) of the cosines of one query against rows keys from the projected codes:
// pair_bounds' upper bound of p_q . p_k, plus the residuals' product and the slack, each
// rounding covered. Returns how many reach at_least, counted in the same vector loop: most
// runs of keys have none, and then need no pass over the bounds one key at a time.
template <class T>
LARIMAR_MULTIVERSION index_t projected_upper_bounds(const std::int32_t* dots, index_t rows,
                                                    QueryFacts<T> qf, Int8Rows<T> kr,
                                                    const T* __restrict w_k, T w_q, T slack,
                                                    T at_least, T* __restrict hi) {
  index_t reached = 0;
#pragma omp simd reduction(+ : reached)
  for (index_t t = 0; t < rows; ++t) {
    T l, h;
    pair_bounds<Metric::InnerProduct>(dots[t], t, qf, kr, static_cast<const T*>(nullptr), l, h);
    const T rest = w_q * w_k[t];
    hi[t] = h + rest + slack + (std::abs(h) + rest) * T(kRelSlack);
    reached += hi[t] >= at_least;
  }
  return reached;
}
}  // namespace

template <class T>
ProjectedScreen<T>::ProjectedScreen(const T* keys, const T* sq_norms, index_t n, index_t d,
                                    index_t r, bool coarse, bool neighbourhoods)
    : keys_(keys), n_(n), d_(d), use_neighbourhoods_(neighbourhoods) {
  // The basis: the top r eigenvectors of the Gram of (a stride sample of) the unit rows.
  constexpr index_t kBasisRows = 8192;
  const index_t step = std::max<index_t>(1, n / kBasisRows);
  std::vector<double> sample;
  index_t m = 0;
  std::vector<double> u(static_cast<std::size_t>(d));
  for (index_t i = 0; i < n; i += step)
    if (double(sq_norms[i]) >= kTinySq && unit_row(keys + i * d, d, u.data())) {
      sample.insert(sample.end(), u.begin(), u.end());
      ++m;
    }
  std::vector<double> gram(static_cast<std::size_t>(d * d), 0.0), w, v;
  if (m > 0)
    blas::gemm<double>(true, false, d, d, m, 1.0, sample.data(), d, sample.data(), d, 0.0,
                       gram.data(), d);
  symmetric_eigen(gram.data(), d, w, v);  // ascending: the top r are the last columns
  basis_.resize(static_cast<std::size_t>(d * r));
  for (index_t t = 0; t < d; ++t)
    for (index_t c = 0; c < r; ++c) basis_[t * r + c] = v[t * d + (d - 1 - c)];

  make_level(fine_, r);
  if (coarse && r >= 2 * kCoarseDims) make_level(coarse_, kCoarseDims);
  // the routing sample: every step-th key, kCoarseSurvivors keys of the table for each
  const index_t every = kCoarseSurvivors;
  const index_t sampled = coarse_.r > 0 ? (n + every - 1) / every : 0;
  sample_p_.resize(static_cast<std::size_t>(sampled * coarse_.r));
  sample_w_.resize(static_cast<std::size_t>(sampled));
  constexpr index_t kRows = 1024;  // whole code tiles
  static_assert(kRows % kCoarseSurvivors == 0, "a block starts on a sampled key");
  parallel_for((n + kRows - 1) / kRows, [&](index_t b) {
    const index_t first = b * kRows, count = std::min(kRows, n - first);
    std::vector<double> units(static_cast<std::size_t>(count * d), 0.0),
        proj(static_cast<std::size_t>(count * r));
    std::vector<char> tiny(static_cast<std::size_t>(count));
    for (index_t i = 0; i < count; ++i)
      tiny[i] = double(sq_norms[first + i]) < kTinySq ||
                !unit_row(keys + (first + i) * d, d, units.data() + i * d);
    blas::gemm<double>(false, false, count, r, d, 1.0, units.data(), d, basis_.data(), r, 0.0,
                       proj.data(), r);
    fill_level(fine_, proj.data(), tiny.data(), first, count);
    if (coarse_.r == 0) return;
    fill_level(coarse_, proj.data(), tiny.data(), first, count);
    for (index_t i = 0; i < count; i += every) {
      const index_t s = (first + i) / every;
      for (index_t c = 0; c < coarse_.r; ++c) sample_p_[s * coarse_.r + c] = proj[i * r + c];
      // a key of (near) zero norm survives every screen: not a forecast of others
      sample_w_[s] =
          tiny[i] ? -std::numeric_limits<double>::infinity() : coarse_.residual[first + i];
    }
  });
  for (index_t i = 0; i < n; ++i)
    if (std::isinf(fine_.residual[i])) tiny_.push_back(i);
}

template <class T>
void ProjectedScreen<T>::make_level(Level& level, index_t r) {
  const index_t rows = (n_ + kInt8TileRows - 1) / kInt8TileRows * kInt8TileRows;
  level.r = r;
  level.codes.assign(static_cast<std::size_t>(rows * int8_padded_dim(r)), 0);
  level.facts.resize(static_cast<std::size_t>(4 * n_));
  level.sums.resize(static_cast<std::size_t>(n_));
  level.residual.resize(static_cast<std::size_t>(n_));
}

template <class T>
void ProjectedScreen<T>::fill_level(Level& level, const double* proj, const char* tiny,
                                    index_t first, index_t count) {
  const index_t r = level.r, stride = dims();
  std::vector<T> p(static_cast<std::size_t>(count * r)), p_sq(static_cast<std::size_t>(count));
  for (index_t i = 0; i < count; ++i) {
    double p2 = 0;
    for (index_t c = 0; c < r; ++c) {
      p[i * r + c] = static_cast<T>(proj[i * stride + c]);
      p2 += proj[i * stride + c] * proj[i * stride + c];
    }
    level.residual[first + i] = tiny[i] ? std::numeric_limits<T>::infinity() : residual_norm<T>(p2);
  }
  row_sq_norms(p.data(), count, r, p_sq.data());
  const Int8Slots<T> slots =
      int8_slots(level.codes.data(), level.facts.data(), level.sums.data(), n_);
  quantize_int8_keys(p.data(), p_sq.data(), count, r, Metric::InnerProduct, slots, first);
}

template <class T>
void ProjectedScreen<T>::scan(const Level& level, const std::vector<index_t>& which,
                              const double* proj, const T* bars, index_t limit,
                              std::vector<std::vector<index_t>>& out, std::vector<char>& ok) const {
  const index_t m = static_cast<index_t>(which.size()), r = level.r, dp = int8_padded_dim(r);
  out.assign(static_cast<std::size_t>(m), {});
  ok.assign(static_cast<std::size_t>(m), 0);
  if (m == 0) return;
  std::vector<T> p(static_cast<std::size_t>(r)), w_q(static_cast<std::size_t>(m)),
      bar(static_cast<std::size_t>(m));
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(m * dp));
  std::vector<QueryFacts<T>> facts(static_cast<std::size_t>(m));
  // the search's rounding and the projections' (p in T, at most r half-ulps of |p| <= 1 each)
  const T slack =
      round_up<T>(search_rounding<T>(d_) + double(r + 1) * std::numeric_limits<T>::epsilon());
  for (index_t j = 0; j < m; ++j) {
    const double* pj = proj + which[j] * dims();
    double p2 = 0;
    for (index_t c = 0; c < r; ++c) {
      p[c] = static_cast<T>(pj[c]);
      p2 += pj[c] * pj[c];
    }
    w_q[j] = residual_norm<T>(p2);
    T p_sq;
    row_sq_norms(p.data(), 1, r, &p_sq);
    facts[j] = quantize_query(p.data(), r, dp, p_sq, Metric::InnerProduct, codes.data() + j * dp);
    bar[j] = bars[which[j]];
  }
  const index_t runs = (n_ + kScanRows - 1) / kScanRows;
  const index_t workers = std::min<index_t>(num_threads(), runs);
  std::vector<std::vector<std::vector<index_t>>> found(workers);
  const IntPath path = current_path();
  const Int8Rows<T> all = int8_rows(level.codes.data(), level.facts.data(), level.sums.data(), n_);
  parallel_for(workers, [&](index_t wk) {
    found[wk].resize(static_cast<std::size_t>(m));
    std::vector<std::int32_t> dots(static_cast<std::size_t>(path.max_queries) * kScanRows);
    std::vector<T> hi(kScanRows);
    for (index_t run = wk * runs / workers; run < (wk + 1) * runs / workers; ++run) {
      // a worker whose every query has more survivors than it may keep stops early: those
      // queries go the full way anyway
      if (std::all_of(found[wk].begin(), found[wk].end(), [&](const std::vector<index_t>& f) {
            return static_cast<index_t>(f.size()) > limit;
          }))
        break;
      const index_t o = run * kScanRows, rows = std::min(kScanRows, n_ - o);
      const Int8Rows<T> kr{all.codes + o * dp, all.scale + o, all.code_sum + o,
                           all.err + o,        all.norm + o,  all.inv_norm + o};
      const T* w_k = level.residual.data() + o;
      const index_t ntiles = (rows + kInt8TileRows - 1) / kInt8TileRows;
      for (index_t i0 = 0; i0 < m; i0 += path.max_queries) {
        const int mq = static_cast<int>(std::min<index_t>(path.max_queries, m - i0));
        path.dots(codes.data() + i0 * dp, mq, dp, kr.codes, ntiles, dots.data(), kScanRows);
        for (int i = 0; i < mq; ++i) {
          const index_t j = i0 + i;
          std::vector<index_t>& mine = found[wk][j];
          if (static_cast<index_t>(mine.size()) > limit) continue;  // given up on
          const std::int32_t* dj = dots.data() + i * kScanRows;
          const QueryFacts<T> qf = facts[j];
          const T wq = w_q[j], at_least = bar[j];
          if (projected_upper_bounds(dj, rows, qf, kr, w_k, wq, slack, at_least, hi.data()) == 0)
            continue;
          for (index_t t = rows; t % kScreenChunk != 0; ++t)
            hi[t] = -std::numeric_limits<T>::infinity();
          // by chunks, passing keys from a bit mask (as the screen finds them)
          for (index_t c0 = 0; c0 < rows; c0 += kScreenChunk) {
            std::uint32_t pass = 0;
            for (index_t b = 0; b < kScreenChunk; ++b)
              pass |= std::uint32_t(hi[c0 + b] >= at_least) << b;
            for (; pass != 0; pass &= pass - 1) mine.push_back(o + c0 + __builtin_ctz(pass));
          }
        }
      }
    }
  });
  for (index_t j = 0; j < m; ++j) {
    std::vector<index_t>& ids = out[j];
    bool over = false;
    for (index_t wk = 0; wk < workers; ++wk) {
      ids.insert(ids.end(), found[wk][j].begin(), found[wk][j].end());
      over = over || static_cast<index_t>(found[wk][j].size()) > limit;
    }
    ok[j] = !over && static_cast<index_t>(ids.size()) <= limit;
    if (!ok[j]) ids.clear();
  }
}

template <class T>
void ProjectedScreen<T>::survivors(const T* queries, const T* q_sq, index_t nq, const T* floors,
                                   const index_t* anchors, index_t limit,
                                   std::vector<std::vector<index_t>>& out,
                                   std::vector<char>& ok) const {
  out.assign(static_cast<std::size_t>(nq), {});
  ok.assign(static_cast<std::size_t>(nq), 0);
  if (anchors != nullptr && use_neighbourhoods_)
    answer_from_neighbourhoods(floors, anchors, nq, out, ok);
  std::vector<index_t> live;  // the queries screened here
  std::vector<double> units;
  for (index_t i = 0; i < nq; ++i) {
    if (ok[i] || !std::isfinite(double(floors[i])) || double(q_sq[i]) < kTinySq) continue;
    units.resize(units.size() + static_cast<std::size_t>(d_));
    if (!unit_row(queries + i * d_, d_, units.data() + units.size() - d_)) {
      units.resize(units.size() - d_);
      continue;
    }
    live.push_back(i);
  }
  const index_t m = static_cast<index_t>(live.size());
  if (m == 0) return;
  const std::vector<double> proj = project(units.data(), m);
  std::vector<T> bars(static_cast<std::size_t>(m));
  for (index_t j = 0; j < m; ++j) bars[j] = floors[live[j]];
  std::vector<std::vector<index_t>> found;
  std::vector<char> passed;
  coarse_answers_ += screen_projected(proj.data(), m, bars.data(), limit, found, passed);
  for (index_t j = 0; j < m; ++j) {
    out[live[j]] = std::move(found[j]);
    ok[live[j]] = passed[j];
  }
}

template <class T>
std::vector<double> ProjectedScreen<T>::project(const double* units, index_t m) const {
  const index_t r = dims();
  std::vector<double> proj(static_cast<std::size_t>(m * r));
  blas::gemm_parallel<double>(false, false, m, r, d_, 1.0, units, d_, basis_.data(), r, 0.0,
                              proj.data(), r);
  return proj;
}

template <class T>
index_t ProjectedScreen<T>::screen_projected(const double* proj, index_t m, const T* bars,
                                             index_t limit, std::vector<std::vector<index_t>>& out,
                                             std::vector<char>& ok) const {
  out.assign(static_cast<std::size_t>(m), {});
  ok.assign(static_cast<std::size_t>(m), 0);
  const index_t r = dims();
  // The coarse screen for the queries no sampled key can reach (their bounds taken in double
  // from the sample's coordinates: a forecast only, the screens themselves decide), the fine
  // one for every query it leaves.
  std::vector<index_t> coarse, fine;
  const index_t c = coarse_.r, sampled = static_cast<index_t>(sample_w_.size());
  std::vector<double> sample_dots(static_cast<std::size_t>(c > 0 ? m * sampled : 0));
  if (c > 0)
    blas::gemm<double>(false, true, m, sampled, c, 1.0, proj, r, sample_p_.data(), c, 0.0,
                       sample_dots.data(), sampled);
  for (index_t j = 0; j < m; ++j) {
    bool reached = c == 0;
    if (!reached) {
      const double* pj = proj + j * r;
      double p2 = 0;
      for (index_t t = 0; t < c; ++t) p2 += pj[t] * pj[t];
      const double wq = std::sqrt(std::max(0.0, 1 - p2)), bar = bars[j];
      const double* dots = sample_dots.data() + j * sampled;
      for (index_t s = 0; s < sampled && !reached; ++s)
        reached = dots[s] + wq * sample_w_[s] >= bar;
    }
    (reached ? fine : coarse).push_back(j);
  }
  std::vector<std::vector<index_t>> found;
  std::vector<char> passed;
  index_t answered = 0;
  if (!coarse.empty()) {
    scan(coarse_, coarse, proj, bars, std::min(limit, kCoarseSurvivors), found, passed);
    for (std::size_t j = 0; j < coarse.size(); ++j) {
      if (!passed[j]) {
        fine.push_back(coarse[j]);
        continue;
      }
      out[coarse[j]] = std::move(found[j]);
      ok[coarse[j]] = 1;
      ++answered;
    }
    std::sort(fine.begin(), fine.end());
  }
  scan(fine_, fine, proj, bars, limit, found, passed);
  for (std::size_t j = 0; j < fine.size(); ++j) {
    out[fine[j]] = std::move(found[j]);
    ok[fine[j]] = passed[j];
  }
  return answered;
}

template <class T>
void ProjectedScreen<T>::answer_from_neighbourhoods(const T* floors, const index_t* anchors,
                                                    index_t nq,
                                                    std::vector<std::vector<index_t>>& out,
                                                    std::vector<char>& ok) const {
  // The bound each query's survivors must reach: with a = floor - eps (eps the search's
  // rounding of a cosine), true cos(q, x) >= a for x and the anchor, so cos(h, x) >= 2 a^2 - 1
  // (for a >= 0: the two angles add up to at most pi). A neighbourhood serves where that is
  // above its own bar plus eps (a key outside it scores below the bar in the search, so its
  // true cosine is below bar + eps); kSlack covers the neighbourhoods' double cosines.
  constexpr double kSlack = 1e-9;
  const double eps = search_rounding<T>(d_);
  std::vector<double> need(static_cast<std::size_t>(nq), std::nan(""));
  std::vector<index_t> wanted;
  for (index_t i = 0; i < nq; ++i) {
    const double a = double(floors[i]) - eps;
    if (anchors[i] < 0 || !std::isfinite(a) || a < 0) continue;
    const double t = 2 * a * a - 1 - kSlack;
    if (t < std::max(kNeighbourFloor, double(static_cast<T>(kNeighbourFloor))) + eps) continue;
    need[i] = t;
    wanted.push_back(anchors[i]);
  }
  if (wanted.empty()) return;
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  std::unordered_map<index_t, std::shared_ptr<const Neighbourhood>> known;
  std::vector<index_t> missing;
  {
    std::lock_guard<std::mutex> lock(neighbour_mutex_);
    for (index_t a : wanted) {
      auto it = neighbourhoods_.find(a);
      if (it != neighbourhoods_.end())
        known.emplace(a, it->second);
      else
        missing.push_back(a);
    }
  }
  if (!missing.empty()) {
    // The screens for the anchors themselves as queries, the bar kNeighbourFloor.
    const index_t m = static_cast<index_t>(missing.size());
    std::vector<double> units(static_cast<std::size_t>(m * d_), 0.0);
    std::vector<char> unit(static_cast<std::size_t>(m));
    for (index_t j = 0; j < m; ++j)
      unit[j] = !std::isinf(fine_.residual[missing[j]]) &&
                unit_row(keys_ + missing[j] * d_, d_, units.data() + j * d_);
    const std::vector<double> proj = project(units.data(), m);
    std::vector<T> bars(static_cast<std::size_t>(m), static_cast<T>(kNeighbourFloor));
    std::vector<std::vector<index_t>> found;
    std::vector<char> passed;
    // the screens' bounds are loose at this bar: many keys survive them that re-scoring drops
    screen_projected(proj.data(), m, bars.data(), std::max(kNeighbourLimit, n_ / kWideShortlist),
                     found, passed);
    std::vector<std::shared_ptr<const Neighbourhood>> made(static_cast<std::size_t>(m));
    parallel_for(m, [&](index_t j) {
      made[j] = std::make_shared<const Neighbourhood>(
          unit[j] && passed[j] ? find_neighbourhood(missing[j], units.data() + j * d_, found[j])
                               : Neighbourhood{});
    });
    std::lock_guard<std::mutex> lock(neighbour_mutex_);
    for (index_t j = 0; j < m; ++j) {
      auto [it, fresh] = neighbourhoods_.emplace(missing[j], made[j]);
      if (fresh)
        neighbour_bytes_ += sizeof(Neighbourhood) + 2 * sizeof(void*) +
                            made[j]->ids.size() * (sizeof(index_t) + sizeof(double));
      known.emplace(missing[j], it->second);
    }
  }
  index_t answered = 0;
  for (index_t i = 0; i < nq; ++i) {
    if (std::isnan(need[i])) continue;
    const Neighbourhood& nb = *known.at(anchors[i]);
    if (!nb.usable) continue;
    std::vector<index_t>& ids = out[i];
    for (std::size_t t = 0; t < nb.ids.size() && nb.cos[t] >= need[i]; ++t)
      ids.push_back(nb.ids[t]);
    ids.insert(ids.end(), tiny_.begin(), tiny_.end());
    ok[i] = 1;
    ++answered;
  }
  neighbour_answers_ += answered;
}

template <class T>
typename ProjectedScreen<T>::Neighbourhood ProjectedScreen<T>::find_neighbourhood(
    index_t anchor, const double* unit, const std::vector<index_t>& found) const {
  // found: every key whose search score against the anchor (unit: its unit row) can reach
  // kNeighbourFloor (keys of (near) zero norm among them); each re-scored in double from the
  // float keys
  Neighbourhood nb;
  std::vector<std::pair<double, index_t>> near;
  for (index_t x : found) {
    if (x == anchor || std::isinf(fine_.residual[x])) continue;
    const T* k = keys_ + x * d_;
    double uk = 0, kk = 0;
    for (index_t t = 0; t < d_; ++t) uk += unit[t] * k[t], kk += double(k[t]) * k[t];
    const double c = uk / std::sqrt(kk);
    if (c >= kNeighbourFloor) near.emplace_back(c, x);
  }
  if (static_cast<index_t>(near.size()) > kNeighbourLimit) return nb;
  std::sort(near.begin(), near.end(), std::greater<>());
  for (const auto& [c, x] : near) nb.ids.push_back(x), nb.cos.push_back(c);
  nb.usable = true;
  return nb;
}

template <class T>
std::int64_t ProjectedScreen<T>::neighbourhoods() const {
  std::lock_guard<std::mutex> lock(neighbour_mutex_);
  return static_cast<std::int64_t>(neighbourhoods_.size());
}

#define LARIMAR_INSTANTIATE(T)                                                                     \
  template T quantize_int8_key<T>(const T*, index_t, std::int8_t*);                                \
  template void decode_int8_key<T>(const std::int8_t*, T, index_t, T*);                            \
  template void decode_int8_slot<T>(const std::int8_t*, T, index_t, index_t, T*);                  \
  template void put_int8_key<T>(const T*, T, const std::int8_t*, T, index_t, Metric, Int8Slots<T>, \
                                index_t);                                                          \
  template void quantize_int8_keys<T>(const T*, const T*, index_t, index_t, Metric, Int8Slots<T>,  \
                                      index_t);                                                    \
  template std::size_t int8_rows_bytes<T>(index_t, index_t);                                       \
  template bool search_int8<T>(const T*, index_t, index_t, const std::vector<KeyBlock<T>>&,        \
                               const std::vector<Int8Rows<T>>&, index_t, Metric, index_t*, T*,     \
                               bool, const index_t*, index_t, const ProjectedScreen<T>*);          \
  template class ProjectedScreen<T>;
LARIMAR_INSTANTIATE(float)
LARIMAR_INSTANTIATE(double)
#undef LARIMAR_INSTANTIATE

}  // namespace larimar
