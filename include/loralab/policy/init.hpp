/// \file
/// \brief Init axis: how A and B start.
#pragma once

#include <string_view>

#include "loralab/policy/axes.hpp"

namespace loralab {

/// \ingroup init
/// \brief Which r of the k singular components an SVD-slice init makes trainable (ROSA,
/// methods.md 6.3 step 4).
enum class SubspaceLaw {
  uniform,     ///< a uniformly random r-subset of {0..k-1} (paper-faithful [CHOICE], default)
  contiguous,  ///< the ROSA code's `random`: {s0..s0+r-1}, s0 uniform in [0, k-r-1]; never the
               ///< last block
  top,         ///< {0..r-1}: the largest singular values (PiSSA)
  bottom,      ///< the last r: the smallest singular values
};

/// \ingroup init
/// \brief The law's name ("uniform", "contiguous", "top", "bottom").
constexpr std::string_view subspace_law_name(SubspaceLaw law) {
  switch (law) {
    case SubspaceLaw::uniform:
      return "uniform";
    case SubspaceLaw::contiguous:
      return "contiguous";
    case SubspaceLaw::top:
      return "top";
    case SubspaceLaw::bottom:
      return "bottom";
  }
  return "?";
}

/// \ingroup init
/// \brief PEFT's default (`init_lora_weights=True`): A from Kaiming-uniform with a = sqrt(5),
/// i.e. \f$ A_{ij} \sim U(-1/\sqrt{d_{in}}, 1/\sqrt{d_{in}}) \f$, and B = 0, so the adapted layer
/// equals the base layer at step 0.
/// \sa methods.md section 1.2.
struct KaimingUniformA {
  using axis = axes::init;                     ///< the axis this policy sits on
  static constexpr bool gaussian = false;      ///< A drawn from a normal, not a uniform
  static constexpr bool svd_slice = false;     ///< factors sliced from the weight's SVD
  static constexpr bool refactorizes = false;  ///< re-sliced during training (ROSA)
};

/// \ingroup init
/// \brief PEFT's `"gaussian"` init: \f$ A_{ij} \sim N(0, (1/r)^2) \f$, B = 0.
/// \sa methods.md section 1.2.
struct GaussianA {
  using axis = axes::init;                     ///< the axis this policy sits on
  static constexpr bool gaussian = true;       ///< A drawn from a normal, not a uniform
  static constexpr bool svd_slice = false;     ///< factors sliced from the weight's SVD
  static constexpr bool refactorizes = false;  ///< re-sliced during training (ROSA)
};

/// \ingroup init
/// \brief ROSA (methods.md 6): the factors are an r-component slice of the weight's thin SVD,
/// B = U_I, A = diag(S_I) V_I^T / s, and W keeps the complement (svd_equal: the layer's function
/// is unchanged). The model re-slices every N steps (merge, SVD, a new subset I drawn by `Law`),
/// and the trainer resets the factors' optimizer state then.
template <SubspaceLaw Law = SubspaceLaw::uniform>
struct RosaSubspace {
  using axis = axes::init;                    ///< the axis this policy sits on
  static constexpr bool gaussian = false;     ///< unused (no random draw of values)
  static constexpr bool svd_slice = true;     ///< factors sliced from the weight's SVD
  static constexpr bool refactorizes = true;  ///< re-sliced during training
  static constexpr SubspaceLaw law = Law;     ///< which components
};

/// \ingroup init
/// \brief PiSSA-style principal init: the top-r slice of the SVD, once (same machinery as ROSA).
struct PrincipalSubspace {
  using axis = axes::init;                              ///< the axis this policy sits on
  static constexpr bool gaussian = false;               ///< unused
  static constexpr bool svd_slice = true;               ///< factors sliced from the weight's SVD
  static constexpr bool refactorizes = false;           ///< sliced once, at construction
  static constexpr SubspaceLaw law = SubspaceLaw::top;  ///< the principal components
};

/// \ingroup init
/// \brief The interface of an init policy.
template <class P>
concept InitPolicy = detail::OnAxis<P, axes::init> && requires {
  { P::gaussian } -> std::convertible_to<bool>;
  { P::svd_slice } -> std::convertible_to<bool>;
  { P::refactorizes } -> std::convertible_to<bool>;
};

}  // namespace loralab
