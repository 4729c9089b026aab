// The dropout framework on the device (cuda::Gpt with GptOptions::dropout; methods.md 4) against
// model::Gpt in double: every site with every pattern, the adapters' branch input (adapter_input)
// included (logits, loss, every adapter gradient, or every weight gradient in full mode),
// DropAttention with and without the stop-gradient, layer ranges, DropConnect (also over
// micro-batches and on shared factors), HiddenKey with the KL on one branch and on both,
// HiddenKey- with and without JS; in fp32 (1e-4 of each tensor's largest entry) and bf16 (the
// tolerances gpt_cuda_test.cpp argues). The masks themselves are compared with the CPU's for the
// same keys (attention keep flags, hidden multipliers, DropConnect scales, the model's per-block
// flags for a given Pass), not only through a rate-vs-no-rate difference. Eval mode is the plain
// model bit for bit; so are rates of 0; a step re-runs bit for bit; the adapters' input-dropout
// masks of branch 1 differ from branch 0's and equal the CPU's.
// Runs only where a GPU is present (tests/cuda/cuda_main.cpp exits 77 otherwise).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "loralab/cuda/dropout/masks.hpp"
#include "loralab/cuda/gpt.hpp"
#include "loralab/dropout/config.hpp"
#include "loralab/dropout/masks.hpp"
#include "loralab/model/gpt.hpp"
#include "support/testing.hpp"

using namespace loralab;
using cuda::bf16;
using dropout::Compensation;
using dropout::LayerRange;
using dropout::Pattern;
using dropout::Position;
using model::GptConfig;
using model::GptOptions;
using model::GptWeights;
using model::Module;
using model::TrainMode;

namespace {

using LoraSpec = Adapter<DynamicRank>;
using DropSpec = Adapter<DynamicRank, InputDropout>;
using MosSpec = Adapter<DynamicRank, MixtureOfShards<>>;

// fp32 against double and bf16 against double: the arguments of gpt_cuda_test.cpp hold unchanged,
// because the masks are the CPU's exactly (the same entries are dropped and scaled by the same
// factor) and the framework adds only element-wise work and row reductions in fp32 on top of the
// decoder: the hidden multipliers (one rounding to T), DropAttention's renormalization (a row sum
// like the softmax's), DropConnect's scaled factors (one rounding of the bf16 copy) and the
// consistency loss and gradient (fp32 row reductions over V entries).
constexpr double kF32Tolerance = 1e-4;
constexpr double kBf16Logits = 3e-2;
constexpr double kBf16Grads = 6e-2;

GptConfig tiny() {
  GptConfig c;
  c.vocab_size = 23;
  c.context = 12;
  c.layers = 2;
  c.heads = 2;
  c.d_model = 16;
  return c;
}

struct Data {
  std::vector<std::int32_t> tokens, targets;
  int batch = 3, seq = 11;
  Data() {
    for (int i = 0; i < batch * seq; ++i) {
      tokens.push_back((i * 7 + 3) % 23);
      targets.push_back(i % 5 == 2 ? -1 : (i * 5 + 1) % 23);  // some ignored positions
    }
  }
};

template <class T>
float round_to(float x) {
  return cuda::to_float(cuda::from_float<T>(x));
}

// GPT-2 init plus a perturbation of every entry, rounded to T (as gpt_cuda_test.cpp).
template <class T>
GptWeights<float> make_weights() {
  GptWeights<float> w(tiny());
  w.init_gpt2(testing::kSeed);
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  for (float& x : w.flat()) x = round_to<T>(x + u(rng));
  return w;
}

GptWeights<double> to_double(const GptWeights<float>& w) {
  GptWeights<double> d(w.config());
  std::copy(w.flat().begin(), w.flat().end(), d.flat().begin());
  return d;
}

GptOptions options(dropout::Config cfg, TrainMode mode = TrainMode::adapters,
                   double input_dropout = 0.0) {
  GptOptions o;
  o.mode = mode;
  o.adapter.rank = 3;
  o.adapter.alpha = 6;
  o.adapter.seed = testing::kSeed;
  o.adapter.dropout = input_dropout;
  o.dropout = std::move(cfg);
  return o;
}

dropout::Config one_site(Position p, Pattern pat, double rate, bool stop_gradient = true,
                         LayerRange layers = {}) {
  dropout::Config c;
  c.sites.push_back({p, pat, rate, std::move(layers), stop_gradient});
  return c;
}

// Random A and B on both backends (B = 0 at init would hide every dA); rounded to T first.
template <class Spec, class T>
void randomize_adapters(model::Gpt<Spec, double>& c, cuda::Gpt<Spec, T>& g, unsigned seed = 5) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.3f, 0.3f);
  for (int l = 0; l < tiny().layers; ++l)
    for (int m = 0; m < model::kModulesPerBlock; ++m) {
      auto* ga = g.adapter(l, Module(m));
      auto* ca = c.adapter(l, Module(m));
      REQUIRE((ga == nullptr) == (ca == nullptr));
      if (!ga) continue;
      std::vector<float> host = ga->parameters_host();
      const std::size_t a_size = std::size_t(ga->rank()) * std::size_t(ga->in_features());
      for (float& x : host) x = round_to<T>(u(rng));
      ga->set_parameters(std::span<const float>(host).first(a_size),
                         std::span<const float>(host).subspan(a_size));
      for (Eigen::Index i = 0; i < ca->A().size(); ++i) ca->A().data()[i] = host[std::size_t(i)];
      for (Eigen::Index i = 0; i < ca->B().size(); ++i)
        ca->B().data()[i] = host[a_size + std::size_t(i)];
    }
}

