// Layer sampling and GaLore in training (methods.md 5.10 invariants 4-6 and the state policies):
// HostOptimizer's keep / reset / drop, the trainer's draws at 0, K, 2K, frozen blocks bitwise
// unchanged within a period while embeddings, head and final norm train, sampling over adapters,
// and exact resumption of a sampled GaLore run.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "loralab/data/synthetic.hpp"
#include "loralab/data/tokenizer.hpp"
#include "loralab/model/gpt.hpp"
#include "loralab/train/trainer.hpp"
#include "support/temp_dir.hpp"
#include "support/testing.hpp"

using namespace loralab;

namespace {

// Three blocks of one 2 x 2 tensor each, plus one always-on tensor.
struct ThreeBlocks {
  std::vector<float> value = std::vector<float>(16, 1.0f), grad = std::vector<float>(16, 0.5f);
  std::vector<ParamTensor<float>> parameters() {
    std::vector<ParamTensor<float>> out;
    for (int b = -1; b < 3; ++b) {
      const std::size_t off = std::size_t(b + 1) * 4;
      out.push_back({std::span<float>(value).subspan(off, 4),
                     std::span<const float>(grad).subspan(off, 4),
                     {},
                     b});
    }
    return out;
  }
};

model::GptConfig small() {
  model::GptConfig c;
  c.vocab_size = data::kVocabSize;
  c.context = 16;
  c.layers = 4;
  c.heads = 2;
  c.d_model = 16;
  return c;
}

data::Batch copy_batch(std::int64_t step, int micro) {
  data::TaskOptions opt;
  opt.min_length = 2;
  opt.max_length = 4;
  std::vector<data::Example> ex;
  for (int i = 0; i < 4; ++i)
    ex.push_back(data::make_example(data::Task::copy, testing::kSeed,
                                    std::uint64_t(step * 64 + micro * 4 + i), opt));
  return data::make_batch(ex, 12);
}

std::vector<float> slice(const model::GptWeights<float>& w, const std::string& prefix) {
  std::vector<float> out;
  for (const auto& s : w.slots())
    if (s.name.starts_with(prefix))
      out.insert(out.end(), w.flat().begin() + std::ptrdiff_t(s.offset),
                 w.flat().begin() + std::ptrdiff_t(s.offset + std::size_t(s.size())));
  return out;
}

}  // namespace

TEST_CASE(
    "state policies: keep holds an inactive block's state, reset zeroes on a draw, drop frees") {
  for (StatePolicy policy : {StatePolicy::keep, StatePolicy::reset, StatePolicy::drop}) {
    INFO("policy " << state_policy_name(policy));
    ThreeBlocks m;
    train::HostOptimizer<float> opt(m, AdamWConfig{.lr = 0.1, .weight_decay = 0.1},
                                    OptimizerOptions{std::nullopt, policy});
    CHECK(opt.state_bytes() == 4 * 2 * 4 * 4);
    opt.step(1.0);
    opt.step(1.0);
    opt.set_active_blocks({true, false, true}, true);
    const std::vector<float> frozen_values = opt.values(2), frozen_m = opt.first_moment(2);
    opt.step(1.0);
    opt.step(1.0);
    CHECK(opt.values(2) == frozen_values);  // an inactive block never moves: no decay either
    CHECK(opt.tensor_steps(0) == 4);        // always-on tensor
    if (policy == StatePolicy::reset) {
      CHECK(opt.tensor_steps(1) == 2);  // zeroed at the draw, then two steps
      CHECK(opt.tensor_steps(2) == 2);
    } else if (policy == StatePolicy::keep) {
      CHECK(opt.tensor_steps(1) == 4);
      CHECK(opt.tensor_steps(2) == 2);
      CHECK(opt.first_moment(2) == frozen_m);  // moments kept as they were
    } else {
      CHECK(opt.tensor_steps(1) == 4);
      CHECK(opt.first_moment(2).empty());  // freed
      CHECK(opt.state_bytes() == 3 * 2 * 4 * 4);
    }
    if (policy != StatePolicy::drop) CHECK(opt.state_bytes() == 4 * 2 * 4 * 4);
    opt.set_active_blocks({true, true, true}, true);
    opt.step(1.0);
    CHECK(opt.values(2) != frozen_values);
    CHECK(opt.tensor_steps(2) == (policy == StatePolicy::keep ? 3 : 1));
  }
}

