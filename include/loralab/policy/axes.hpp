/// \file
/// \brief Axis tags and the machinery that matches policies to axes (STYLE.md L2, L3).
#pragma once

#include <concepts>
#include <type_traits>

namespace loralab {

/// \brief One empty tag per composition axis; a policy names its axis with `using axis = ...`.
namespace axes {
struct rank {};     ///< adapter rank: Rank<r>, DynamicRank
struct freeze {};   ///< entry-level trainability: NoFreeze, RandomMask<pct>, FreezeA
struct init {};     ///< initialization: KaimingUniformA, GaussianA
struct scaling {};  ///< branch scale: AlphaOverRank, RsLoraScale
struct dropout {};  ///< dropout on the adapter input: NoDropout, InputDropout
struct share {};  ///< sharing of A and B across modules: PrivateFactors, PureSharing, MoS, PRoLoRA
struct sampling {
};  ///< which blocks train (trainer level): AllBlocks, UniformBlocks, OutlierWeighted, ...
}  // namespace axes

namespace detail {

/// True when P names `Axis` as its axis. A type without `::axis` is simply "not on the axis".
template <class P, class Axis>
concept OnAxis = requires {
  typename P::axis;
}
&&std::same_as<typename P::axis, Axis>;

/// Number of policies in `Ps...` that sit on `Axis`.
template <class Axis, class... Ps>
inline constexpr int count_on = (0 + ... + int(OnAxis<Ps, Axis>));

/// The first policy on `Axis`, or `Default` when none is given.
template <class Axis, class Default, class... Ps>
struct pick {
  using type = Default;
};
template <class Axis, class Default, class P, class... Ps>
struct pick<Axis, Default, P, Ps...>
    : std::conditional_t<OnAxis<P, Axis>, std::type_identity<P>, pick<Axis, Default, Ps...>> {};

/// For `static_assert` in an `if constexpr` else-branch or a primary template (CUTLASS).
template <class...>
inline constexpr bool dependent_false = false;

}  // namespace detail

/// \ingroup adapter
/// \brief A type that names one of loralab's adapter axes.
template <class P>
concept KnownPolicy = detail::OnAxis<P, axes::rank> || detail::OnAxis<P, axes::freeze> ||
    detail::OnAxis<P, axes::init> || detail::OnAxis<P, axes::scaling> ||
    detail::OnAxis<P, axes::dropout> || detail::OnAxis<P, axes::share>;

}  // namespace loralab