// The same random adapters on two device models (bitwise comparisons between device runs).
template <class Spec>
void randomize_device(cuda::Gpt<Spec, float>& g, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.3f, 0.3f);
  for (int l = 0; l < tiny().layers; ++l)
    for (int m = 0; m < model::kModulesPerBlock; ++m) {
      auto* ga = g.adapter(l, Module(m));
      if (!ga) continue;
      std::vector<float> host = ga->parameters_host();
      for (float& x : host) x = u(rng);
      const std::size_t a_size = std::size_t(ga->rank()) * std::size_t(ga->in_features());
      ga->set_parameters(std::span<const float>(host).first(a_size),
                         std::span<const float>(host).subspan(a_size));
    }
}

// |got - want| <= tol * max|want| over the whole tensor, reporting the worst entry; NaN fails.
void check_close(std::span<const double> got, std::span<const double> want, double tol,
                 const std::string& what) {
  REQUIRE(got.size() == want.size());
  double scale = 1e-30, worst = 0;
  std::size_t at = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double e = std::abs(got[i] - want[i]) / scale;
    if (!(e <= worst)) {
      worst = std::isnan(e) ? INFINITY : e;
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

std::vector<float> device_to_host(const float* p, std::size_t n) {
  std::vector<float> host(n);
  LORALAB_CUDA_CHECK(cudaMemcpy(host.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost));
  return host;
}

// A consistency loss computed from logits that carry an error of at most delta per entry: for
// KL-type losses of softmaxes, |d loss| <= 2 sqrt(2 loss) delta + 2 delta^2 to first order
// (the loss is quadratic in the logit difference, whose error is at most 2 delta).
void check_consistency(double got, double want, double delta) {
  INFO("consistency cpu " << want << " cuda " << got << ", logit error bound " << delta);
  CHECK(want >= 0);
  CHECK(std::abs(got - want) <= 2 * std::sqrt(2 * want) * delta + 2 * delta * delta + 1e-7);
}

// Logits, loss, consistency and every gradient that trains after one forward/backward.
template <class Spec, class T>
void compare(model::Gpt<Spec, double>& c, cuda::Gpt<Spec, T>& g, const Data& data, Pass pass) {
  const bool f32 = std::is_same_v<T, float>;
  const double tol_out = f32 ? kF32Tolerance : kBf16Logits;
  const double tol_grad = f32 ? kF32Tolerance : kBf16Grads;
  const auto& logits_c = c.forward_logits(data.tokens, data.batch, data.seq, pass);
  const std::vector<float> logits_g = g.forward_logits(data.tokens, data.batch, data.seq, pass);
  const std::span<const double> want(logits_c.data(), std::size_t(logits_c.size()));
  check_close(as_double(logits_g), want, tol_out, "logits");
  const double delta = tol_out * logits_c.cwiseAbs().maxCoeff();

  c.zero_grad();
  g.zero_grad();
  const double loss_c = c.forward(data.tokens, data.targets, data.batch, data.seq, pass);
  const double loss_g = g.forward(data.tokens, data.targets, data.batch, data.seq, pass);
  INFO("loss cpu " << loss_c << " cuda " << loss_g);
  CHECK(std::abs(loss_g - loss_c) <= tol_out * std::abs(loss_c));
  check_consistency(g.consistency(), c.consistency(), delta);
  if (pass.training && c.options().dropout.two_pass()) CHECK(c.consistency() > 0);
  c.backward();
  g.backward();

  auto pc = c.parameters();
  auto pg = g.parameters();
  REQUIRE(pc.size() == pg.size());
  if (c.options().mode == TrainMode::full) {  // one flat tensor: compare tensor by tensor
    const std::vector<float> grad = device_to_host(pg[0].grad, pg[0].size);
    for (const model::TensorSlot& s : model::gpt_layout(tiny())) {
      const std::vector<double> got(grad.begin() + std::ptrdiff_t(s.offset),
                                    grad.begin() + std::ptrdiff_t(s.offset + s.size()));
      check_close(got, pc[0].grad.subspan(s.offset, std::size_t(s.size())), tol_grad,
                  "d " + s.name);
    }
    return;
  }
  for (int l = 0; l < tiny().layers; ++l)
    for (int m = 0; m < model::kModulesPerBlock; ++m) {
      auto* ga = g.adapter(l, Module(m));
      if (!ga) continue;
      const std::string what = "block " + std::to_string(l) + " " + model::module_name(Module(m));
      const std::vector<float> grad = ga->gradients_host();
      check_close(as_double(grad), c.adapter(l, Module(m))->parameters()[0].grad, tol_grad,
                  "d " + what);
    }
}

template <class Spec, class T>
void compare_config(const dropout::Config& cfg, TrainMode mode = TrainMode::adapters,
                    double input_dropout = 0.0, Pass pass = Pass{true, 7}) {
  const GptWeights<float> w = make_weights<T>();
  GptWeights<double> wd = to_double(w);
  const GptOptions opts = options(cfg, mode, input_dropout);
  model::Gpt<Spec, double> c(wd, opts);
  cuda::Gpt<Spec, T> g(w, opts);
  if (mode == TrainMode::adapters) randomize_adapters(c, g);
  compare(c, g, Data{}, pass);
}

const char* pattern_name(Pattern p) {
  return p == Pattern::element ? "element" : p == Pattern::column ? "column" : "span";
}

}  // namespace

TEST_CASE_TEMPLATE("every dropout site with every pattern matches the CPU decoder", T, float,
                   bf16) {
  struct Case {
    Position position;
    Pattern pattern;
    bool stop_gradient;
    TrainMode mode;
    LayerRange layers;
  };
  std::vector<Case> cases;
  const TrainMode adapters = TrainMode::adapters, full = TrainMode::full;
  for (Pattern pat : {Pattern::element, Pattern::column, Pattern::span}) {
    for (Position p : {Position::attention_logits, Position::ffn_hidden, Position::ffn_output,
                       Position::head_input, Position::adapter_input})
      cases.push_back({p, pat, true, adapters, {}});
    cases.push_back({Position::attention_weights, pat, true, adapters, {}});   // DropAttention
    cases.push_back({Position::attention_weights, pat, false, adapters, {}});  // through S
    cases.push_back({Position::embeddings, pat, true, full, {}});              // reaches wte, wpe
  }
  cases.push_back({Position::head_input, Pattern::element, true, full, {}});  // dwte of masked hf
  cases.push_back({Position::adapter_weights, Pattern::element, true, adapters, {}});
  cases.push_back({Position::adapter_weights, Pattern::column, true, adapters, {}});
  // layer ranges: HiddenKey's latter half, and explicit lists
  cases.push_back({Position::ffn_hidden,
                   Pattern::element,
                   true,
                   adapters,
                   {LayerRange::Kind::latter_half, {}}});
  cases.push_back(
      {Position::attention_logits, Pattern::column, true, adapters, {LayerRange::Kind::list, {0}}});
  cases.push_back(
      {Position::adapter_weights, Pattern::column, true, adapters, {LayerRange::Kind::list, {1}}});
  cases.push_back(
      {Position::adapter_input, Pattern::column, true, adapters, {LayerRange::Kind::list, {1}}});
  for (const Case& k : cases) {
    INFO("site " << dropout::position_name(k.position) << " / " << pattern_name(k.pattern)
                 << " stop_gradient " << k.stop_gradient << " full " << (k.mode == full)
                 << " layer range " << int(k.layers.kind));
    compare_config<LoraSpec, T>(one_site(k.position, k.pattern, 0.3, k.stop_gradient, k.layers),
                                k.mode);
  }
}

TEST_CASE_TEMPLATE("HiddenKey (KL, one and both branches) and HiddenKey- (+ JS) match the CPU", T,
                   float, bf16) {
  auto every_block = [](dropout::Config c) {
    for (auto& s : c.sites) s.layers = {};
    return c;
  };
  SUBCASE("HiddenKey: KL on one branch, latter half of the blocks") {
    compare_config<LoraSpec, T>(dropout::hiddenkey(0.2, 0.2, 0.7));
  }
  SUBCASE("HiddenKey: KL on one branch, every block") {
    compare_config<LoraSpec, T>(every_block(dropout::hiddenkey(0.3, 0.3, 0.7)));
  }
  SUBCASE("HiddenKey: KL on both branches (R-Drop)") {
    dropout::Config c = every_block(dropout::hiddenkey(0.3, 0.3, 0.7));
    c.backprop_both = true;
    compare_config<LoraSpec, T>(c);
  }
  SUBCASE("HiddenKey- + JS against the deterministic pass") {
    dropout::Config c = every_block(dropout::hiddenkey_minus(0.3, 0.3));
    c.compensation = Compensation::js;
    c.lambda = 1.5;
    compare_config<LoraSpec, T>(c);
  }
  SUBCASE("HiddenKey-") {
    compare_config<LoraSpec, T>(every_block(dropout::hiddenkey_minus(0.3, 0.3)));
  }
  SUBCASE("HiddenKey with adapter input dropout: branch 1 draws the CPU's masks") {
    compare_config<DropSpec, T>(every_block(dropout::hiddenkey(0.3, 0.3, 0.7)), TrainMode::adapters,
                                0.25);
  }
  SUBCASE("DropAttention (stop-gradient), FFN output dropout and DropConnect with the KL") {
    dropout::Config c = one_site(Position::attention_weights, Pattern::column, 0.3);
    c.sites.push_back({Position::ffn_output, Pattern::element, 0.2, {}});
    c.sites.push_back({Position::adapter_weights, Pattern::element, 0.2, {}});
    c.compensation = Compensation::symmetric_kl;
    compare_config<LoraSpec, T>(c);
  }
  SUBCASE("eval pass: one deterministic pass, no consistency") {
    compare_config<LoraSpec, T>(every_block(dropout::hiddenkey(0.3, 0.3)), TrainMode::adapters, 0.0,
                                Pass{false, 7});
  }
}

TEST_CASE("the device draws the CPU's masks: attention keep flags and hidden multipliers") {
  const int batch = 2, heads = 3, seq = 7;
  for (Position p : {Position::attention_logits, Position::attention_weights})
    for (Pattern pat : {Pattern::element, Pattern::column, Pattern::span})
      for (std::uint32_t branch : {0u, 1u}) {
        INFO(dropout::position_name(p) << " / " << pattern_name(pat) << " branch " << branch);
        const dropout::MaskKey key{testing::kSeed, p, 1, branch, 9};
        const std::size_t total = std::size_t(batch) * heads * seq * seq;
        cuda::DeviceBuffer<std::uint8_t> d_keep(total);
        cuda::attention_keep_flags(d_keep.data(), key, pat, 0.35, batch, heads, seq, nullptr);
        const std::vector<std::uint8_t> keep = d_keep.to_host();
        std::size_t dropped = 0, mismatches = 0;
        for (int b = 0; b < batch; ++b)
          for (int h = 0; h < heads; ++h)
            for (int i = 0; i < seq; ++i)
              for (int j = 0; j < seq; ++j) {
                const bool drop =
                    dropout::attention_dropped(key, pat, 0.35, heads, seq, b, h, i, j);
                dropped += drop;
                mismatches += keep[((std::size_t(b) * heads + h) * seq + i) * seq + j] != !drop;
              }
        CHECK(mismatches == 0);
        CHECK(dropped > 0);
        CHECK(dropped < total);
      }
  for (Position p :
       {Position::ffn_hidden, Position::ffn_output, Position::embeddings, Position::head_input})
    for (Pattern pat : {Pattern::element, Pattern::column, Pattern::span}) {
      INFO(dropout::position_name(p) << " / " << pattern_name(pat));
      const int rows = batch * seq, cols = 10;
      const dropout::MaskKey key{testing::kSeed, p, 3, 1, 12};
      const float keep = float(dropout::hidden_keep_scale(pat, 0.3, seq));
      std::vector<float> ones(std::size_t(rows) * cols, 1.0f);
      cuda::DeviceBuffer<float> x = cuda::DeviceBuffer<float>::from_host(ones), y(ones.size());
      cuda::hidden_dropout<float>(x.data(), y.data(), rows, cols, key, pat, 0.3, seq, nullptr);
      std::vector<bf16> ones16(ones.size(), cuda::from_float<bf16>(1.0f));
      auto x16 = cuda::DeviceBuffer<bf16>::from_host(ones16);
      cuda::hidden_dropout<bf16>(x16.data(), x16.data(), rows, cols, key, pat, 0.3, seq,
                                 nullptr);  // in place
      const std::vector<float> got = y.to_host();
      const std::vector<bf16> got16 = x16.to_host();
      std::size_t mismatches = 0, dropped = 0;
      for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
          const bool drop = dropout::hidden_dropped(key, pat, 0.3, seq, cols, r, c);
          const std::size_t e = std::size_t(r) * cols + c;
          dropped += drop;
          mismatches += got[e] != (drop ? 0.0f : keep);
          mismatches += cuda::to_float(got16[e]) != (drop ? 0.0f : round_to<bf16>(keep));
        }
      CHECK(mismatches == 0);
      CHECK(dropped > 0);
    }
}

