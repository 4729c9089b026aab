// ROSA (methods.md 6.8): the index laws, function preservation across a factorization,
// orthonormal B and orthogonal rows of A, a residual orthogonal to the slice, re-factorizing
// twice without a step, merge, trainable count; in the model and trainer: the optimizer reset
// with a continuous learning rate, exact resumption (base weights in the checkpoint) and the
// dense export of a trained model.
#include <doctest/doctest.h>

#include <cstring>
#include <set>
#include <vector>

#include "loralab/cpu/adapted_linear.hpp"
#include "loralab/data/synthetic.hpp"
#include "loralab/data/tokenizer.hpp"
#include "loralab/io/hf_gpt2.hpp"
#include "loralab/model/gpt.hpp"
#include "loralab/rosa/subspace.hpp"
#include "loralab/train/trainer.hpp"
#include "support/temp_dir.hpp"
#include "support/testing.hpp"

using namespace loralab;
using cpu::MatrixR;

namespace {

MatrixR<float> random_weight(Eigen::Index out, Eigen::Index in, unsigned seed) {
  std::srand(seed);
  return MatrixR<float>::Random(out, in);
}

double rel(const MatrixR<float>& a, const MatrixR<float>& b) {
  return double((a - b).cwiseAbs().maxCoeff()) / double(b.cwiseAbs().maxCoeff());
}

template <class Spec>
MatrixR<float> merged_weight(cpu::AdaptedLinear<Spec, float>& a, const MatrixR<float>& W) {
  return W + a.scale() * (a.B() * a.A());
}

}  // namespace

TEST_CASE("index laws: contiguous never returns the last block; uniform subsets; top, bottom") {
  const int k = 10, r = 3;
  std::set<int> starts;
  for (std::uint32_t c = 0; c < 400; ++c) {
    const auto I = rosa::choose_subspace(SubspaceLaw::contiguous, k, r, 7, 3, c);
    REQUIRE(I.size() == 3);
    CHECK(I[1] == I[0] + 1);
    CHECK(I[2] == I[0] + 2);
    starts.insert(I[0]);
  }
  CHECK(starts == std::set<int>{0, 1, 2, 3, 4, 5, 6});  // never 7 = k - r: the last block
  std::vector<int> hits(k, 0);
  for (std::uint32_t c = 0; c < 4000; ++c) {
    const auto I = rosa::choose_subspace(SubspaceLaw::uniform, k, r, 7, 3, c);
    CHECK(std::set<int>(I.begin(), I.end()).size() == 3);
    CHECK(std::is_sorted(I.begin(), I.end()));
    for (int i : I) ++hits[i];
  }
  for (int i = 0; i < k; ++i) CHECK(std::abs(hits[i] / 4000.0 - 0.3) < 0.03);  // r / k each
  CHECK(rosa::choose_subspace(SubspaceLaw::top, k, r, 1, 1, 5) == std::vector<int>{0, 1, 2});
  CHECK(rosa::choose_subspace(SubspaceLaw::bottom, k, r, 1, 1, 5) == std::vector<int>{7, 8, 9});
  CHECK(rosa::choose_subspace(SubspaceLaw::uniform, k, r, 1, 2, 5) ==
        rosa::choose_subspace(SubspaceLaw::uniform, k, r, 1, 2, 5));
  CHECK(testing::error_of([] {
          rosa::choose_subspace(SubspaceLaw::top, 4, 4, 1, 1, 0);
        }).find("rank < min(out, in)") != std::string::npos);
}

