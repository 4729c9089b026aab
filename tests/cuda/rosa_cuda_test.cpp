// CPU vs CUDA for ROSA's re-factorization (methods.md 6.3, 6.8): cuda::Gpt with an SVD-slice
// adapter (RosaSubspace, its contiguous law, PrincipalSubspace) against model::Gpt in double on a
// tiny decoder: the factors and the base weights (the complements) after construction and after
// refactorize(1), the logits, function preservation on the device, and a short training run with
// refactorize_every through train::Trainer on both backends.
// Runs only where a GPU is present (tests/cuda/cuda_main.cpp exits 77 otherwise).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "loralab/cuda/gpt.hpp"
#include "loralab/data/batch.hpp"
#include "loralab/model/gpt.hpp"
#include "loralab/train/trainer.hpp"
#include "support/testing.hpp"

using namespace loralab;
using cuda::bf16;
using model::GptConfig;
using model::GptOptions;
using model::GptWeights;
using model::Module;

namespace {

using RosaUniform = Adapter<DynamicRank, RosaSubspace<>>;
using RosaContiguous = Adapter<DynamicRank, RosaSubspace<SubspaceLaw::contiguous>>;
using Pissa = Adapter<DynamicRank, PrincipalSubspace>;

// The device slices in double (cusolverDnDgesvd) as the CPU does, then stores the factors in
// fp32 and the complement in fp32: a few fp32 roundings per entry, and the logits add the
// decoder's fp32 accumulation (gpt_cuda_test's 1e-4 of the largest entry).
constexpr double kTolerance = 1e-4;

GptConfig tiny() {
  GptConfig c;
  c.vocab_size = 23;
  c.context = 12;
  c.layers = 2;
  c.heads = 2;
  c.d_model = 16;
  return c;
}

// GPT-2 init plus a perturbation of every entry, so that every weight has distinct singular
// values (the sign rule then fixes the singular vectors uniquely).
GptWeights<float> make_weights() {
  GptWeights<float> w(tiny());
  w.init_gpt2(testing::kSeed);
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  for (float& x : w.flat()) x += u(rng);
  return w;
}

GptWeights<double> to_double(const GptWeights<float>& w) {
  GptWeights<double> d(w.config());
  std::copy(w.flat().begin(), w.flat().end(), d.flat().begin());
  return d;
}

GptOptions rosa_options() {
  GptOptions o;
  o.adapter.rank = 3;
  o.adapter.alpha = 6;
  o.adapter.seed = testing::kSeed;
  return o;
}

// |got - want| <= tol * max|want| over the whole tensor, reporting the worst entry.
void check_close(std::span<const double> got, std::span<const double> want, double tol,
                 const std::string& what) {
  REQUIRE(got.size() == want.size());
  double scale = 1e-30, worst = 0;
  std::size_t at = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double e = std::abs(got[i] - want[i]) / scale;
    if (e > worst) {
      worst = e;
      at = i;
    }
  }
  INFO(what << ": worst scaled error " << worst << " at " << at << " (got " << got[at] << ", want "
            << want[at] << ", scale " << scale << ")");
  CHECK(worst <= tol);
}

template <class V>
std::vector<double> as_double(const V& v) {
  return std::vector<double>(v.begin(), v.end());
}

struct Probe {
  std::vector<std::int32_t> tokens;
  int batch = 3, seq = 11;
  Probe() {
    for (int i = 0; i < batch * seq; ++i) tokens.push_back((i * 7 + 3) % 23);
  }
};

