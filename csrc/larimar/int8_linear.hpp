// A linear layer y = x W^T + b in integer arithmetic (docs/DESIGN.md section 2.11): W is
// scalar-quantised once, one scale per output row, and every input row is quantised when it
// arrives, with a scale of its own; the products are summed exactly in 32-bit integers by the
// int8 scan's dot kernels (int8_keys.hpp: AVX-512 VNNI, AVX2 or portable, the same integers on
// each), and each sum is scaled back to float32.
//
// Codes are those of the scan: 63 levels a side (7 bits), weights c_j,t = round(W_j,t / s_j)
// with s_j = max_t |W_j,t| / 63, inputs c_i,t = round(x_i,t / r_i) with r_i = max_t |x_i,t| /
// 63. Then y_i,j = (sum_t c_i,t c_j,t) r_i s_j + b_j. Per-row scales on both sides follow
// every row's own range; measured on the default model's encoder, its slot ids come out closer
// to the float32 encoder's than with torch.ao's per-tensor 8-bit dynamic quantisation.
#pragma once

#include <cstdint>
#include <vector>

#include "larimar/common.hpp"

namespace larimar {

class Int8Linear {
 public:
  // weight (out_features x in_features) and bias (out_features, or nullptr), both finite.
  Int8Linear(const float* weight, const float* bias, index_t out_features, index_t in_features);
  // y (m x out_features) = x (m x in_features) W^T + b; x must be finite.
  void forward(const float* x, index_t m, float* y) const;
  // The weights as stored: codes (out x in) and scales (out), W ~ scale_j * code_j.
  void weight_codes(std::int8_t* codes, float* scales) const;
  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  bool has_bias() const { return !bias_.empty(); }
  std::size_t bytes() const;

 private:
  index_t out_, in_, dp_;             // dp_: in_ padded to whole groups of 4
  std::vector<std::int8_t> codes_;    // the scan's tiles of 16 rows
  std::vector<float> scale_;          // s_j
  std::vector<std::int32_t> offset_;  // 64 * sum_t c_j,t: the input codes' offset share
  std::vector<float> bias_;           // empty without a bias
};

}  // namespace larimar
