/// \file
/// \brief OWL's layerwise outlier distribution (methods.md 5.2): per-input-channel activation
/// norms from calibration data, the Wanda score |W| * norm, and the percentage of a block's
/// scores above M times the block mean. Backend-neutral host code (no Eigen); model/outliers.hpp
/// runs the calibration through a decoder.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "loralab/core/error.hpp"

namespace loralab::sampling {

/// \ingroup sampling
/// \brief OWL's outlier threshold M. The OwLore release's LLaMA-2-7B file is named `ratio_13`
/// (methods.md 5.2: M = 13, our default); OWL's own pruning default is 5.
inline constexpr double kOwloreOutlierThreshold = 13.0;

/// \ingroup sampling
/// \brief Running per-input-channel statistics of one linear's input over calibration samples:
/// a_c = sqrt(mean over samples s of sum over tokens t of X[s, t, c]^2) (OWL's layerwrapper).
class ChannelNorms {
 public:
  /// \brief Statistics of `in` channels.
  explicit ChannelNorms(std::int64_t in = 0) : sum_sq_(std::size_t(in), 0.0) {}

  /// \brief Adds one calibration sample: `tokens` rows of `in` values, row-major.
  /// \throws Error when `rows` is not tokens x channels().
  template <class T>
  void add_sample(std::span<const T> rows, std::int64_t tokens) {
    const std::int64_t in = channels();
    LORALAB_CHECK(tokens >= 1 && std::int64_t(rows.size()) == tokens * in,
                  "[loralab.shape] ChannelNorms::add_sample: ", rows.size(), " values for ", tokens,
                  " tokens of ", in, " channels");
    for (std::int64_t t = 0; t < tokens; ++t)
      for (std::int64_t c = 0; c < in; ++c) {
        const double x = double(rows[std::size_t(t * in + c)]);
        sum_sq_[std::size_t(c)] += x * x;
      }
    ++samples_;
  }

  /// \brief Number of channels.
  std::int64_t channels() const { return std::int64_t(sum_sq_.size()); }
  /// \brief Samples seen.
  std::int64_t samples() const { return samples_; }
  /// \brief a_c for every channel. \throws Error before any sample.
  std::vector<double> norms() const {
    LORALAB_CHECK(samples_ > 0, "[loralab.state] ChannelNorms::norms before any sample");
    std::vector<double> a(sum_sq_.size());
    for (std::size_t c = 0; c < a.size(); ++c) a[c] = std::sqrt(sum_sq_[c] / double(samples_));
    return a;
  }

 private:
  std::vector<double> sum_sq_;
  std::int64_t samples_ = 0;
};

/// \ingroup sampling
/// \brief One linear sublayer of a block: its weight [rows = out x cols = in], row-major, and
/// the calibration norm of each input channel.
template <class T>
struct ScoredLinear {
  std::span<const T> weight;        ///< W, [out x in] row-major
  std::int64_t rows = 0;            ///< out features
  std::int64_t cols = 0;            ///< in features
  std::span<const double> channel;  ///< a_c, one per input channel
};

/// \ingroup sampling
/// \brief D_l = 100 * (number of scores above M * mean) / (number of scores), where the scores
/// |W[o, c]| * a_c of ALL the block's sublayers are pooled and the mean is over that whole pool
/// (methods.md 5.2 step 3). \throws Error on a shape mismatch, an empty block or M <= 0.
template <class T>
double block_outlier_ratio(std::span<const ScoredLinear<T>> linears, double threshold) {
  LORALAB_CHECK(threshold > 0, "[loralab.config] outlier threshold M=", threshold, " must be > 0");
  double sum = 0;
  std::int64_t count = 0;
  for (const auto& s : linears) {
    LORALAB_CHECK(std::int64_t(s.weight.size()) == s.rows * s.cols &&
                      std::int64_t(s.channel.size()) == s.cols,
                  "[loralab.shape] outlier score: weight of ", s.weight.size(), " entries for [",
                  s.rows, " x ", s.cols, "] with ", s.channel.size(), " channel norms");
    for (std::int64_t o = 0; o < s.rows; ++o)
      for (std::int64_t c = 0; c < s.cols; ++c)
        sum += std::abs(double(s.weight[std::size_t(o * s.cols + c)])) * s.channel[c];
    count += s.rows * s.cols;
  }
  LORALAB_CHECK(count > 0, "[loralab.shape] outlier score of a block without weights");
  const double cut = threshold * sum / double(count);
  std::int64_t above = 0;
  for (const auto& s : linears)
    for (std::int64_t o = 0; o < s.rows; ++o)
      for (std::int64_t c = 0; c < s.cols; ++c)
        above += std::abs(double(s.weight[std::size_t(o * s.cols + c)])) * s.channel[c] > cut;
  return 100.0 * double(above) / double(count);
}

/// \ingroup sampling
/// \brief OwLore's probabilities p_l = D_l / sum D. \throws Error when every ratio is 0 (no
/// outliers at this M: lower M) or one is negative.
inline std::vector<double> outlier_probabilities(std::span<const double> ratios) {
  double total = 0;
  for (double d : ratios) {
    LORALAB_CHECK(d >= 0 && d <= 100, "[loralab.config] outlier ratio ", d, " outside [0, 100]");
    total += d;
  }
  LORALAB_CHECK(total > 0, "[loralab.config] every block's outlier ratio is 0: no score exceeds ",
                "M times its block mean; choose a smaller M");
  std::vector<double> p(ratios.size());
  for (std::size_t l = 0; l < p.size(); ++l) p[l] = ratios[l] / total;
  return p;
}

}  // namespace loralab::sampling
