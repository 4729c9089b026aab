/// \file
/// \brief Rank axis: a compile-time rank `Rank<r>` or a run-time rank `DynamicRank`.
#pragma once

#include <concepts>

#include "loralab/policy/axes.hpp"

namespace loralab {

/// \ingroup rank
/// \brief Adapter rank fixed at compile time, \f$ r = R \f$.
/// \tparam R the rank, at least 1. Must not exceed min(in, out) of the wrapped layer (checked
/// when the adapter is built, since the layer shape is a run-time value).
/// \sa methods.md section 1.
template <int R>
struct Rank {
  static_assert(R >= 1,
                "loralab: Rank<R> needs R >= 1 (use DynamicRank to pick the rank at run time)");
  using axis = axes::rank;                 ///< the axis this policy sits on
  static constexpr int value = R;          ///< the rank
  static constexpr bool is_static = true;  ///< the rank is known at compile time
};

/// \ingroup rank
/// \brief Adapter rank chosen at run time through `AdapterConfig::rank` (default 8, as PEFT).
struct DynamicRank {
  using axis = axes::rank;                  ///< the axis this policy sits on
  static constexpr int value = 0;           ///< 0: not known at compile time
  static constexpr bool is_static = false;  ///< the rank comes from AdapterConfig::rank
};

/// \ingroup rank
/// \brief The interface of a rank policy.
template <class P>
concept RankPolicy = detail::OnAxis<P, axes::rank> && requires {
  { P::value } -> std::convertible_to<int>;
  { P::is_static } -> std::convertible_to<bool>;
};

}  // namespace loralab
