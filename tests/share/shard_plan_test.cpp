// The index construction of the sharing schemes (methods.md 3.3, 3.12, invariants 3.13.1, 4, 7):
// table shapes and ranges, private segments, no duplicates, dissociation, determinism, the
// strategy switches, PRoLoRA's rotation, the CSR of uses, and errors that name the values.
#include "loralab/share/shard_plan.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <set>
#include <vector>

#include "support/testing.hpp"

using namespace loralab;
using share::make_shard_plan;
using share::ShardPlan;
using share::TypeShape;

namespace {

// GPT-2-like shapes of the four types at d = 16, ff = 64.
std::vector<TypeShape> shapes() {
  return {{0, "c_attn", 16, 48},
          {1, "attn.c_proj", 16, 16},
          {2, "c_fc", 16, 64},
          {3, "mlp.c_proj", 64, 16}};
}

ShareConfig mos_cfg(int e, int p, int l) {
  ShareConfig c;
  c.budget_rank = e;
  c.private_rank = p;
  c.shards = l;
  return c;
}

constexpr ShareScheme kMoS = MixtureOfShards<>::scheme;

}  // namespace

TEST_CASE("MoS: trainable count equals LoRA of rank e for any r, p, l (3.13.1)") {
  const int L = 4;
  for (int e : {2, 4})
    for (int r : {e, 2 * e, 4 * e})
      for (int p : {0, 1, e / 2})
        for (int l : {1, 2, 4}) {
          if (p > r || (r - p) * l > (e - p) * L * l) continue;
          const ShardPlan plan = make_shard_plan(kMoS, mos_cfg(e, p, l), r, L, 4, shapes(), 7);
          std::int64_t lora_e = 0;
          for (const auto& t : shapes()) lora_e += std::int64_t(e) * L * (t.in + t.out);
          INFO("e=" << e << " r=" << r << " p=" << p << " l=" << l);
          CHECK(plan.trainable_params() == lora_e);
          CHECK(plan.index_entries() == std::int64_t(L) * 4 * 2 * r * l);
        }
}

TEST_CASE("MoS index tables: length r*l, range, private segment, no duplicates (3.13.4)") {
  const int L = 3, e = 4, p = 2, l = 2, r = 8;
  const ShardPlan plan = make_shard_plan(kMoS, mos_cfg(e, p, l), r, L, 4, shapes(), 11);
  const std::int64_t N = std::int64_t(e) * L * l, n_pub = std::int64_t(e - p) * L * l;
  for (const auto& t : shapes())
    for (int i = 0; i < L; ++i) {
      const auto& tab = plan.table(i, t.type);
      REQUIRE(tab.a.size() == std::size_t(r * l));
      REQUIRE(tab.b.size() == std::size_t(r * l));
      CHECK(plan.pools[tab.pool_a].rows == N);
      CHECK(plan.pools[tab.pool_a].row_length == t.in / l);
      CHECK(plan.pools[tab.pool_b].row_length == t.out / l);
      for (auto idx : {&tab.a, &tab.b}) {
        const std::vector<std::int32_t> pub(idx->begin(), idx->begin() + (r - p) * l);
        for (auto k : pub) CHECK((k >= 0 && k < n_pub));
        CHECK(std::set<std::int32_t>(pub.begin(), pub.end()).size() == pub.size());
        for (int s = 0; s < p * l; ++s) CHECK((*idx)[(r - p) * l + s] == n_pub + i * p * l + s);
      }
      // pair dissociation: A's and B's public parts come from independent draws
      CHECK(!std::equal(tab.a.begin(), tab.a.begin() + (r - p) * l, tab.b.begin()));
    }
  // deterministic in the seed, different across seeds
  const ShardPlan again = make_shard_plan(kMoS, mos_cfg(e, p, l), r, L, 4, shapes(), 11);
  const ShardPlan other = make_shard_plan(kMoS, mos_cfg(e, p, l), r, L, 4, shapes(), 12);
  CHECK(again.table(1, 2).a == plan.table(1, 2).a);
  CHECK(other.table(1, 2).a != plan.table(1, 2).a);
  // blocks draw different subsets
  CHECK(plan.table(0, 0).a != plan.table(1, 0).a);
}

