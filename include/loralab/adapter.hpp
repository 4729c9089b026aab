/// \file
/// \brief `Adapter<Policies...>`: an adapter type composed from policies in any order, and its
/// run-time configuration `AdapterConfig`.
#pragma once

#include <cstdint>

#include "loralab/core/philox.hpp"

#include "loralab/policy/axes.hpp"
#include "loralab/policy/dropout.hpp"
#include "loralab/policy/freeze.hpp"
#include "loralab/policy/init.hpp"
#include "loralab/policy/rank.hpp"
#include "loralab/policy/scaling.hpp"
#include "loralab/policy/share.hpp"

namespace loralab {

/// \ingroup adapter
/// \brief Run-time knobs of an adapter (everything that does not change code paths or storage).
struct AdapterConfig {
  int rank = 0;            ///< DynamicRank: the rank (0 means PEFT's default 8). Rank<r>: 0 or r.
  double alpha = 8.0;      ///< LoRA alpha; the scale is alpha/r (or alpha/sqrt(r), rsLoRA). PEFT: 8
  double dropout = 0.0;    ///< InputDropout rate p in [0, 1); ignored without InputDropout
  std::uint64_t seed = 0;  ///< RNG seed for init, masks and dropout
  std::uint32_t module_id = 0;  ///< distinguishes the random streams of adapters sharing a seed
  MaskSampling mask_sampling = MaskSampling::exact;  ///< how RandomMask draws its frozen set
  bool check_finite = true;  ///< throw on NaN/Inf in X (forward) and dL/dY (backward)
  ShareConfig share;         ///< sizes of the sharing scheme (MoS e, p, l; PRoLoRA u, m, n)
};

/// \ingroup adapter
/// \brief Which dropout mask a forward pass uses. Eval mode (training = false) applies no dropout.
struct Pass {
  bool training = true;      ///< train mode: apply the adapter's input dropout
  std::uint64_t step = 0;    ///< keys the dropout mask (its low 32 bits); backward reuses it
  std::uint32_t branch = 0;  ///< 0 or 1: the two passes of a consistency-regularized step draw
                             ///< independent masks (dropout/config.hpp)
};

/// \ingroup adapter
/// \brief The Philox stream of an adapter's input-dropout mask for a pass: module id in bits
/// 32..54, the branch in bit 55, the step's low 32 bits in 0..31 (branch 0 is the plain layout).
LORALAB_HOST_DEVICE std::uint64_t input_dropout_stream(std::uint32_t module_id, const Pass& pass) {
  return make_stream(RngPurpose::input_dropout, module_id | ((pass.branch & 1u) << 23),
                     static_cast<std::uint32_t>(pass.step));
}

namespace detail {
/// Fails with the offending type's name in the diagnostic ("[with P = ...]"), like Kokkos's
/// show_name_of_invalid_execution_policy_trait.
template <class P>
struct show_name_of_unknown_adapter_policy {
  static_assert(KnownPolicy<P>,
                "loralab: unknown policy in Adapter<...>: every policy must name one of the axes "
                "rank, freeze, init, scaling, dropout, share (see docs/policies.md)");
  static constexpr bool value = true;
};
}  // namespace detail

/// \ingroup adapter
/// \brief An adapter type composed from policies, given in any order; missing axes take the
/// defaults, so `Adapter<>` is plain LoRA with rank from the config.
///
/// | axis | choices | default |
/// | --- | --- | --- |
/// | rank | Rank<r>, DynamicRank | DynamicRank |
/// | freeze | NoFreeze, RandomMask<pct> (LoRA-SP), FreezeA | NoFreeze |
/// | init | KaimingUniformA, GaussianA | KaimingUniformA |
/// | scaling | AlphaOverRank, RsLoraScale | AlphaOverRank |
/// | dropout | NoDropout, InputDropout | NoDropout |
/// | share | PrivateFactors, PureSharing, MixtureOfShards<...> (MoS), Prolora<...> | PrivateFactors
/// |
///
/// The type carries no data; a backend object holds the tensors:
/// `cpu::AdaptedLinear<Adapter<...>, float>` (include/loralab/cpu/adapted_linear.hpp).
/// \snippet examples/quickstart.cpp compose
template <class... Policies>
class Adapter {
  static_assert((detail::show_name_of_unknown_adapter_policy<Policies>::value && ...));
  static_assert(detail::count_on<axes::rank, Policies...> <= 1,
                "loralab: Adapter<...> got two rank policies (Rank<r> or DynamicRank)");
  static_assert(detail::count_on<axes::freeze, Policies...> <= 1,
                "loralab: Adapter<...> got two freeze policies (NoFreeze, RandomMask<p>, FreezeA)");
  static_assert(detail::count_on<axes::init, Policies...> <= 1,
                "loralab: Adapter<...> got two init policies (KaimingUniformA, GaussianA)");
  static_assert(detail::count_on<axes::scaling, Policies...> <= 1,
                "loralab: Adapter<...> got two scaling policies (AlphaOverRank, RsLoraScale)");
  static_assert(detail::count_on<axes::dropout, Policies...> <= 1,
                "loralab: Adapter<...> got two dropout policies (NoDropout, InputDropout)");
  static_assert(detail::count_on<axes::share, Policies...> <= 1,
                "loralab: Adapter<...> got two sharing policies (PrivateFactors, PureSharing, "
                "MixtureOfShards, Prolora)");