TEST_CASE("LISA in training: draws at 0, K, 2K; gamma blocks train; the rest stay bitwise") {
  model::GptWeights<float> w(small());
  w.init_gpt2(3);
  model::GptOptions opts;
  opts.mode = model::TrainMode::full;
  model::Gpt<Adapter<Rank<2>>, float> m(w, opts);
  train::TrainConfig cfg;
  cfg.steps = 3;  // exactly one period
  cfg.warmup = 0;
  cfg.eval_every = 3;
  cfg.progress = false;
  cfg.sampler = sampling::LayerSampler::make<UniformBlocks>(
      4, sampling::SamplerConfig{.gamma = 2, .period = 3, .seed = 9});
  const std::vector<int> drawn = cfg.sampler->blocks_at(0);
  std::vector<std::vector<float>> before(4);
  for (int l = 0; l < 4; ++l) before[l] = slice(w, "h." + std::to_string(l) + ".");
  const std::vector<float> wte = slice(w, "wte"), lnf = slice(w, "ln_f");
  train::Trainer<decltype(m)> t(m, cfg, copy_batch, [] { return train::EvalResult{}; });
  const auto r = t.run();
  REQUIRE(r.sampled.size() == 1);
  CHECK(r.sampled[0].step == 0);
  CHECK(r.sampled[0].blocks == drawn);
  for (int l = 0; l < 4; ++l) {
    const bool on = std::find(drawn.begin(), drawn.end(), l) != drawn.end();
    INFO("block " << l << (on ? " drawn" : " frozen"));
    CHECK((slice(w, "h." + std::to_string(l) + ".") == before[l]) == !on);
  }
  CHECK(slice(w, "wte") != wte);  // embedding + tied head and the final norm always train
  CHECK(slice(w, "ln_f") != lnf);

  // Over 10 steps with K = 3 the draws happen at 0, 3, 6, 9.
  cfg.steps = 10;
  cfg.eval_every = 10;
  train::Trainer<decltype(m)> t2(m, cfg, copy_batch, [] { return train::EvalResult{}; });
  const auto r2 = t2.run();
  REQUIRE(r2.sampled.size() == 4);
  for (int k = 0; k < 4; ++k) {
    CHECK(r2.sampled[k].step == 3 * k);
    CHECK(r2.sampled[k].blocks == cfg.sampler->blocks_at(3 * k));
  }
}

TEST_CASE("sampling composes with adapters: only the drawn blocks' adapters move") {
  model::GptWeights<float> w(small());
  w.init_gpt2(4);
  model::GptOptions opts;
  model::Gpt<Adapter<Rank<2>>, float> m(w, opts);
  train::TrainConfig cfg;
  cfg.steps = 4;
  cfg.warmup = 0;
  cfg.eval_every = 4;
  cfg.progress = false;
  cfg.sampler = sampling::LayerSampler::make<IncreasingBlocks>(
      4, sampling::SamplerConfig{.gamma = 1, .period = 4, .seed = 2});
  const int drawn = cfg.sampler->blocks_at(0)[0];
  train::Trainer<decltype(m)> t(m, cfg, copy_batch, [] { return train::EvalResult{}; });
  t.run();
  for (int l = 0; l < 4; ++l) {
    const auto* a = m.adapter(l, model::Module::qkv);
    INFO("block " << l);
    CHECK((a->B().cwiseAbs().maxCoeff() > 0) == (l == drawn));  // B starts at 0
  }
}

TEST_CASE("a sampled GaLore run with dropped states resumes bit for bit") {
  testing::TempDir dir;
  auto run = [&](std::int64_t stop_after, model::GptWeights<float>& w) {
    model::GptOptions opts;
    opts.mode = model::TrainMode::full;
    model::Gpt<Adapter<Rank<2>>, float> m(w, opts);
    train::TrainConfig cfg;
    cfg.steps = 11;
    cfg.warmup = 2;
    cfg.eval_every = 11;
    cfg.progress = false;
    cfg.checkpoint = dir.path / "galore.safetensors";
    cfg.stop_after = stop_after;
    cfg.optimizer = OptimizerOptions{
        GaloreConfig{.rank = 4, .period = 2, .scale = 0.5, .refresh = GaloreRefresh::randomized},
        StatePolicy::drop};
    cfg.sampler = sampling::LayerSampler::make<DecreasingBlocks>(
        4, sampling::SamplerConfig{.gamma = 2, .period = 3, .seed = 5});
    train::Trainer<decltype(m)> t(m, cfg, copy_batch, [] { return train::EvalResult{}; });
    const auto r = t.run();
    return std::pair{std::vector<float>(w.flat().begin(), w.flat().end()), r};
  };
  model::GptWeights<float> a(small()), b(small()), c(small());
  a.init_gpt2(6);
  b.init_gpt2(6);
  c.init_gpt2(6);
  std::filesystem::remove(dir.path / "galore.safetensors");
  const auto [straight, rs] = run(-1, a);
  std::filesystem::remove(dir.path / "galore.safetensors");
  run(7, b);  // stops inside the period that began at step 6
  const auto [resumed, rr] = run(-1, c);
  CHECK(rr.resumed_from == 7);
  REQUIRE(straight.size() == resumed.size());
  CHECK(std::memcmp(straight.data(), resumed.data(), straight.size() * sizeof(float)) == 0);
  CHECK(rs.peak_optimizer_state_bytes > 0);
}
