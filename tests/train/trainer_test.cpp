// Trainer: the schedule, exact resumption from a checkpoint, and that training on a synthetic task
// drives the loss down and the exact-match accuracy up.
#include "loralab/train/trainer.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "loralab/data/synthetic.hpp"
#include "loralab/data/tokenizer.hpp"
#include "loralab/model/gpt.hpp"
#include "support/temp_dir.hpp"
#include "support/testing.hpp"

using namespace loralab;

namespace {

model::GptConfig small() {
  model::GptConfig c;
  c.vocab_size = data::kVocabSize;
  c.context = 16;
  c.layers = 2;
  c.heads = 2;
  c.d_model = 32;
  return c;
}

data::Batch copy_batch(std::int64_t step, int micro, int batch) {
  const data::Task task = data::Task::copy;
  data::TaskOptions opt;
  opt.min_length = 2;
  opt.max_length = 4;
  std::vector<data::Example> ex;
  for (int i = 0; i < batch; ++i)
    ex.push_back(data::make_example(task, testing::kSeed,
                                    std::uint64_t(step * 64 + micro * batch + i), opt));
  return data::make_batch(ex, 12);
}

template <class Model>
double accuracy(Model& m, std::uint64_t first, int count) {
  data::TaskOptions opt;
  opt.min_length = 2;
  opt.max_length = 4;
  std::vector<data::Example> ex;
  for (int i = 0; i < count; ++i)
    ex.push_back(data::make_example(data::Task::copy, 999, first + i, opt));
  return data::exact_match(ex, [&](const std::string& prompt) {
    std::vector<std::int32_t> toks = data::encode(prompt);
    toks.insert(toks.begin(), data::kBos);
    return data::decode(m.generate(toks, 6, data::kEos));
  });
}

}  // namespace

TEST_CASE("warmup + cosine schedule") {
  const train::WarmupCosine s{1.0, 10, 110, 0.1};
  CHECK(s(0) == doctest::Approx(0.1));
  CHECK(s(9) == doctest::Approx(1.0));
  CHECK(s(10) == doctest::Approx(1.0));
  CHECK(s(60) == doctest::Approx(0.55));  // half way: (1 + 0.1) / 2
  CHECK(s(110) == doctest::Approx(0.1));
  CHECK(s(500) == doctest::Approx(0.1));
}