TEST_CASE("cuda::Gpt draws block l's attention flags from (seed, position, l, branch, step)") {
  const GptWeights<float> w = make_weights<float>();
  const Data data;
  const int L = tiny().layers, H = tiny().heads, S = data.seq;
  for (Position p : {Position::attention_logits, Position::attention_weights}) {
    cuda::Gpt<LoraSpec, float> g(
        w, options(one_site(p, Pattern::column, 0.4, true, {LayerRange::Kind::latter_half, {}})));
    for (std::uint32_t branch : {0u, 1u}) {
      g.forward_logits(data.tokens, data.batch, data.seq, Pass{true, 4, branch});
      CHECK(g.core().attention_keep_host(0).empty());  // not in the latter half
      const std::vector<std::uint8_t> keep = g.core().attention_keep_host(L - 1);
      REQUIRE(keep.size() == std::size_t(data.batch) * H * S * S);
      const dropout::MaskKey key{testing::kSeed, p, std::uint32_t(L - 1), branch, 4};
      std::size_t mismatches = 0;
      for (int b = 0; b < data.batch; ++b)
        for (int h = 0; h < H; ++h)
          for (int i = 0; i < S; ++i)
            for (int j = 0; j < S; ++j)
              mismatches +=
                  keep[((std::size_t(b) * H + h) * S + i) * S + j] !=
                  !dropout::attention_dropped(key, Pattern::column, 0.4, H, S, b, h, i, j);
      CHECK(mismatches == 0);
    }
    g.forward_logits(data.tokens, data.batch, data.seq, Pass{false, 4});
    CHECK(g.core().attention_keep_host(L - 1).empty());  // eval: no mask
  }
}

