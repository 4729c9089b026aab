// Sharing schemes inside the decoder (methods.md 3.13): pool gradients against finite
// differences with a public shard used by two blocks, the reduction to LoRA bit for bit,
// zero-B equals the base model, unreferenced and private rows, merge, memory accounting.
#include <doctest/doctest.h>

#include <cmath>
#include <set>
#include <vector>

#include "loralab/cpu/adamw.hpp"
#include "loralab/model/gpt.hpp"
#include "support/testing.hpp"

using namespace loralab;
using model::Gpt;
using model::GptConfig;
using model::GptOptions;
using model::GptWeights;
using model::Module;

namespace {

GptConfig tiny(int layers = 2) {
  GptConfig c;
  c.vocab_size = 11;
  c.context = 6;
  c.layers = layers;
  c.heads = 2;
  c.d_model = 8;
  return c;
}

struct Data {
  std::vector<std::int32_t> tokens, targets;
  int batch = 2, seq = 5;
  Data() {
    for (int i = 0; i < batch * seq; ++i) {
      tokens.push_back((i * 7 + 3) % 11);
      targets.push_back(i % 4 == 1 ? -1 : (i * 5 + 1) % 11);
    }
  }
};

GptOptions mos_options(int rank, int e, int p, int l, std::uint64_t seed = testing::kSeed) {
  GptOptions o;
  o.adapter.rank = rank;
  o.adapter.alpha = 3;
  o.adapter.seed = seed;
  o.adapter.share.budget_rank = e;
  o.adapter.share.private_rank = p;
  o.adapter.share.shards = l;
  return o;
}

template <class Model>
void randomize_pools(Model& m, double scale) {
  const auto* plan = m.shard_plan();
  REQUIRE(plan);
  for (std::size_t k = 0; k < plan->pools.size(); ++k) {
    auto v = m.pool_values(int(k));
    for (std::size_t i = 0; i < v.size(); ++i)
      v[i] = scale * std::sin(0.7 * double(i) + 1.3 * double(k) + 0.1);
  }
}

}  // namespace

TEST_CASE("MoS pool gradients match finite differences, with a public shard used by 2 blocks") {
  using Spec = Adapter<DynamicRank, MixtureOfShards<>>;
  GptWeights<double> w(tiny());
  w.init_gpt2(testing::kSeed);
  // e=2, r=3, p=1, l=2: each block draws 4 of the 4*... public shards; with L=2 the public pool
  // has (e-p)*L*l = 4 rows and each block takes (r-p)*l = 4 of them: every public row is used
  // by both blocks.
  Gpt<Spec, double> m(w, mos_options(3, 2, 1, 2));
  const auto* plan = m.shard_plan();
  REQUIRE(plan);
  bool shared_by_both = false;
  for (std::size_t k = 0; k < plan->pools.size(); ++k)
    for (std::int64_t row = 0; row < plan->pools[k].rows; ++row) {
      std::set<int> blocks;
      for (auto u = plan->use_offsets[k][row]; u < plan->use_offsets[k][row + 1]; ++u)
        blocks.insert(plan->tables[plan->uses[k][u].module].block);
      shared_by_both |= blocks.size() == 2;
    }
  REQUIRE(shared_by_both);
  randomize_pools(m, 0.4);  // non-zero B: every pool gets a gradient
  const Data data;
  m.zero_grad();
  m.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 3});
  m.backward();
  for (std::size_t k = 0; k < plan->pools.size(); ++k) {
    auto v = m.pool_values(int(k));
    const std::vector<double> g(m.pool_grad(int(k)).begin(), m.pool_grad(int(k)).end());
    for (std::size_t i = 0; i < v.size(); i += 3) {  // every third entry keeps the test short
      const double saved = v[i], h = 1e-6;
      v[i] = saved + h;
      const double up = m.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 3});
      v[i] = saved - h;
      const double down = m.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 3});
      v[i] = saved;
      const double fd = (up - down) / (2 * h);
      INFO(plan->pools[k].name << "[" << i << "]: analytic " << g[i] << ", fd " << fd);
      CHECK(std::abs(fd - g[i]) <= 1e-8 + 1e-5 * std::abs(fd));
    }
  }
}

