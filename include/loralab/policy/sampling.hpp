/// \file
/// \brief The layer-sampling axis (methods.md 5.3): which blocks of a decoder train in each
/// sampling period. A policy is a tag that turns the number of blocks (and, for OwLore, the
/// layerwise outlier ratios) into sampling weights; sampling::LayerSampler draws from them.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/policy/axes.hpp"

namespace loralab {

/// \ingroup sampling
/// \brief What the sampling weights may depend on besides the number of blocks.
struct SamplingInputs {
  std::span<const double> outlier_ratios;  ///< D_l per block (OutlierWeighted; methods.md 5.2)
  std::span<const double> custom_weights;  ///< one weight per block (CustomWeights)
};

/// \ingroup sampling
/// \brief A layer-sampling policy: names the axis, says whether it samples at all, and gives one
/// non-negative weight per block (normalized by the sampler).
template <class P>
concept SamplingPolicy = detail::OnAxis<P, axes::sampling> && requires(int L, SamplingInputs in) {
  { P::samples } -> std::convertible_to<bool>;
  { P::name } -> std::convertible_to<std::string_view>;
  { P::weights(L, in) } -> std::same_as<std::vector<double>>;
};

/// \ingroup sampling
/// \brief Every block trains every step (the default; no sampler runs).
struct AllBlocks {
  using axis = axes::sampling;                     ///< the axis
  static constexpr bool samples = false;           ///< no draws
  static constexpr std::string_view name = "all";  ///< for logs
  /// \brief Uniform weights (unused: every block is on).
  static std::vector<double> weights(int L, SamplingInputs) { return std::vector<double>(L, 1.0); }
};

/// \ingroup sampling
/// \brief LISA: p_l = 1/L (LMFlow's lisa_trainer).
struct UniformBlocks {
  using axis = axes::sampling;                         ///< the axis
  static constexpr bool samples = true;                ///< draws gamma blocks every K steps
  static constexpr std::string_view name = "uniform";  ///< for logs
  /// \brief 1 per block.
  static std::vector<double> weights(int L, SamplingInputs) { return std::vector<double>(L, 1.0); }
};

/// \ingroup sampling
/// \brief OwLore: p_l proportional to the block's outlier ratio D_l (lisa_prob_mode = owl).
struct OutlierWeighted {
  using axis = axes::sampling;                     ///< the axis
  static constexpr bool samples = true;            ///< draws gamma blocks every K steps
  static constexpr std::string_view name = "owl";  ///< for logs
  /// \brief D_l itself. \throws Error when the ratios are missing or have the wrong length.
  static std::vector<double> weights(int L, SamplingInputs in) {
    LORALAB_CHECK(in.outlier_ratios.size() == std::size_t(L),
                  "[loralab.config] OutlierWeighted sampling needs one outlier ratio per block (",
                  L, "), got ", in.outlier_ratios.size(),
                  "; compute them with sampling::outlier_ratios (methods.md 5.2)");
    return {in.outlier_ratios.begin(), in.outlier_ratios.end()};
  }
};

/// \ingroup sampling
/// \brief OwLore code's `decrease` mode ("LISA-D"): p_l proportional to L - l.
struct DecreasingBlocks {
  using axis = axes::sampling;                          ///< the axis
  static constexpr bool samples = true;                 ///< draws gamma blocks every K steps
  static constexpr std::string_view name = "decrease";  ///< for logs
  /// \brief L - l.
  static std::vector<double> weights(int L, SamplingInputs) {
    std::vector<double> w(L);
    for (int l = 0; l < L; ++l) w[l] = double(L - l);
    return w;
  }
};

/// \ingroup sampling
/// \brief OwLore code's `increase` mode: p_l proportional to l + 1.
struct IncreasingBlocks {
  using axis = axes::sampling;                          ///< the axis
  static constexpr bool samples = true;                 ///< draws gamma blocks every K steps
  static constexpr std::string_view name = "increase";  ///< for logs
  /// \brief l + 1.
  static std::vector<double> weights(int L, SamplingInputs) {
    std::vector<double> w(L);
    for (int l = 0; l < L; ++l) w[l] = double(l + 1);
    return w;
  }
};

/// \ingroup sampling
/// \brief Caller-given weights, one per block.
struct CustomWeights {
  using axis = axes::sampling;                        ///< the axis
  static constexpr bool samples = true;               ///< draws gamma blocks every K steps
  static constexpr std::string_view name = "custom";  ///< for logs
  /// \brief The given weights. \throws Error when their number is not L.
  static std::vector<double> weights(int L, SamplingInputs in) {
    LORALAB_CHECK(in.custom_weights.size() == std::size_t(L), "[loralab.config] CustomWeights ",
                  "sampling needs one weight per block (", L, "), got ", in.custom_weights.size());
    return {in.custom_weights.begin(), in.custom_weights.end()};
  }
};

static_assert(SamplingPolicy<AllBlocks> && SamplingPolicy<UniformBlocks> &&
              SamplingPolicy<OutlierWeighted> && SamplingPolicy<DecreasingBlocks> &&
              SamplingPolicy<IncreasingBlocks> && SamplingPolicy<CustomWeights>);

}  // namespace loralab