TEST_CASE("cuda::DropConnect scales, restores and masks gradients as the CPU's DropConnect") {
  const std::int64_t r = 3, in = 5, out = 4, size = r * (in + out);
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const std::size_t count = std::size_t(size);
  std::vector<float> values(count), g0(count), g1(count);
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] = u(rng);
    g0[i] = u(rng);
    g1[i] = u(rng);
  }
  std::vector<bf16> shadow(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) shadow[i] = cuda::from_float<bf16>(values[i]);
  for (Pattern pat : {Pattern::element, Pattern::column}) {
    INFO(pattern_name(pat));
    auto d_values = cuda::DeviceBuffer<float>::from_host(values);
    auto d_shadow = cuda::DeviceBuffer<bf16>::from_host(shadow);
    auto d_grads = cuda::DeviceBuffer<float>::from_host(g0);
    const double rate = 0.35;
    const cuda::DropConnectFactors f{
        d_values.data(), d_shadow.data(), d_grads.data(), r, in, out, 6, rate};
    cuda::DropConnect dc(std::span<const cuda::DropConnectFactors>(&f, 1), pat, testing::kSeed);
    const Pass pass{true, 11, 1};
    // The CPU's rule (model::Gpt::apply_drop_connect): the same counter map and key.
    const dropout::MaskKey key{testing::kSeed, Position::adapter_weights, 6, 1, 11};
    const float keep = float(1.0 / (1.0 - rate));
    std::vector<float> scale(values.size());
    std::size_t dropped = 0;
    for (std::int64_t e = 0; e < size; ++e) {
      const std::uint64_t counter = pat == Pattern::element ? std::uint64_t(e)
                                    : e < r * in            ? std::uint64_t(e % in)
                                                            : std::uint64_t(in + (e - r * in) / r);
      const bool drop = dropout::dropped_at(key, counter, rate);
      dropped += drop;
      scale[std::size_t(e)] = drop ? 0.0f : keep;
    }
    CHECK(dropped > 0);
    dc.apply(pass);
    CHECK(dc.applied());
    const std::vector<float> masked = d_values.to_host();
    const std::vector<bf16> masked16 = d_shadow.to_host();
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < values.size(); ++i) {
      mismatches += masked[i] != values[i] * scale[i];
      mismatches += cuda::to_float(masked16[i]) != round_to<bf16>(values[i] * scale[i]);
    }
    CHECK(mismatches == 0);
    dc.stash_grads();
    CHECK(d_grads.to_host() == std::vector<float>(values.size(), 0.0f));
    d_grads.upload(g1);  // this backward's contribution
    dc.finish();
    CHECK(!dc.applied());
    const std::vector<float> grads = d_grads.to_host();
    for (std::size_t i = 0; i < values.size(); ++i)
      CHECK(grads[i] == doctest::Approx(g1[i] * scale[i] + g0[i]).epsilon(1e-6));
    CHECK(d_values.to_host() == values);  // restored bit for bit
    const std::vector<bf16> restored16 = d_shadow.to_host();
    for (std::size_t i = 0; i < values.size(); ++i)
      CHECK(cuda::to_float(restored16[i]) == cuda::to_float(shadow[i]));
  }
}