TEST_CASE("MoS with l = 1, p = e = r trains bit for bit like LoRA from the same values (3.13.3)") {
  using Mos = Adapter<DynamicRank, MixtureOfShards<>>;
  using Lora = Adapter<DynamicRank>;
  const int r = 2;
  GptWeights<float> w1(tiny()), w2(tiny());
  w1.init_gpt2(testing::kSeed);
  w2.init_gpt2(testing::kSeed);
  Gpt<Mos, float> mos(w1, mos_options(r, r, r, 1));
  GptOptions lo;
  lo.adapter.rank = r;
  lo.adapter.alpha = 3;
  Gpt<Lora, float> lora(w2, lo);
  // Copy the pools' rows into LoRA's factors: block i's private rows are [i*r, (i+1)*r).
  const auto* plan = mos.shard_plan();
  for (int l = 0; l < 2; ++l)
    for (int t = 0; t < 4; ++t) {
      auto* a = lora.adapter(l, Module(t));
      const auto pa = mos.pool_values(plan->table(l, t).pool_a);
      for (int j = 0; j < r; ++j)
        for (Eigen::Index c = 0; c < a->in_features(); ++c)
          a->A()(j, c) = pa[(l * r + j) * a->in_features() + c];
    }
  AdamWConfig oc;
  oc.lr = 1e-2;
  cpu::AdamW<float> opt_mos(mos.parameters(), oc), opt_lora(lora.parameters(), oc);
  const Data data;
  for (int step = 0; step < 5; ++step) {
    mos.zero_grad();
    lora.zero_grad();
    const double l1 = mos.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 0});
    const double l2 = lora.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 0});
    CHECK(l1 == l2);  // bitwise
    mos.backward();
    lora.backward();
    opt_mos.step();
    opt_lora.step();
  }
  mos.sync_shared_factors();
  for (int l = 0; l < 2; ++l)
    for (int t = 0; t < 4; ++t) {
      CHECK(mos.adapter(l, Module(t))->A() == lora.adapter(l, Module(t))->A());
      CHECK(mos.adapter(l, Module(t))->B() == lora.adapter(l, Module(t))->B());
    }
}

TEST_CASE("zero B pools: every sharing scheme starts as the base model (3.13.2)") {
  GptWeights<double> w(tiny(3));
  w.init_gpt2(testing::kSeed);
  const Data data;
  Gpt<Adapter<DynamicRank>, double> base(w, GptOptions{model::TrainMode::full});
  const double want = base.forward(data.tokens, data.targets, data.batch, data.seq, Pass{false});
  Gpt<Adapter<DynamicRank, MixtureOfShards<>>, double> mos(w, mos_options(4, 2, 1, 2));
  Gpt<Adapter<DynamicRank, PureSharing>, double> pure(w, mos_options(4, 0, 0, 1));
  Gpt<Adapter<DynamicRank, Prolora<>>, double> pro(w, mos_options(4, 0, 0, 1));
  CHECK(mos.forward(data.tokens, data.targets, data.batch, data.seq, Pass{false}) == want);
  CHECK(pure.forward(data.tokens, data.targets, data.batch, data.seq, Pass{false}) == want);
  CHECK(pro.forward(data.tokens, data.targets, data.batch, data.seq, Pass{false}) == want);
}

