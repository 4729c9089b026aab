// Composition: policies in any order, defaults for missing axes, concepts on every axis. The
// cases that must not compile live in tests/compile_fail/.
#include "loralab/adapter.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <type_traits>

using namespace loralab;

static_assert(std::is_same_v<Adapter<>::rank, DynamicRank>);
static_assert(std::is_same_v<Adapter<>::freeze, NoFreeze>);
static_assert(std::is_same_v<Adapter<>::init, KaimingUniformA>);
static_assert(std::is_same_v<Adapter<>::scaling, AlphaOverRank>);
static_assert(std::is_same_v<Adapter<>::dropout, NoDropout>);

// Order is free.
using SpA = Adapter<Rank<8>, RandomMask<50>, InputDropout>;
using SpB = Adapter<InputDropout, Freeze<RandomMask<50>>, Rank<8>>;
static_assert(std::is_same_v<SpA::rank, SpB::rank> && std::is_same_v<SpA::freeze, SpB::freeze> &&
              std::is_same_v<SpA::dropout, SpB::dropout>);
static_assert(std::is_same_v<SpA::freeze, RandomMask<50>>);
static_assert(std::is_same_v<LoraSP<4>::freeze, RandomMask<50>>);

// Concepts per axis.
static_assert(RankPolicy<Rank<3>> && RankPolicy<DynamicRank> && !RankPolicy<NoFreeze>);
static_assert(FreezePolicy<FreezeA> && FreezePolicy<RandomMask<10>> && !FreezePolicy<Rank<1>>);
static_assert(InitPolicy<GaussianA> && ScalingPolicy<RsLoraScale> && DropoutPolicy<InputDropout>);
static_assert(KnownPolicy<Rank<2>> && !KnownPolicy<int> && !KnownPolicy<AdapterConfig>);
static_assert(AdapterSpec<Lora<4>> && !AdapterSpec<Rank<4>>);

TEST_CASE("rank_for: static rank wins, dynamic rank defaults to PEFT's 8") {
  AdapterConfig cfg;
  CHECK(Adapter<Rank<4>>::rank_for(cfg) == 4);
  CHECK(Adapter<>::rank_for(cfg) == 8);
  cfg.rank = 5;
  CHECK(Adapter<>::rank_for(cfg) == 5);
}

TEST_CASE("scaling policies: alpha/r and rsLoRA alpha/sqrt(r) (methods.md 1.11 inv. 7)") {
  CHECK(AlphaOverRank::scale(16, 8) == 2.0);
  CHECK(RsLoraScale::scale(16, 16) == 4.0);
  CHECK(RsLoraScale::scale(3, 7) == doctest::Approx(3 / std::sqrt(7.0)));
}
