/// \file
/// \brief Scaling axis: the factor s in front of the low-rank branch.
#pragma once

#include <cmath>

#include "loralab/policy/axes.hpp"

namespace loralab {

/// \ingroup scaling
/// \brief Standard LoRA scale \f$ s = \alpha / r \f$.
struct AlphaOverRank {
  using axis = axes::scaling;  ///< the axis this policy sits on
  /// \brief The scale for a given alpha and rank.
  static double scale(double alpha, int rank) { return alpha / rank; }
};

/// \ingroup scaling
/// \brief rsLoRA (arXiv 2312.03732) scale \f$ s = \alpha / \sqrt{r} \f$.
struct RsLoraScale {
  using axis = axes::scaling;  ///< the axis this policy sits on
  /// \brief The scale for a given alpha and rank.
  static double scale(double alpha, int rank) { return alpha / std::sqrt(double(rank)); }
};

/// \ingroup scaling
/// \brief The interface of a scaling policy.
template <class P>
concept ScalingPolicy = detail::OnAxis<P, axes::scaling> && requires(double a, int r) {
  { P::scale(a, r) } -> std::convertible_to<double>;
};

}  // namespace loralab