// Factors (A then B, as parameters_host()), base weights and logits of both backends.
template <class Spec>
void check_same(model::Gpt<Spec, double>& c, cuda::Gpt<Spec, float>& g, const std::string& when) {
  int adapters = 0;
  for (int l = 0; l < tiny().layers; ++l)
    for (int m = 0; m < model::kModulesPerBlock; ++m) {
      auto* ga = g.adapter(l, Module(m));
      auto* ca = c.adapter(l, Module(m));
      REQUIRE((ga == nullptr) == (ca == nullptr));
      if (!ga) continue;
      ++adapters;
      const std::vector<float> got = ga->parameters_host();
      const std::size_t a_size = std::size_t(ca->A().size());
      REQUIRE(got.size() == a_size + std::size_t(ca->B().size()));
      const std::string where =
          when + " block " + std::to_string(l) + " module " + std::to_string(m);
      check_close(as_double(std::span<const float>(got).first(a_size)),
                  std::span<const double>(ca->A().data(), a_size), kTolerance, where + " A");
      check_close(as_double(std::span<const float>(got).subspan(a_size)),
                  std::span<const double>(ca->B().data(), std::size_t(ca->B().size())), kTolerance,
                  where + " B");
      for (float x : ga->gradients_host()) REQUIRE(x == 0.0f);
    }
  CHECK(adapters > 0);
  GptWeights<float> base(tiny());
  g.download(base);
  const std::span<const double> want = c.base_weights();
  check_close(as_double(base.flat()), want, kTolerance, when + " base weights");
  const Probe p;
  const auto& logits_c = c.forward_logits(p.tokens, p.batch, p.seq, Pass{false, 0});
  const std::vector<float> logits_g = g.forward_logits(p.tokens, p.batch, p.seq, Pass{false, 0});
  check_close(as_double(logits_g),
              std::span<const double>(logits_c.data(), std::size_t(logits_c.size())), kTolerance,
              when + " logits");
}

// The same random A and B on both backends (so the merge before re-slicing matters).
template <class Spec, class T>
void perturb_adapters(model::Gpt<Spec, double>& c, cuda::Gpt<Spec, T>& g) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  for (int l = 0; l < tiny().layers; ++l)
    for (int m = 0; m < model::kModulesPerBlock; ++m) {
      auto* ga = g.adapter(l, Module(m));
      auto* ca = c.adapter(l, Module(m));
      if (!ga) continue;
      std::vector<float> host = ga->parameters_host();
      for (float& x : host) x += u(rng);
      const std::size_t a_size = std::size_t(ga->rank()) * std::size_t(ga->in_features());
      ga->set_parameters(std::span<const float>(host).first(a_size),
                         std::span<const float>(host).subspan(a_size));
      for (Eigen::Index i = 0; i < ca->A().size(); ++i) ca->A().data()[i] = host[std::size_t(i)];
      for (Eigen::Index i = 0; i < ca->B().size(); ++i)
        ca->B().data()[i] = host[a_size + std::size_t(i)];
    }
}

// A learnable toy stream: every row counts up by a row-specific stride.
data::Batch toy_batch(std::int64_t step) {
  data::Batch b;
  b.batch = 4;
  b.length = 10;
  for (int r = 0; r < b.batch; ++r) {
    const int stride = 1 + int((step + r) % 3);
    for (int t = 0; t < b.length; ++t) {
      b.tokens.push_back((r + stride * t) % 23);
      b.targets.push_back(t + 1 < b.length ? (r + stride * (t + 1)) % 23 : -1);
    }
  }
  return b;
}

template <class Model>
train::TrainResult fine_tune(Model& m, const train::TrainConfig& cfg) {
  train::Trainer<Model> t(
      m, cfg, [](std::int64_t step, int) { return toy_batch(step); },
      [&] {
        const data::Batch b = toy_batch(1000);
        return train::EvalResult{
            m.forward(b.tokens, b.targets, int(b.batch), int(b.length), Pass{false, 0}), 0};
      });
  return t.run();
}

}  // namespace