TEST_CASE("eval mode is the plain model; rates of 0 too; a step re-runs bit for bit (4.9)") {
  const GptWeights<float> w = make_weights<float>();
  const Data data;
  dropout::Config hk = dropout::hiddenkey(0.3, 0.3);
  hk.sites.push_back({Position::adapter_weights, Pattern::element, 0.2, {}});
  cuda::Gpt<LoraSpec, float> plain(w, options({})), noisy(w, options(hk));
  randomize_device(plain, 3);
  randomize_device(noisy, 3);
  auto grads = [](cuda::Gpt<LoraSpec, float>& g) {
    std::vector<float> all;
    for (int l = 0; l < tiny().layers; ++l)
      for (int m = 0; m < model::kModulesPerBlock; ++m) {
        const std::vector<float> x = g.adapter(l, Module(m))->gradients_host();
        all.insert(all.end(), x.begin(), x.end());
      }
    return all;
  };
  auto step = [&](cuda::Gpt<LoraSpec, float>& g, Pass pass) {
    g.zero_grad();
    const double loss = g.forward(data.tokens, data.targets, data.batch, data.seq, pass);
    g.backward();
    return loss;
  };
  // eval: one deterministic pass, the plain model's logits, loss and gradients bit for bit
  CHECK(noisy.forward_logits(data.tokens, data.batch, data.seq, Pass{false, 4}) ==
        plain.forward_logits(data.tokens, data.batch, data.seq, Pass{false, 4}));
  CHECK(step(noisy, Pass{false, 4}) == step(plain, Pass{false, 4}));
  CHECK(noisy.consistency() == 0.0);
  CHECK(grads(noisy) == grads(plain));
  // training with every rate at 0: the plain model bit for bit (no masks, one pass)
  dropout::Config zero;
  for (Position p : {Position::attention_logits, Position::ffn_hidden, Position::ffn_output,
                     Position::embeddings, Position::head_input, Position::adapter_weights})
    zero.sites.push_back({p, Pattern::element, 0.0, {}});
  cuda::Gpt<LoraSpec, float> zeroed(w, options(zero));
  randomize_device(zeroed, 3);
  CHECK(step(zeroed, Pass{true, 5}) == step(plain, Pass{true, 5}));
  CHECK(grads(zeroed) == grads(plain));
  // training: two passes; the same step twice gives the same losses and gradients, another step
  // other masks; the DropConnect site leaves the adapters' values as they were
  const std::vector<float> before = noisy.adapter(1, Module::fc)->parameters_host();
  const double l1 = step(noisy, Pass{true, 4});
  const double c1 = noisy.consistency();
  const std::vector<float> g1 = grads(noisy);
  CHECK(c1 > 0);
  CHECK(l1 != step(plain, Pass{true, 4}));
  CHECK(step(noisy, Pass{true, 4}) == l1);
  CHECK(noisy.consistency() == c1);
  CHECK(grads(noisy) == g1);
  step(noisy, Pass{true, 5});
  CHECK(noisy.consistency() != c1);
  CHECK(noisy.adapter(1, Module::fc)->parameters_host() == before);
}

