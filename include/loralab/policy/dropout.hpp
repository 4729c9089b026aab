/// \file
/// \brief Dropout axis (adapter level): dropout on the input of the low-rank branch.
#pragma once

#include "loralab/policy/axes.hpp"

namespace loralab {

/// \ingroup dropout
/// \brief No dropout in the adapter (PEFT's `lora_dropout=0`).
struct NoDropout {
  using axis = axes::dropout;                       ///< the axis this policy sits on
  static constexpr bool has_input_dropout = false;  ///< drops the branch input
};

/// \ingroup dropout
/// \brief PEFT's `lora_dropout`: element-wise inverted dropout on the copy of X that feeds the
/// branch, \f$ H = X \odot D / (1-p) \f$; the frozen path sees the undropped X. The rate p is
/// `AdapterConfig::dropout`; the mask comes from Philox keyed by (seed, module, step), so
/// backward regenerates it instead of storing it.
/// \sa methods.md section 1.3.
struct InputDropout {
  using axis = axes::dropout;                      ///< the axis this policy sits on
  static constexpr bool has_input_dropout = true;  ///< drops the branch input
};

/// \ingroup dropout
/// \brief The interface of an adapter dropout policy.
template <class P>
concept DropoutPolicy = detail::OnAxis<P, axes::dropout> && requires {
  { P::has_input_dropout } -> std::convertible_to<bool>;
};

}  // namespace loralab