TEST_CASE(
    "factorization: function preserved, B orthonormal, A's rows orthogonal with norms S_I, "
    "residual orthogonal to the slice") {
  const MatrixR<float> W0 = random_weight(24, 16, 3);
  const MatrixR<float> X = random_weight(5, 16, 4);
  std::vector<float> bias(24, 0.25f);
  MatrixR<float> W = W0;
  AdapterConfig cfg;
  cfg.alpha = 4;  // rank 4: scale 1, where A's row norms are exactly S_I
  cfg.seed = testing::kSeed;
  cpu::AdaptedLinear<Rosa<4>, float> a(W, bias, cfg);
  MatrixR<float> Y0 = X * W0.transpose();
  Y0.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(bias.data(), 24);
  CHECK(rel(a.forward(X), Y0) <= 1e-4);  // construction is a factorization (count 0)
  CHECK(rel(merged_weight(a, W), W0) <= 1e-5);
  // move away from the slice (a training step would), then re-factorize
  a.B() += 0.1f * random_weight(24, 4, 5);
  a.A() += 0.1f * random_weight(4, 16, 6);
  const MatrixR<float> before = a.forward(X), merged = merged_weight(a, W);
  a.refactorize(1);
  CHECK(rel(a.forward(X), before) <= 1e-4);
  CHECK(rel(merged_weight(a, W), merged) <= 1e-5);
  const MatrixR<float> BtB = a.B().transpose() * a.B();
  CHECK((BtB - MatrixR<float>::Identity(4, 4)).cwiseAbs().maxCoeff() <= 1e-5);
  const MatrixR<float> AAt = a.A() * a.A().transpose();
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(merged.cast<double>());
  const auto S = svd.singularValues();
  const auto I = rosa::choose_subspace(SubspaceLaw::uniform, 16, 4, cfg.seed, 0, 1);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      if (i == j)
        CHECK(std::sqrt(AAt(i, i)) == doctest::Approx(S(I[i])).epsilon(1e-4));
      else
        CHECK(std::abs(AAt(i, j)) <= 1e-4 * S(0) * S(0));
    }
  // U_I^T W_fixed = 0 and W_fixed V_I = 0; rank(W_fixed) <= k - r
  const MatrixR<float> left = a.B().transpose() * W, right = W * a.A().transpose();
  CHECK(double(left.cwiseAbs().maxCoeff()) <= 1e-5 * double(W.cwiseAbs().maxCoeff()) * 16);
  CHECK(double(right.cwiseAbs().maxCoeff()) <= 1e-5 * S(0) * S(0) * 16);
  Eigen::JacobiSVD<Eigen::MatrixXd> fixed_svd(W.cast<double>());
  CHECK(fixed_svd.singularValues()(12) <= 1e-5 * S(0));
  // trainable count = LoRA's at the same rank and shape
  MatrixR<float> W2 = W0;
  cpu::AdaptedLinear<Lora<4>, float> lora(W2, bias, cfg);
  CHECK(a.memory(5).trainable_params == lora.memory(5).trainable_params);
  // merged eval forward = unmerged eval forward
  const MatrixR<float> unmerged = a.forward(X);
  a.merge();
  CHECK(rel(a.forward(X), unmerged) <= 1e-5);
}

TEST_CASE(
    "re-factorizing twice without a step leaves the merged weight unchanged, every law and "
    "any scale") {
  auto check = [](auto tag, float alpha) {
    using Spec = Adapter<Rank<3>, RosaSubspace<decltype(tag)::value>>;
    MatrixR<float> W = random_weight(12, 20, 8);
    AdapterConfig cfg;
    cfg.alpha = alpha;
    cpu::AdaptedLinear<Spec, float> a(W, {}, cfg);
    a.B() += 0.05f * random_weight(12, 3, 9);
    a.refactorize(1);
    const MatrixR<float> m1 = merged_weight(a, W);
    a.refactorize(2);
    INFO(subspace_law_name(decltype(tag)::value) << " alpha " << alpha);
    CHECK(rel(merged_weight(a, W), m1) <= 1e-5);
  };
  for (float alpha : {3.0f, 16.0f}) {  // scale 1, and 16/3: A is divided by the scale
    check(std::integral_constant<SubspaceLaw, SubspaceLaw::uniform>{}, alpha);
    check(std::integral_constant<SubspaceLaw, SubspaceLaw::contiguous>{}, alpha);
    check(std::integral_constant<SubspaceLaw, SubspaceLaw::top>{}, alpha);
    check(std::integral_constant<SubspaceLaw, SubspaceLaw::bottom>{}, alpha);
  }
}

TEST_CASE("PiSSA-style principal init: the top-r slice, once") {
  MatrixR<float> W = random_weight(10, 8, 11);
  const MatrixR<float> W0 = W;
  AdapterConfig cfg;
  cfg.alpha = 2;
  cpu::AdaptedLinear<Adapter<Rank<2>, PrincipalSubspace>, float> a(W, {}, cfg);
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(W0.cast<double>());
  CHECK(a.A().row(0).norm() == doctest::Approx(svd.singularValues()(0)).epsilon(1e-5));
  CHECK(a.A().row(1).norm() == doctest::Approx(svd.singularValues()(1)).epsilon(1e-5));
  CHECK(rel(merged_weight(a, W), W0) <= 1e-5);
  static_assert(!Adapter<Rank<2>, PrincipalSubspace>::init::refactorizes);
}