TEST_CASE("adapter input dropout: branch 1 draws other masks than branch 0, the CPU's") {
  const GptWeights<float> w = make_weights<float>();
  GptWeights<double> wd = to_double(w);
  const Data data;
  const GptOptions opts = options({}, TrainMode::adapters, 0.3);
  model::Gpt<DropSpec, double> c(wd, opts);
  cuda::Gpt<DropSpec, float> g(w, opts);
  randomize_adapters(c, g);
  std::vector<float> by_branch[2];
  for (std::uint32_t b : {0u, 1u}) {
    INFO("branch " << b);
    const Pass pass{true, 6, b};
    const auto& want = c.forward_logits(data.tokens, data.batch, data.seq, pass);
    by_branch[b] = g.forward_logits(data.tokens, data.batch, data.seq, pass);
    check_close(as_double(by_branch[b]),
                std::span<const double>(want.data(), std::size_t(want.size())), kF32Tolerance,
                "logits");
  }
  // independent masks: the branches differ by far more than the tolerance
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < by_branch[0].size(); ++i) {
    diff = std::max(diff, double(std::abs(by_branch[0][i] - by_branch[1][i])));
    scale = std::max(scale, double(std::abs(by_branch[0][i])));
  }
  CHECK(diff > 100 * kF32Tolerance * scale);
  compare(c, g, data, Pass{true, 6, 1});  // and the gradients of a branch-1 pass
}

