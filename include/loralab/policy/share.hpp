/// \file
/// \brief Sharing axis (model level): whether the A and B factors of the adapted modules are
/// private (plain LoRA), one pair shared by every block (pure sharing), assembled from shard pools
/// shared across blocks (MoS), or built from a rotated chunk inside each module (PRoLoRA).
#pragma once

#include <concepts>

#include "loralab/policy/axes.hpp"

namespace loralab {

/// \ingroup share
/// \brief The sharing schemes; see methods.md section 3.
enum class ShareKind {
  private_factors,    ///< every module owns its A and B (plain LoRA)
  pure,               ///< one A/B pair per projection type, used by every block
  mixture_of_shards,  ///< MoS: factors assembled from shard pools through random index tables
  prolora,            ///< PRoLoRA: intra-module broadcast of a chunk, with rotation
};

/// \ingroup share
/// \brief What the policy fixes at compile time: the scheme and the switches of its strategies.
/// Plain data, so the index construction (share/shard_plan.hpp) is compiled once.
struct ShareScheme {
  ShareKind kind = ShareKind::private_factors;  ///< the scheme
  bool subset_selection = true;     ///< MoS: each block draws its own subset of public shards
  bool pair_dissociation = true;    ///< MoS: A and B shards come from independent draws
  bool vector_sharding = true;      ///< MoS: the l shards of a vector are drawn independently
  bool shard_privatization = true;  ///< MoS: p rank components per block are private
  bool rotation = true;             ///< PRoLoRA: copy k is rotated by k * delta along the rank
};

/// \ingroup share
/// \brief Run-time sizes of the sharing schemes (AdapterConfig::share). The actual rank r of
/// every assembled factor is the adapter rank.
struct ShareConfig {
  int budget_rank = 0;       ///< MoS e: trainable count equals LoRA of rank e (0: e = r)
  int private_rank = -1;     ///< MoS p: private rank components per block (-1: max(1, e/2), <= r)
  int shards = 4;            ///< MoS l: shards per rank vector (d_in and d_out must divide by it)
  bool global_pool = false;  ///< MoS: one pool pair for every projection type (default: per type)
  int unshared_rank = 0;     ///< PRoLoRA u: rank components with full, unshared vectors
  int a_multiple = 2;        ///< PRoLoRA m: copies of the A chunk along d_in
  int b_multiple = 2;        ///< PRoLoRA n: copies of the B chunk along d_out
};

/// \ingroup share
/// \brief Private factors (default): every adapted module owns A and B, plain LoRA.
struct PrivateFactors {
  using axis = axes::share;               ///< the axis this policy sits on
  static constexpr ShareScheme scheme{};  ///< the scheme and its switches
};

/// \ingroup share
/// \brief Pure sharing: one rank-r pair per projection type, used by every block (the
/// undifferentiated baseline of the MoS paper). Trainable count: r * (d_in + d_out) per type.
struct PureSharing {
  using axis = axes::share;                              ///< the axis this policy sits on
  static constexpr ShareScheme scheme{ShareKind::pure};  ///< the scheme and its switches
};

/// \ingroup share
/// \brief Mixture of Shards (Wang et al., ICLR 2025): A_i and B_i are concatenations of shards
/// fetched from pools shared across blocks through index tables drawn once from the seed.
/// Each differentiation strategy can be switched off for ablations (docs/choices.md says what
/// "off" means for each); the sizes e, p, l are in ShareConfig.
template <bool SubsetSelection = true, bool PairDissociation = true, bool VectorSharding = true,
          bool ShardPrivatization = true>
struct MixtureOfShards {
  using axis = axes::share;  ///< the axis this policy sits on
  /// the scheme and its switches
  static constexpr ShareScheme scheme{ShareKind::mixture_of_shards, SubsetSelection,
                                      PairDissociation, VectorSharding, ShardPrivatization};
};

/// \ingroup share
/// \brief PRoLoRA (Wang et al., ACL 2024): inside each module, the shared rank components of A
/// are one chunk [r-u x d_in/m] broadcast m times along d_in, copy k rotated by k * delta along
/// the rank (B likewise with n); u components stay unshared. Sizes in ShareConfig.
template <bool Rotation = true>
struct Prolora {
  using axis = axes::share;  ///< the axis this policy sits on
  /// the scheme and its switches
  static constexpr ShareScheme scheme{ShareKind::prolora, true, true, true, true, Rotation};
};

/// \ingroup share
/// \brief The interface of a sharing policy.
template <class P>
concept SharePolicy = detail::OnAxis<P, axes::share> && requires {
  { P::scheme } -> std::convertible_to<ShareScheme>;
};

}  // namespace loralab
