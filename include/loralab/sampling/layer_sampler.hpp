/// \file
/// \brief `sampling::LayerSampler`: LISA / OwLore block sampling (methods.md 5.3). Every K steps
/// (at global steps 0, K, 2K, ...) gamma distinct blocks are drawn by successive weighted sampling
/// without replacement (numpy's `choice(replace=False, p=...)`); only they train until the next
/// draw (the optimizer-state policy of OptimizerOptions says what happens to the state of the
/// others). The draw of a period is a pure function of (seed, period), so a resumed run draws what
/// an uninterrupted one did.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/core/philox.hpp"
#include "loralab/policy/sampling.hpp"

namespace loralab::sampling {

/// \ingroup sampling
/// \brief Run-time knobs of layer sampling (defaults: LMFlow's LISA, gamma 2, K 20).
struct SamplerConfig {
  int gamma = 2;             ///< blocks drawn per period
  std::int64_t period = 20;  ///< K: steps between draws
  std::uint64_t seed = 0;    ///< Philox key of the draws
};

/// \ingroup sampling
/// \brief Successive weighted sampling of `gamma` distinct indices: draw one with probability
/// proportional to `weights` among those left, remove it, repeat. `uniform(k)` gives the k-th
/// uniform draw in [0, 1). Returns the indices in draw order.
/// \pre at least `gamma` weights are positive.
template <class Uniform>
std::vector<int> successive_weighted_sample(std::span<const double> weights, int gamma,
                                            Uniform&& uniform) {
  std::vector<double> left(weights.begin(), weights.end());
  std::vector<int> picked;
  for (int k = 0; k < gamma; ++k) {
    double total = 0;
    for (double w : left) total += w;
    const double target = uniform(k) * total;
    double cum = 0;
    int pick = -1, last_positive = -1;
    for (int i = 0; i < int(left.size()); ++i) {
      if (left[i] <= 0) continue;
      last_positive = i;
      cum += left[i];
      if (target < cum) {
        pick = i;
        break;
      }
    }
    if (pick < 0) pick = last_positive;  // rounding at the top end of the cumulative sum
    picked.push_back(pick);
    left[pick] = 0;
  }
  return picked;
}

/// \ingroup sampling
/// \brief Draws the trainable blocks of every sampling period from a SamplingPolicy's weights.
class LayerSampler {
 public:
  /// \brief The sampler of policy P over L blocks. \throws Error on gamma outside [1, L], a
  /// period < 1, a negative or non-finite weight, or fewer than gamma positive weights.
  template <SamplingPolicy P>
  static LayerSampler make(int L, const SamplerConfig& cfg, SamplingInputs in = {}) {
    return LayerSampler(P::weights(L, in), cfg, std::string(P::name), P::samples);
  }

  /// \brief From explicit weights (see make()).
  LayerSampler(std::vector<double> weights, const SamplerConfig& cfg, std::string name,
               bool samples = true)
      : cfg_(cfg), name_(std::move(name)), samples_(samples) {
    const int L = int(weights.size());
    LORALAB_CHECK(L >= 1, "[loralab.config] layer sampling over zero blocks");
    LORALAB_CHECK(!samples_ || (cfg.gamma >= 1 && cfg.gamma <= L),
                  "[loralab.config] layer sampling draws gamma=", cfg.gamma,
                  " blocks per period; the model has ", L, " (need 1 <= gamma <= L)");
    LORALAB_CHECK(cfg.period >= 1, "[loralab.config] layer sampling period K=", cfg.period,
                  " must be >= 1");
    double total = 0;
    int positive = 0;
    for (int l = 0; l < L; ++l) {
      LORALAB_CHECK(std::isfinite(weights[l]) && weights[l] >= 0,
                    "[loralab.config] layer sampling weight of block ", l, " is ", weights[l],
                    "; weights must be finite and >= 0");
      total += weights[l];
      positive += weights[l] > 0;
    }
    LORALAB_CHECK(!samples_ || positive >= cfg.gamma, "[loralab.config] layer sampling (", name_,
                  "): only ", positive,
                  " blocks have a positive weight, fewer than gamma=", cfg.gamma);
    probabilities_.resize(L);
    for (int l = 0; l < L; ++l) probabilities_[l] = total > 0 ? weights[l] / total : 1.0 / L;
  }

  /// \brief Whether it samples at all (AllBlocks does not).
  bool samples() const { return samples_; }
  /// \brief The policy's name.
  const std::string& name() const { return name_; }
  /// \brief The configuration.
  const SamplerConfig& config() const { return cfg_; }
  /// \brief Number of blocks.
  int blocks() const { return int(probabilities_.size()); }
  /// \brief p_l: the weights normalized to sum 1.
  const std::vector<double>& probabilities() const { return probabilities_; }
  /// \brief Whether a new draw happens before global step `step` (steps 0, K, 2K, ...).
  bool resamples_at(std::int64_t step) const { return samples_ && step % cfg_.period == 0; }

  /// \brief The blocks that train at global step `step` (the draw of its period), ascending.
  std::vector<int> blocks_at(std::int64_t step) const {
    std::vector<int> out;
    if (!samples_) {
      for (int l = 0; l < blocks(); ++l) out.push_back(l);
      return out;
    }
    const std::uint64_t period = std::uint64_t(step / cfg_.period);
    const std::uint64_t stream =
        make_stream(RngPurpose::layer_sampling, 0, std::uint32_t(period & 0xFFFFFFFFu));
    out = successive_weighted_sample(probabilities_, cfg_.gamma, [&](int k) {
      // 53-bit uniforms from words (2k, 2k+1); the period's high bits go in the block index
      const std::uint64_t base = (period >> 32) << 40;
      return uniform01_double(philox_word(cfg_.seed, stream, base + 2 * std::uint64_t(k)),
                              philox_word(cfg_.seed, stream, base + 2 * std::uint64_t(k) + 1));
    });
    std::sort(out.begin(), out.end());
    return out;
  }

  /// \brief One flag per block: trains at `step`.
  std::vector<bool> active_at(std::int64_t step) const {
    std::vector<bool> on(blocks(), false);
    for (int l : blocks_at(step)) on[l] = true;
    return on;
  }

 private:
  SamplerConfig cfg_;
  std::string name_;
  bool samples_;
  std::vector<double> probabilities_;
};

}  // namespace loralab::sampling