TEST_CASE_TEMPLATE("ROSA/PiSSA on the device: the CPU's slice after construction and refactorize",
                   Spec, RosaUniform, RosaContiguous, Pissa) {
  const GptWeights<float> w = make_weights();
  const GptWeights<double> wd = to_double(w);
  GptWeights<double> wc = wd;
  model::Gpt<Spec, double> c(wc, rosa_options());
  cuda::Gpt<Spec, float> g(w, rosa_options());
  static_assert(cuda::Gpt<Spec, float>::refactorizes == model::Gpt<Spec, double>::refactorizes);
  check_same(c, g, "construction");

  // Function preservation at construction: the sliced model is the dense one.
  {  // LoRA at init (B = 0) computes the dense model
    cuda::Gpt<Adapter<DynamicRank>, float> dense(w, rosa_options());
    const Probe p;
    check_close(as_double(g.forward_logits(p.tokens, p.batch, p.seq, Pass{false, 0})),
                as_double(dense.forward_logits(p.tokens, p.batch, p.seq, Pass{false, 0})),
                kTolerance, "construction preserves the function");
  }

  perturb_adapters(c, g);
  const Probe p;
  const std::vector<float> before = g.forward_logits(p.tokens, p.batch, p.seq, Pass{false, 0});
  c.refactorize(1);
  g.refactorize(1);
  check_same(c, g, "refactorize(1)");
  check_close(as_double(g.forward_logits(p.tokens, p.batch, p.seq, Pass{false, 0})),
              as_double(before), kTolerance, "refactorize(1) preserves the function on the device");

  // Merge then forward equals the unmerged forward (methods.md 6.8 item 6).
  const std::vector<float> unmerged = g.forward_logits(p.tokens, p.batch, p.seq, Pass{false, 0});
  g.merge_adapters();
  check_close(as_double(g.forward_logits(p.tokens, p.batch, p.seq, Pass{false, 0})),
              as_double(unmerged), kTolerance, "merged forward");
  g.unmerge_adapters();
  CHECK(testing::error_of([&] {
          g.merge_adapters();
          g.refactorize(2);
        }).find("[loralab.state]") != std::string::npos);
}

TEST_CASE("ROSA on the device in bf16: refactorize keeps the function up to bf16 rounding") {
  const GptWeights<float> w = make_weights();
  cuda::Gpt<RosaUniform, bf16> g(w, rosa_options());
  GptWeights<double> wc = to_double(w);
  model::Gpt<RosaUniform, double> c(wc, rosa_options());
  perturb_adapters(c, g);
  const Probe p;
  const std::vector<float> before = g.forward_logits(p.tokens, p.batch, p.seq, Pass{false, 0});
  g.refactorize(1);
  const std::vector<float> after = g.forward_logits(p.tokens, p.batch, p.seq, Pass{false, 0});
  for (float x : after) REQUIRE(std::isfinite(x));
  // W_fixed and the factors are rounded to bf16 once more (u = 2^-9 per entry): the
  // tolerance of gpt_cuda_test's bf16 logits.
  check_close(as_double(after), as_double(before), 3e-2, "bf16 refactorize(1)");
}

TEST_CASE("ROSA training with refactorize_every: the device reaches the CPU's loss") {
  const GptWeights<float> w = make_weights();
  GptWeights<float> wc = w;
  model::Gpt<RosaUniform, float> c(wc, rosa_options());
  cuda::Gpt<RosaUniform, float> g(w, rosa_options());
  train::TrainConfig cfg;
  cfg.steps = 30;
  cfg.lr = 1e-2;
  cfg.warmup = 3;
  cfg.eval_every = 30;
  cfg.progress = false;
  cfg.refactorize_every = 10;
  const double cpu_loss = fine_tune(c, cfg).curve.back().eval.loss;
  const double gpu_loss = fine_tune(g, cfg).curve.back().eval.loss;
  INFO("cpu " << cpu_loss << ", cuda " << gpu_loss);
  CHECK(std::isfinite(gpu_loss));
  CHECK(std::abs(gpu_loss - cpu_loss) <= 1e-2 * cpu_loss);
  GptWeights<float> base(tiny());
  g.download(base);
  check_close(as_double(base.flat()), as_double(c.base_weights()), 1e-2,
              "base weights after training");
}