TEST_CASE("a resumed run equals an uninterrupted one, bit for bit") {
  const auto dir =
      std::filesystem::temp_directory_path() / ("loralab_resume_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto run = [&](std::int64_t stop_after, const std::filesystem::path& ckpt,
                 model::GptWeights<float>& w) {
    model::GptOptions opts;
    opts.adapter.rank = 4;
    opts.adapter.dropout = 0.1;  // dropout masks must be reproduced too
    model::Gpt<Adapter<DynamicRank, RandomMask<50>, InputDropout>, float> m(w, opts);
    train::TrainConfig cfg;
    cfg.steps = 12;
    cfg.grad_accum = 2;
    cfg.warmup = 3;
    cfg.eval_every = 4;
    cfg.checkpoint = ckpt;
    cfg.stop_after = stop_after;
    cfg.progress = false;
    train::Trainer<decltype(m)> t(
        m, cfg, [](std::int64_t s, int micro) { return copy_batch(s, micro, 4); },
        [] { return train::EvalResult{}; });
    t.run();
    std::vector<float> out;
    for (auto& p : m.parameters()) out.insert(out.end(), p.value.begin(), p.value.end());
    return out;
  };
  model::GptWeights<float> w1(small()), w2(small());
  w1.init_gpt2(1);
  w2.init_gpt2(1);
  const std::vector<float> straight = run(-1, {}, w1);
  const auto ckpt = dir / "ckpt.safetensors";
  run(5, ckpt, w2);  // stops after step 5, checkpoint written
  REQUIRE(std::filesystem::exists(ckpt));
  model::GptWeights<float> w3(small());
  w3.init_gpt2(1);
  const std::vector<float> resumed = run(-1, ckpt, w3);  // a fresh process would do exactly this
  REQUIRE(straight.size() == resumed.size());
  CHECK(std::memcmp(straight.data(), resumed.data(), straight.size() * sizeof(float)) == 0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("training on a synthetic task lowers the loss and raises exact-match accuracy") {
  model::GptWeights<float> w(small());
  w.init_gpt2(2);
  model::GptOptions opts;
  opts.mode = model::TrainMode::full;
  model::Gpt<Adapter<Rank<2>>, float> m(w, opts);
  const double before = accuracy(m, 0, 40);
  train::TrainConfig cfg;
  cfg.steps = 300;
  cfg.lr = 3e-3;
  cfg.warmup = 20;
  cfg.eval_every = 300;
  cfg.progress = false;
  train::Trainer<decltype(m)> t(
      m, cfg, [](std::int64_t s, int micro) { return copy_batch(s, micro, 16); },
      [&] {
        const data::Batch b = copy_batch(100000, 0, 32);
        return train::EvalResult{
            m.forward(b.tokens, b.targets, int(b.batch), int(b.length), Pass{false, 0}), 0};
      });
  const auto result = t.run();
  const double first_loss = result.curve.front().train_loss;
  const double final_eval = result.curve.back().eval.loss;
  const double after = accuracy(m, 0, 40);
  MESSAGE("copy task: accuracy " << before << " -> " << after << ", eval loss " << final_eval);
  CHECK(final_eval < 0.5 * first_loss);
  CHECK(after >= before + 0.5);
}

namespace {

// A model that names its own optimizer (as device models do): the trainer must use it for the
// step, the clipping norm and the checkpoint, and never touch host parameters.
struct RecordingOptimizer {
  using value_type = float;
  std::vector<float> value{1.0f, 2.0f, 3.0f};
  std::vector<double> scales;
  std::vector<double> lrs;
  template <class Model>
  RecordingOptimizer(Model&, const AdamWConfig&) {}
  void set_lr(double lr) { lrs.push_back(lr); }
  void step(double s) {
    scales.push_back(s);
    for (float& v : value) v -= 0.5f;
  }
  std::int64_t steps() const { return std::int64_t(scales.size()); }
  double grad_norm() const { return 10.0; }  // always clipped to cfg.clip
  std::size_t tensors() const { return 1; }
  std::vector<float> values(std::size_t) const { return value; }
  void set_values(std::size_t, std::span<const float> v) { value.assign(v.begin(), v.end()); }
  std::vector<float> first_moment(std::size_t) const { return {0.25f}; }
  std::vector<float> second_moment(std::size_t) const { return {0.5f}; }
  void restore(std::int64_t, std::size_t, std::span<const float>, std::span<const float>) {}
  std::int64_t state_bytes() const { return 8; }
};

struct ModelWithOwnOptimizer {
  using optimizer_type = RecordingOptimizer;
  int forwards = 0, backwards = 0;
  double forward(std::span<const std::int32_t>, std::span<const std::int32_t>, int, int, Pass) {
    ++forwards;
    return 1.0;
  }
  void backward() { ++backwards; }
  void zero_grad() {}
};

}  // namespace

TEST_CASE("Trainer uses the optimizer a model names (the device models' path)") {
  testing::TempDir dir;
  ModelWithOwnOptimizer m;
  train::TrainConfig cfg;
  cfg.steps = 3;
  cfg.grad_accum = 2;
  cfg.clip = 1.0;
  cfg.progress = false;
  cfg.checkpoint = dir.path / "own.safetensors";
  train::Trainer<ModelWithOwnOptimizer> t(
      m, cfg, [](std::int64_t step, int) { return copy_batch(step, 0, 2); },
      [] { return train::EvalResult{}; });
  t.run();
  CHECK(m.forwards == 6);
  CHECK(m.backwards == 6);
  REQUIRE(t.optimizer().scales.size() == 3);
  // mean over 2 micro-batches (1/2), then clipped: norm 10 * 1/2 = 5 > 1, so scale 1/2 * 1/5
  for (double s : t.optimizer().scales) CHECK(s == doctest::Approx(0.1));
  // The checkpoint holds what the optimizer reported, and loads back through set_values.
  const io::SafetensorsFile f = io::SafetensorsFile::load(cfg.checkpoint);
  CHECK(f.read<float>("param.0") == std::vector<float>{-0.5f, 0.5f, 1.5f});
  CHECK(f.read<float>("adamw.m.0") == std::vector<float>{0.25f});
  ModelWithOwnOptimizer m2;
  train::Trainer<ModelWithOwnOptimizer> t2(
      m2, cfg, [](std::int64_t step, int) { return copy_batch(step, 0, 2); },
      [] { return train::EvalResult{}; });
  CHECK(t2.load_checkpoint(cfg.checkpoint) == 3);
  CHECK(t2.optimizer().value == std::vector<float>{-0.5f, 0.5f, 1.5f});
}