TEST_CASE("MoS strategy switches change exactly what they name") {
  const int L = 3, e = 4, p = 2, l = 2, r = 8;
  const auto cfg = mos_cfg(e, p, l);
  const auto base = make_shard_plan(kMoS, cfg, r, L, 4, shapes(), 5);
  const int pub = (r - p) * l;
  SUBCASE("no subset selection: every block uses the same public shards") {
    const auto plan = make_shard_plan(MixtureOfShards<false>::scheme, cfg, r, L, 4, shapes(), 5);
    for (int i = 1; i < L; ++i)
      CHECK(std::equal(plan.table(i, 0).a.begin(), plan.table(i, 0).a.begin() + pub,
                       plan.table(0, 0).a.begin()));
    CHECK(plan.trainable_params() == base.trainable_params());
  }
  SUBCASE("no pair dissociation: B's shards sit where A's do") {
    const auto plan =
        make_shard_plan(MixtureOfShards<true, false>::scheme, cfg, r, L, 4, shapes(), 5);
    for (int i = 0; i < L; ++i) CHECK(plan.table(i, 1).a == plan.table(i, 1).b);
  }
  SUBCASE("no vector sharding: a vector's shards are one whole pool vector") {
    const auto plan =
        make_shard_plan(MixtureOfShards<true, true, false>::scheme, cfg, r, L, 4, shapes(), 5);
    for (int i = 0; i < L; ++i)
      for (int j = 0; j < r - p; ++j) {
        const auto& a = plan.table(i, 2).a;
        CHECK(a[j * l] % l == 0);
        for (int s = 1; s < l; ++s) CHECK(a[j * l + s] == a[j * l] + s);
      }
  }
  SUBCASE("no privatization: every shard is public, p counts as 0") {
    const auto plan = make_shard_plan(MixtureOfShards<true, true, true, false>::scheme, cfg, r, L,
                                      4, shapes(), 5);
    CHECK(plan.private_rank == 0);
    const std::int64_t N = std::int64_t(e) * L * l;
    for (auto k : plan.table(2, 3).a) CHECK((k >= 0 && k < N));
    CHECK(plan.trainable_params() == base.trainable_params());
  }
}

TEST_CASE("MoS reduction: l = 1, p = e = r gives each block its own rows") {
  const int L = 3, r = 4;
  const auto plan = make_shard_plan(kMoS, mos_cfg(r, r, 1), r, L, 4, shapes(), 1);
  for (int i = 0; i < L; ++i)
    for (int j = 0; j < r; ++j) {
      CHECK(plan.table(i, 0).a[j] == i * r + j);
      CHECK(plan.table(i, 0).b[j] == i * r + j);
    }
}

TEST_CASE("MoS global pool: one pool pair; longer vectors use more shards") {
  ShareConfig cfg = mos_cfg(2, 1, 2);
  cfg.global_pool = true;
  const int L = 2, r = 4;
  const auto plan = make_shard_plan(kMoS, cfg, r, L, 4, shapes(), 3);
  REQUIRE(plan.pools.size() == 2);
  CHECK(plan.pools[0].row_length == 8);   // shortest d_in 16 / l
  CHECK(plan.pools[1].row_length == 8);   // shortest d_out 16 / l
  CHECK(plan.table(0, 3).shards_a == 8);  // d_in 64 / 8
  CHECK(plan.table(0, 0).shards_b == 6);  // d_out 48 / 8
  std::int64_t lora_e = 0;
  for (const auto& t : shapes()) lora_e += 2 * L * (t.in + t.out);
  CHECK(plan.trainable_params() == lora_e);
  // the Kaiming bound of the shared pool is the smallest among the types (largest d_in)
  CHECK(plan.pools[0].init_bound == doctest::Approx(1.0 / 8.0));
}

TEST_CASE("pure sharing: every block uses the same r rows") {
  const auto plan = make_shard_plan(PureSharing::scheme, {}, 4, 3, 4, shapes(), 1);
  for (int i = 0; i < 3; ++i) CHECK(plan.table(i, 1).a == std::vector<std::int32_t>{0, 1, 2, 3});
  CHECK(plan.trainable_params() == 4 * (16 + 48 + 16 + 16 + 16 + 64 + 64 + 16));
}

