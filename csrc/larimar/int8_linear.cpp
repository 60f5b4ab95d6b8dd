#include "larimar/int8_linear.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "larimar/int8_keys.hpp"

// This file is built with -ffp-contract=off (CMakeLists.txt): a fused multiply-add in one
// target clone and not in another would round the codes and outputs differently per CPU.

namespace larimar {
namespace {

// Weight rows read per pass of a micro-block of inputs: their codes stay in L1 (32 KiB or
// more). Measured on the encoder's shapes (AVX2): 24 KiB ran 1.0-1.3x 192 KiB chunks (in L2).
// At least two tiles, even where they spill to L2 (1,536 inputs), so that the VNNI path runs
// its 12 x 2 block rather than 12 x 1 (1,536 -> 384: 269-272 -> 292 GMAC/s in one run on a
// Zen 4, near that host's noise).
constexpr index_t kChunkBytes = 24 * 1024;
constexpr index_t kMinChunkTiles = 2;
// Input rows per parallel task, in micro-blocks of the dot path.
constexpr index_t kTaskBlocks = 16;

// Input row x (d values) -> offset codes (dp, 0 past d, as c + 64) and its scale r =
// max|x| / 63 (0 for a zero row). Returns false when x holds a NaN or an infinity.
LARIMAR_MULTIVERSION bool quantize_input(const float* x, index_t d, index_t dp, std::uint8_t* code,
                                         float* scale) {
  float m = 0;
  unsigned bad = 0;
  for (index_t t = 0; t < d; ++t) {
    const float a = std::fabs(x[t]);
    m = a > m ? a : m;
    bad |= !(a <= std::numeric_limits<float>::max());
  }
  const float r = m / float(kInt8QueryLevels);
  *scale = r;
  const float inv = r > 0 ? 1.0f / r : 0.0f;
  // Round to nearest even by the 1.5 * 2^23 trick: |x / r| <= 63.5 is far inside its range,
  // and unlike nearbyint it vectorises.
  constexpr float kRound = 12582912.0f;
  for (index_t t = 0; t < d; ++t) {
    float v = (x[t] * inv + kRound) - kRound;
    v = std::min(float(kInt8QueryLevels), std::max(-float(kInt8QueryLevels), v));
    code[t] = static_cast<std::uint8_t>(static_cast<int>(v) + kInt8QueryOffset);
  }
  for (index_t t = d; t < dp; ++t) code[t] = static_cast<std::uint8_t>(kInt8QueryOffset);
  return bad == 0;
}

// y_j = (dot_j - offset_j) * (r s_j) + b_j for n outputs.
LARIMAR_MULTIVERSION void scale_back(const std::int32_t* dots, const std::int32_t* offset,
                                     const float* scale, const float* bias, float r, index_t n,
                                     float* y) {
  if (bias != nullptr) {
    for (index_t j = 0; j < n; ++j)
      y[j] = static_cast<float>(dots[j] - offset[j]) * (r * scale[j]) + bias[j];
  } else {
    for (index_t j = 0; j < n; ++j) y[j] = static_cast<float>(dots[j] - offset[j]) * (r * scale[j]);
  }
}

}  // namespace

Int8Linear::Int8Linear(const float* weight, const float* bias, index_t out_features,
                       index_t in_features)
    : out_(out_features), in_(in_features), dp_(int8_padded_dim(in_features)) {
  check_dim(out_features, "weight", "out_features");
  check_dim(in_features, "weight", "in_features");
  check_finite(weight, out_features * in_features, "weight");
  if (bias != nullptr) check_finite(bias, out_features, "bias");
  const index_t tiles = (out_ + kInt8TileRows - 1) / kInt8TileRows;
  check_allocation(double(tiles) * kInt8TileRows * dp_ + 12.0 * out_, "weight", "its int8 codes");
  codes_.assign(static_cast<std::size_t>(tiles * kInt8TileRows * dp_), 0);
  scale_.resize(static_cast<std::size_t>(out_));
  offset_.resize(static_cast<std::size_t>(out_));
  if (bias != nullptr) bias_.assign(bias, bias + out_);
  std::vector<std::int8_t> code(static_cast<std::size_t>(in_));
  for (index_t j = 0; j < out_; ++j) {
    scale_[j] = quantize_int8_key(weight + j * in_, in_, code.data());
    put_int8_slot_codes(code.data(), in_, codes_.data(), j);
    std::int32_t sum = 0;
    for (index_t t = 0; t < in_; ++t) sum += code[t];
    offset_[j] = kInt8QueryOffset * sum;
  }
}

void Int8Linear::forward(const float* x, index_t m, float* y) const {
  if (m == 0) return;
  const Int8Dots path = int8_dots();
  const index_t tiles = (out_ + kInt8TileRows - 1) / kInt8TileRows;
  const index_t chunk_tiles =
      std::max<index_t>(kMinChunkTiles, kChunkBytes / (kInt8TileRows * dp_));
  const index_t chunk_rows = chunk_tiles * kInt8TileRows;
  const index_t chunks = (tiles + chunk_tiles - 1) / chunk_tiles;
  // Tasks of at most kTaskBlocks micro-blocks, as many as fill whole rounds of the threads
  // and of equal size (256 rows had been tasks of 192 and 64: one thread did 3/4).
  const index_t threads = num_threads();
  const index_t blocks = (m + path.block - 1) / path.block;
  index_t row_tasks = (blocks + kTaskBlocks - 1) / kTaskBlocks;
  if (row_tasks > 1) row_tasks = std::min(blocks, (row_tasks + threads - 1) / threads * threads);
  const index_t task_rows = (blocks + row_tasks - 1) / row_tasks * path.block;
  row_tasks = (m + task_rows - 1) / task_rows;
  // Few input rows (a decode step has one or two) are too few tasks for the cores: then the
  // output rows are split too, so that each thread streams its own part of the weights
  // once instead of one thread streaming all of them.
  const index_t groups =
      row_tasks >= threads ? 1 : std::min(chunks, (threads + row_tasks - 1) / row_tasks);
  const index_t group_chunks = (chunks + groups - 1) / groups;
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(m * dp_));
  std::vector<float> r(static_cast<std::size_t>(m));
  std::vector<char> finite(static_cast<std::size_t>(row_tasks), 1);
  const auto quantize = [&](index_t task) {
    const index_t r0 = task * task_rows, rows = std::min(task_rows, m - r0);
    for (index_t i = r0; i < r0 + rows; ++i)
      if (!quantize_input(x + i * in_, in_, dp_, codes.data() + i * dp_, &r[i])) finite[task] = 0;
    return finite[task] != 0;
  };
  const auto multiply = [&](index_t task, index_t group) {
    const index_t r0 = task * task_rows, rows = std::min(task_rows, m - r0);
    const index_t c_end = std::min(tiles, (group + 1) * group_chunks * chunk_tiles);
    std::vector<std::int32_t> dots(static_cast<std::size_t>(path.block * chunk_rows));
    for (index_t c0 = group * group_chunks * chunk_tiles; c0 < c_end; c0 += chunk_tiles) {
      const index_t nt = std::min(chunk_tiles, tiles - c0), j0 = c0 * kInt8TileRows;
      const index_t n = std::min(nt * kInt8TileRows, out_ - j0);
      const std::int8_t* w = codes_.data() + j0 * dp_;
      for (index_t i0 = r0; i0 < r0 + rows; i0 += path.block) {
        const int nq = static_cast<int>(std::min<index_t>(path.block, r0 + rows - i0));
        path.dots(codes.data() + i0 * dp_, nq, dp_, w, nt, dots.data(), chunk_rows);
        for (int i = 0; i < nq; ++i)
          scale_back(dots.data() + i * chunk_rows, offset_.data() + j0, scale_.data() + j0,
                     bias_.empty() ? nullptr : bias_.data() + j0, r[i0 + i], n,
                     y + (i0 + i) * out_ + j0);
      }
    }
  };
  // One parallel region a call: each task quantises its own rows, or, when the output rows
  // are split too (and tasks would share rows), the few input rows are quantised first on
  // this thread.
  if (groups == 1) {
    parallel_for(row_tasks, [&](index_t task) {
      if (quantize(task)) multiply(task, 0);
    });
  } else {
    bool ok = true;
    for (index_t task = 0; task < row_tasks; ++task) ok = quantize(task) && ok;
    if (ok)
      parallel_for(row_tasks * groups,
                   [&](index_t item) { multiply(item / groups, item % groups); });
  }
  require(std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; }), "x",
          "expected finite values (a NaN or an infinity has no int8 code)");
}

void Int8Linear::weight_codes(std::int8_t* codes, float* scales) const {
  for (index_t j = 0; j < out_; ++j) int8_slot_codes(codes_.data(), in_, j, codes + j * in_);
  std::copy(scale_.begin(), scale_.end(), scales);
}

std::size_t Int8Linear::bytes() const {
  return codes_.size() + sizeof(float) * (scale_.size() + bias_.size()) +
         sizeof(std::int32_t) * offset_.size();
}

}  // namespace larimar