 public:
  using rank = typename detail::pick<axes::rank, DynamicRank, Policies...>::type;   ///< rank axis
  using freeze = typename detail::pick<axes::freeze, NoFreeze, Policies...>::type;  ///< freeze axis
  using init =
      typename detail::pick<axes::init, KaimingUniformA, Policies...>::type;  ///< init axis
  using scaling =
      typename detail::pick<axes::scaling, AlphaOverRank, Policies...>::type;          ///< scaling
  using dropout = typename detail::pick<axes::dropout, NoDropout, Policies...>::type;  ///< dropout
  using share =
      typename detail::pick<axes::share, PrivateFactors, Policies...>::type;  ///< sharing axis

  static_assert(RankPolicy<rank>, "loralab: the rank policy lacks value/is_static (see rank.hpp)");
  static_assert(FreezePolicy<freeze>, "loralab: the freeze policy lacks has_mask/freezes_a");
  static_assert(InitPolicy<init>, "loralab: the init policy lacks gaussian/svd_slice/refactorizes");
  static_assert(!init::svd_slice || share::scheme.kind == ShareKind::private_factors,
                "loralab: an SVD-slice init (RosaSubspace, PrincipalSubspace) does not combine "
                "with a sharing policy: a shared pool cannot be the SVD slice of several weights");
  static_assert(!init::svd_slice || !freeze::has_mask,
                "loralab: an SVD-slice init (RosaSubspace, PrincipalSubspace) does not combine "
                "with a freeze mask: frozen entries would keep a previous subspace's values");
  static_assert(ScalingPolicy<scaling>, "loralab: the scaling policy lacks scale(alpha, r)");
  static_assert(DropoutPolicy<dropout>, "loralab: the dropout policy lacks has_input_dropout");
  static_assert(SharePolicy<share>, "loralab: the sharing policy lacks scheme (see share.hpp)");
  static_assert(
      share::scheme.kind == ShareKind::private_factors || !freeze::has_mask,
      "loralab: a sharing policy (PureSharing, MixtureOfShards, Prolora) does not combine "
      "with a freeze mask: the optimizer moves whole pool rows");
  static_assert(share::scheme.kind == ShareKind::private_factors || !freeze::freezes_a,
                "loralab: a sharing policy does not combine with FreezeA");

  /// \brief True when the factors come from pools owned by the model (not private).
  static constexpr bool shares_factors = share::scheme.kind != ShareKind::private_factors;

  using Config = AdapterConfig;  ///< the run-time knobs

  /// \brief The rank this type implies for a config: Rank<r>'s r, else cfg.rank (default 8).
  static constexpr int rank_for(const AdapterConfig& cfg) {
    if constexpr (rank::is_static) return rank::value;
    return cfg.rank == 0 ? 8 : cfg.rank;
  }
};

/// \ingroup adapter
/// \brief True for every `Adapter<...>` specialization.
template <class T>
inline constexpr bool is_adapter_v = false;
/// \cond INTERNAL
template <class... Ps>
inline constexpr bool is_adapter_v<Adapter<Ps...>> = true;
/// \endcond

/// \ingroup adapter
/// \brief Constrains backend templates to composed adapter types.
template <class T>
concept AdapterSpec = is_adapter_v<T>;

/// \ingroup adapter
/// \brief Plain LoRA of rank R.
template <int R>
using Lora = Adapter<Rank<R>>;
/// \ingroup adapter
/// \brief LoRA-SP of rank R with half of A and B frozen.
template <int R>
using LoraSP = Adapter<Rank<R>, RandomMask<50>>;
/// \ingroup adapter
/// \brief Mixture of Shards with every differentiation strategy, actual rank R (the budget e,
/// private ranks p and shards l are in AdapterConfig::share).
template <int R>
using MoS = Adapter<Rank<R>, MixtureOfShards<>>;
/// \ingroup adapter
/// \brief ROSA of rank R (uniform random subspace; re-factorized by the model).
template <int R>
using Rosa = Adapter<Rank<R>, RosaSubspace<>>;

}  // namespace loralab
