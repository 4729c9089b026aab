/// \file
/// \brief Freeze axis: which entries of A and B the optimizer may move.
#pragma once

#include <concepts>

#include "loralab/policy/axes.hpp"

namespace loralab {

/// \ingroup freeze
/// \brief Plain LoRA: every entry of A and B is trainable.
struct NoFreeze {
  using axis = axes::freeze;                ///< the axis this policy sits on
  static constexpr bool has_mask = false;   ///< keeps per-entry masks for A and B
  static constexpr bool freezes_a = false;  ///< A is frozen as a whole
};

/// \ingroup freeze
/// \brief LoRA-SP (Wu et al., arXiv 2403.08822): a random `Percent` % of the entries of A and of
/// B, drawn independently per matrix and fixed at initialization, keep their initial values.
///
/// With the default exact-count sampling a matrix of n entries keeps
/// \f$ \lfloor n (100 - Percent) / 100 \rfloor \f$ trainable entries (for 50 %: the spec's
/// \f$ \lfloor n/2 \rfloor \f$), the rest frozen. The mask is a pure function of
/// (seed, module id, matrix), identical on every backend.
/// \tparam Percent frozen percentage, 0..100 (default 50, "half-selective").
/// \sa methods.md section 2.2, docs/choices.md.
template <int Percent = 50>
struct RandomMask {
  static_assert(Percent >= 0 && Percent <= 100,
                "loralab: RandomMask<Percent> needs 0 <= Percent <= 100");
  using axis = axes::freeze;                      ///< the axis this policy sits on
  static constexpr bool has_mask = true;          ///< keeps per-entry masks for A and B
  static constexpr bool freezes_a = false;        ///< A is frozen as a whole
  static constexpr int frozen_percent = Percent;  ///< share of frozen entries, in percent
};

/// \ingroup freeze
/// \brief All of A frozen at its initial value, only B trains (LoRA-FA style). Saves the dA GEMM
/// and the need to keep the input X for backward.
struct FreezeA {
  using axis = axes::freeze;               ///< the axis this policy sits on
  static constexpr bool has_mask = false;  ///< keeps per-entry masks for A and B
  static constexpr bool freezes_a = true;  ///< A is frozen as a whole
};

/// \ingroup freeze
/// \brief The interface of a freeze policy.
template <class P>
concept FreezePolicy = detail::OnAxis<P, axes::freeze> && requires {
  { P::has_mask } -> std::convertible_to<bool>;
  { P::freezes_a } -> std::convertible_to<bool>;
};

/// \ingroup freeze
/// \brief Spelling sugar: `Freeze<RandomMask<50>>` is `RandomMask<50>` (checked to be a freeze
/// policy).
template <FreezePolicy P>
using Freeze = P;

/// \ingroup freeze
/// \brief How a RandomMask draws its frozen set (a run-time knob, AdapterConfig::mask_sampling).
enum class MaskSampling {
  exact,  ///< exactly floor(n * Percent / 100) frozen entries per matrix (default, methods.md 2.2)
  bernoulli,  ///< each entry frozen independently with probability Percent / 100
};

}  // namespace loralab