namespace {

model::GptConfig small() {
  model::GptConfig c;
  c.vocab_size = data::kVocabSize;
  c.context = 16;
  c.layers = 2;
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

using RosaGpt = model::Gpt<Adapter<DynamicRank, RosaSubspace<>>, float>;

}  // namespace

TEST_CASE(
    "in training: re-factorization resets the optimizer, keeps the function and the LR "
    "schedule; a resumed run is bit-identical") {
  testing::TempDir dir;
  auto run = [&](std::int64_t steps, std::int64_t stop_after, model::GptWeights<float>& w,
                 bool checkpoint) {
    model::GptOptions opts;
    opts.adapter.rank = 2;
    opts.adapter.alpha = 2;
    auto m = std::make_unique<RosaGpt>(w, opts);
    train::TrainConfig cfg;
    cfg.steps = steps;
    cfg.warmup = 2;
    cfg.eval_every = steps;
    cfg.progress = false;
    cfg.refactorize_every = 3;
    cfg.stop_after = stop_after;
    if (checkpoint) cfg.checkpoint = dir.path / "rosa.safetensors";
    auto t = std::make_unique<train::Trainer<RosaGpt>>(*m, cfg, copy_batch,
                                                       [] { return train::EvalResult{}; });
    const auto r = t->run();
    return std::tuple{std::move(m), std::move(t), r};
  };
  // Steps 0..2, then before step 3 a re-factorization: moments zero, function unchanged.
  model::GptWeights<float> w(small());
  w.init_gpt2(3);
  auto [m, t, r] = run(3, -1, w, false);
  const data::Batch b = copy_batch(999, 0);
  const double loss_before = m->forward(b.tokens, b.targets, 4, 12, Pass{false, 0});
  for (std::size_t k = 0; k < t->optimizer().tensors(); ++k)
    CHECK(t->optimizer().tensor_steps(k) == 3);
  m->refactorize(1);
  auto& opt = const_cast<train::HostOptimizer<float>&>(t->optimizer());
  opt.reset_state();
  CHECK(m->forward(b.tokens, b.targets, 4, 12, Pass{false, 0}) ==
        doctest::Approx(loss_before).epsilon(1e-5));
  for (std::size_t k = 0; k < opt.tensors(); ++k) {
    for (float x : opt.first_moment(k)) CHECK(x == 0.0f);
    for (float x : opt.second_moment(k)) CHECK(x == 0.0f);
    CHECK(opt.tensor_steps(k) == 0);
  }
  // The trainer does the same before steps 3, 6, 9: the learning rate of every step is the
  // schedule's value at that global step (continuity), and resumption restores the base.
  model::GptWeights<float> a(small()), b2(small()), c(small());
  a.init_gpt2(4);
  b2.init_gpt2(4);
  c.init_gpt2(4);
  auto straight = run(10, -1, a, false);
  const train::WarmupCosine schedule{train::TrainConfig{}.lr, 2, 10, 0.1};
  CHECK(std::get<2>(straight).curve.back().lr == doctest::Approx(schedule(9)));
  run(10, 4, b2, true);  // stops after step 4 (one re-factorization done)
  auto resumed = run(10, -1, c, true);
  CHECK(std::get<2>(resumed).resumed_from == 4);
  CHECK(std::memcmp(a.flat().data(), c.flat().data(), a.flat().size() * sizeof(float)) == 0);
  const auto pa = std::get<0>(straight)->parameters(), pc = std::get<0>(resumed)->parameters();
  for (std::size_t k = 0; k < pa.size(); ++k)
    CHECK(std::equal(pa[k].value.begin(), pa[k].value.end(), pc[k].value.begin()));
}

TEST_CASE("a trained ROSA model exports as a dense HF GPT-2 checkpoint with the same function") {
  testing::TempDir dir;
  model::GptWeights<float> w(small());
  w.init_gpt2(5);
  model::GptOptions opts;
  opts.adapter.rank = 2;
  opts.adapter.alpha = 2;
  RosaGpt m(w, opts);
  train::TrainConfig cfg;
  cfg.steps = 7;
  cfg.warmup = 1;
  cfg.eval_every = 7;
  cfg.progress = false;
  cfg.refactorize_every = 3;
  train::Trainer<RosaGpt> t(m, cfg, copy_batch, [] { return train::EvalResult{}; });
  t.run();
  const data::Batch b = copy_batch(321, 0);
  const MatrixR<float> logits = m.forward_logits(b.tokens, 4, 12, Pass{false, 0});
  m.merge_adapters();
  io::export_hf_gpt2(w, dir.path / "dense");
  model::GptWeights<float> dense = io::import_hf_gpt2<float>(dir.path / "dense");
  model::GptOptions full;
  full.mode = model::TrainMode::full;  // a plain decoder: no adapters at all
  model::Gpt<Adapter<DynamicRank>, float> plain(dense, full);
  const MatrixR<float> dense_logits = plain.forward_logits(b.tokens, 4, 12, Pass{false, 0});
  CHECK(rel(dense_logits, logits) <= 1e-4);
}