TEST_CASE("DropConnect over micro-batches and on shared factors matches the CPU") {
  const Data data;
  SUBCASE("gradient accumulation: each backward masks only its own contribution") {
    const GptWeights<float> w = make_weights<float>();
    GptWeights<double> wd = to_double(w);
    const GptOptions opts = options(one_site(Position::adapter_weights, Pattern::element, 0.3));
    model::Gpt<LoraSpec, double> c(wd, opts);
    cuda::Gpt<LoraSpec, float> g(w, opts);
    randomize_adapters(c, g);
    c.zero_grad();
    g.zero_grad();
    for (std::uint64_t s : {7u, 8u}) {  // two micro-batches, no zero_grad between them
      c.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, s});
      g.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, s});
      c.backward();
      g.backward();
    }
    for (int l = 0; l < tiny().layers; ++l)
      for (int m = 0; m < model::kModulesPerBlock; ++m)
        check_close(
            as_double(g.adapter(l, Module(m))->gradients_host()),
            c.adapter(l, Module(m))->parameters()[0].grad, kF32Tolerance,
            "accumulated d block " + std::to_string(l) + " " + model::module_name(Module(m)));
  }
  SUBCASE("MoS pools: masks on the assembled factors, gradients scattered after") {
    const GptWeights<float> w = make_weights<float>();
    GptWeights<double> wd = to_double(w);
    GptOptions opts = options(one_site(Position::adapter_weights, Pattern::column, 0.3));
    opts.adapter.share.budget_rank = 2;
    opts.adapter.share.private_rank = 1;
    opts.adapter.share.shards = 2;
    model::Gpt<MosSpec, double> c(wd, opts);
    cuda::Gpt<MosSpec, float> g(w, opts);
    REQUIRE(c.shard_plan() != nullptr);
    std::mt19937 rng(17);
    std::uniform_real_distribution<float> u(-0.3f, 0.3f);
    for (int k = 0; k < int(c.shard_plan()->pools.size()); ++k) {
      std::vector<float> v(c.pool_values(k).size());
      for (float& x : v) x = u(rng);
      std::copy(v.begin(), v.end(), c.pool_values(k).begin());
      g.set_pool_values(k, v);
    }
    const Pass pass{true, 3};
    const auto& want = c.forward_logits(data.tokens, data.batch, data.seq, pass);
    check_close(as_double(g.forward_logits(data.tokens, data.batch, data.seq, pass)),
                std::span<const double>(want.data(), std::size_t(want.size())), kF32Tolerance,
                "logits");
    c.zero_grad();
    g.zero_grad();
    c.forward(data.tokens, data.targets, data.batch, data.seq, pass);
    g.forward(data.tokens, data.targets, data.batch, data.seq, pass);
    c.backward();
    g.backward();
    for (int k = 0; k < int(c.shard_plan()->pools.size()); ++k)
      check_close(as_double(g.pool_grad_host(k)), c.pool_grad(k), kF32Tolerance,
                  "pool " + std::to_string(k));
  }
}

