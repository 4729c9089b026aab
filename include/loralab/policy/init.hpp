/// \file
/// \brief Init axis: how A and B start.
#pragma once

#include "loralab/policy/axes.hpp"

namespace loralab {

/// \ingroup init
/// \brief PEFT's default (`init_lora_weights=True`): A from Kaiming-uniform with a = sqrt(5),
/// i.e. \f$ A_{ij} \sim U(-1/\sqrt{d_{in}}, 1/\sqrt{d_{in}}) \f$, and B = 0, so the adapted layer
/// equals the base layer at step 0.
/// \sa methods.md section 1.2.
struct KaimingUniformA {
  using axis = axes::init;                 ///< the axis this policy sits on
  static constexpr bool gaussian = false;  ///< A drawn from a normal, not a uniform
};

/// \ingroup init
/// \brief PEFT's `"gaussian"` init: \f$ A_{ij} \sim N(0, (1/r)^2) \f$, B = 0.
/// \sa methods.md section 1.2.
struct GaussianA {
  using axis = axes::init;                ///< the axis this policy sits on
  static constexpr bool gaussian = true;  ///< A drawn from a normal, not a uniform
};

/// \ingroup init
/// \brief The interface of an init policy.
template <class P>
concept InitPolicy = detail::OnAxis<P, axes::init> && requires {
  { P::gaussian } -> std::convertible_to<bool>;
};

}  // namespace loralab