TEST_CASE("PRoLoRA: broadcast chunk with rotation, unshared tail, parameter count (3.12)") {
  ShareConfig cfg;
  cfg.unshared_rank = 1;
  cfg.a_multiple = 2;
  cfg.b_multiple = 4;
  const int r = 5, L = 2;
  const auto plan = make_shard_plan(Prolora<>::scheme, cfg, r, L, 4, shapes(), 1);
  const auto& t = plan.table(1, 2);  // c_fc: in 16, out 64
  const int rs = r - 1, da = std::max(rs / 2, 1), db = std::max(rs / 4, 1);
  const int seg_a = rs + 1 * 2, seg_b = rs + 1 * 4;
  for (int j = 0; j < rs; ++j) {
    for (int k = 0; k < 2; ++k) CHECK(t.a[j * 2 + k] == seg_a + (j + k * da) % rs);
    for (int k = 0; k < 4; ++k) CHECK(t.b[j * 4 + k] == seg_b + (j + k * db) % rs);
  }
  for (int k = 0; k < 2; ++k) CHECK(t.a[rs * 2 + k] == seg_a + rs + k);
  // params per module: (r-u)(d_in/m + d_out/n) + u(d_in + d_out)
  std::int64_t want = 0;
  for (const auto& s : shapes()) want += L * (rs * (s.in / 2 + s.out / 4) + (s.in + s.out));
  CHECK(plan.trainable_params() == want);
  const auto flat = make_shard_plan(Prolora<false>::scheme, cfg, r, L, 4, shapes(), 1);
  for (int j = 0; j < rs; ++j) CHECK(flat.table(0, 0).a[j * 2 + 1] == j);  // no rotation
}

TEST_CASE("uses: every table entry appears once, ordered by module then slot") {
  const auto plan = make_shard_plan(kMoS, mos_cfg(2, 1, 2), 4, 3, 4, shapes(), 9);
  std::int64_t total = 0;
  for (std::size_t k = 0; k < plan.pools.size(); ++k) {
    const auto& off = plan.use_offsets[k];
    for (std::int64_t row = 0; row < plan.pools[k].rows; ++row)
      for (auto u = off[row]; u < off[row + 1]; ++u) {
        const auto& use = plan.uses[k][u];
        const auto& t = plan.tables[use.module];
        const auto& idx = plan.pools[k].side == share::Side::a ? t.a : t.b;
        CHECK(idx[use.slot] == row);
        if (u > off[row]) {
          const auto& prev = plan.uses[k][u - 1];
          CHECK((prev.module < use.module || (prev.module == use.module && prev.slot < use.slot)));
        }
        ++total;
      }
  }
  CHECK(total == plan.index_entries());
}

TEST_CASE(
    "initial A pools lie in [-1/sqrt(d_in), 1/sqrt(d_in)] for any l; B pools are 0 (3.13.7)") {
  for (int l : {1, 4}) {
    const auto plan = make_shard_plan(kMoS, mos_cfg(2, 1, l), 4, 3, 4, shapes(), 9);
    for (std::size_t k = 0; k < plan.pools.size(); ++k) {
      std::vector<float> v(plan.pools[k].size());
      share::fill_initial_pool<float>(plan, int(k), 9, v);
      const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
      if (plan.pools[k].side == share::Side::b) {
        CHECK(*lo == 0.0f);
        CHECK(*hi == 0.0f);
      } else {
        const double bound = plan.pools[k].init_bound;
        CHECK(bound == doctest::Approx(1.0 / std::sqrt(double(shapes()[k / 2].in))));
        CHECK(*lo >= -bound);
        CHECK(*hi <= bound);
        CHECK(*hi - *lo > bound);  // spread over the interval, not a constant
      }
    }
  }
}

TEST_CASE("errors name the values") {
  using testing::error_of;
  CHECK(error_of([] {
          make_shard_plan(kMoS, mos_cfg(2, 1, 3), 4, 3, 4, shapes(), 1);
        }).find("d_in=16 of c_attn does not divide by 3") != std::string::npos);
  CHECK(error_of([] {
          make_shard_plan(kMoS, mos_cfg(2, 3, 2), 4, 3, 4, shapes(), 1);
        }).find("private rank p=3 exceeds the budget rank e=2") != std::string::npos);
  CHECK(error_of([] { make_shard_plan(kMoS, mos_cfg(2, 1, 1), 8, 3, 4, shapes(), 1); })
            .find("too few public shards for c_attn: each block needs (r-p)*l = 7 of the "
                  "(e-p)*L*l = 3") != std::string::npos);
  CHECK(error_of([] {
          make_shard_plan(kMoS, mos_cfg(4, 4, 1), 8, 3, 4, shapes(), 1);
        }).find("too few public shards") != std::string::npos);  // p == e < r: no public pool
  ShareConfig prolora;
  prolora.a_multiple = 5;
  CHECK(error_of([&] {
          make_shard_plan(Prolora<>::scheme, prolora, 4, 2, 4, shapes(), 1);
        }).find("PRoLoRA a_multiple m: d_in=16 of c_attn does not divide by 5") !=
        std::string::npos);
  ShareConfig global;
  global.global_pool = true;
  CHECK(error_of([&] {
          make_shard_plan(PureSharing::scheme, global, 4, 2, 4, shapes(), 1);
        }).find("global_pool applies to MixtureOfShards only") != std::string::npos);
}