TEST_CASE("cuda::Gpt checks the dropout configuration and names conflicts") {
  const GptWeights<float> w = make_weights<float>();
  CHECK(testing::error_of([&] {
          cuda::Gpt<LoraSpec, float> g(
              w, options(one_site(Position::ffn_hidden, Pattern::element, 1.0)));
        }).find("dropout site ffn_hidden: rate 1 outside [0, 1)") != std::string::npos);
  dropout::Config both = dropout::hiddenkey(0.1, 0.1);
  both.backprop_both = true;
  both.sites.push_back({Position::adapter_weights, Pattern::element, 0.1, {}});
  CHECK(testing::error_of([&] {
          cuda::Gpt<LoraSpec, float> g(w, options(both));
        }).find("backprop_both does not combine") != std::string::npos);
  CHECK(testing::error_of([&] {
          cuda::Gpt<DropSpec, float> g(
              w, options(one_site(Position::adapter_input, Pattern::element, 0.1),
                         TrainMode::adapters, 0.1));
        }).find("both drop the adapter input") != std::string::npos);
  cuda::Gpt<LoraSpec, float> g(w,
                               options(one_site(Position::attention_logits, Pattern::column, 0.2)));
  cuda::DeviceBuffer<std::uint8_t> keep(std::size_t(3) * 2 * 11 * 11);
  g.hooks().attention = [&](int, int, int) { return model::AttentionHooks{keep.data()}; };
  const Data data;
  CHECK(testing::error_of([&] {
          g.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 1});
        }).find("both change attention") != std::string::npos);
}