TEST_CASE("unreferenced pool rows never move; private rows get gradient only from their block") {
  // no subset selection: every block uses the same public rows, so the others stay unused
  using Spec = Adapter<DynamicRank, MixtureOfShards<false>>;
  GptWeights<float> w(tiny(3));
  w.init_gpt2(testing::kSeed);
  Gpt<Spec, float> m(w, mos_options(3, 2, 1, 2));
  const auto* plan = m.shard_plan();
  std::vector<std::vector<float>> start;
  for (std::size_t k = 0; k < plan->pools.size(); ++k)
    start.emplace_back(m.pool_values(int(k)).begin(), m.pool_values(int(k)).end());
  // Weight decay 0, as MoS's recipe: decoupled decay would shrink every entry of a pool tensor,
  // referenced or not (as torch's AdamW does).
  cpu::AdamW<float> opt(m.parameters(), {.lr = 1e-2, .weight_decay = 0.0});
  const Data data;
  for (int step = 0; step < 4; ++step) {
    m.zero_grad();
    m.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, std::uint64_t(step)});
    m.backward();
    opt.step();
  }
  int unused_rows = 0;
  for (std::size_t k = 0; k < plan->pools.size(); ++k) {
    const auto v = m.pool_values(int(k));
    const std::int64_t c = plan->pools[k].row_length;
    for (std::int64_t row = 0; row < plan->pools[k].rows; ++row) {
      if (plan->use_offsets[k][row] != plan->use_offsets[k][row + 1]) continue;
      ++unused_rows;
      for (std::int64_t q = 0; q < c; ++q) CHECK(v[row * c + q] == start[k][row * c + q]);
    }
  }
  CHECK(unused_rows > 0);

  // Private rows of block 1: freeze block 1, and they get exactly zero gradient.
  m.set_block_trainable(1, false);
  m.zero_grad();
  m.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 9});
  m.backward();
  for (std::size_t k = 0; k < plan->pools.size(); ++k) {
    const auto g = m.pool_grad(int(k));
    const std::int64_t c = plan->pools[k].row_length;
    bool block0_private_moves = false;
    for (std::int64_t row = 0; row < plan->pools[k].rows; ++row) {
      const auto b = plan->use_offsets[k][row], e = plan->use_offsets[k][row + 1];
      if (e - b != 1) continue;  // private rows have exactly one use
      const int block = plan->tables[plan->uses[k][b].module].block;
      for (std::int64_t q = 0; q < c; ++q) {
        if (block == 1) CHECK(g[row * c + q] == 0.0f);
        if (block == 0 && g[row * c + q] != 0.0f) block0_private_moves = true;
      }
    }
    CHECK(block0_private_moves);
  }
}

TEST_CASE("merging every block's assembled factors reproduces the unmerged output (3.13.8)") {
  using Spec = Adapter<DynamicRank, MixtureOfShards<>>;
  GptWeights<float> w(tiny(3));
  w.init_gpt2(testing::kSeed);
  Gpt<Spec, float> m(w, mos_options(4, 2, 1, 2));
  randomize_pools(m, 0.3);
  const Data data;
  const auto unmerged = m.forward_logits(data.tokens, data.batch, data.seq, Pass{false});
  const cpu::MatrixR<float> want = unmerged;
  for (int l = 0; l < 3; ++l)
    for (int t = 0; t < 4; ++t) m.adapter(l, Module(t))->merge();
  // The weights now carry s * B_i A_i: a model without adapters on them gives the same output.
  Gpt<Adapter<DynamicRank>, float> plain(w, GptOptions{model::TrainMode::full});
  const cpu::MatrixR<float> got =
      plain.forward_logits(data.tokens, data.batch, data.seq, Pass{false});
  CHECK(testing::max_scaled_error(got, want, 1e-5, 1e-6) <= 1.0);
}

TEST_CASE("memory: trainable = pools; tables and assembled factors are reported") {
  using Spec = Adapter<DynamicRank, MixtureOfShards<>>;
  GptWeights<float> w(tiny(3));
  w.init_gpt2(testing::kSeed);
  const int e = 2, r = 4;
  Gpt<Spec, float> m(w, mos_options(r, e, 1, 2));
  Gpt<Adapter<DynamicRank>, float> lora_e(w, mos_options(e, 0, 0, 1));
  Gpt<Adapter<DynamicRank>, float> lora_r(w, mos_options(r, 0, 0, 1));
  const auto mem = m.memory(10);
  CHECK(mem.trainable_params == lora_e.memory(10).trainable_params);
  CHECK(mem.optimizer_state_bytes == lora_e.memory(10).optimizer_state_bytes);
  CHECK(mem.index_bytes == 3 * 4 * 2 * r * 2 * 4);  // L * types * (A+B) * r * l * int32
  CHECK(mem.transient_bytes ==
        lora_r.memory(10).parameter_bytes + lora_r.memory(10).gradient_bytes);
  std::int64_t params = 0;
  for (const auto& p : m.parameters()) params += std::int64_t(p.value.size());
  CHECK(params == mem.trainable_params);
}
