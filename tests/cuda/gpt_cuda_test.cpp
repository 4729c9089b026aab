// CPU vs CUDA for the whole decoder (cuda::Gpt against model::Gpt in double): logits, loss and
// every trainable gradient of a tiny model, for LoRA, LoRA-SP, LoRA-FA, adapter input dropout,
// full fine-tuning, frozen blocks, the attention and MLP hooks, and activation recomputation;
// in fp32 (1e-4 of the largest entry) and bf16 (see kBf16*). A short fine-tune on the device
// reaches the CPU's loss; checkpoints written on one backend load bit for bit on the other.
// Runs only where a GPU is present (tests/cuda/cuda_main.cpp exits 77 otherwise).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <span>
#include <vector>

#include "loralab/cuda/gpt.hpp"
#include "loralab/data/batch.hpp"
#include "loralab/model/gpt.hpp"
#include "loralab/train/trainer.hpp"
#include "support/temp_dir.hpp"
#include "support/testing.hpp"

using namespace loralab;
using cuda::bf16;
using model::GptConfig;
using model::GptOptions;
using model::GptWeights;
using model::Module;
using model::TrainMode;

namespace {

using LoraSpec = Adapter<DynamicRank>;
using SpSpec = Adapter<DynamicRank, RandomMask<50>>;
using FaSpec = Adapter<DynamicRank, FreezeA>;
using DropSpec = Adapter<DynamicRank, InputDropout>;

// fp32 on the device against double on the CPU: every GEMM and reduction accumulates in fp32
// (no TF32 under CUBLAS_COMPUTE_32F), so the error is a few fp32 roundings per layer, amplified
// by at most the depth (two blocks, the head, the loss): far below 1e-4 of each tensor's scale.
constexpr double kF32Tolerance = 1e-4;
// bf16 keeps 8 significant bits (unit roundoff u = 2^-9). The reference starts from the same
// bf16-rounded weights and adapters, so the error comes from the activations the device rounds
// to bf16: about ten roundings per block on the forward path (LayerNorm, qkv, attention weights,
// attention output, projections, GELU, residuals) and as many on the backward path. Independent
// roundings grow like sqrt(k) u ~ 1e-2 over the two blocks and the head; we allow 3e-2 of each
// tensor's largest entry for logits and 6e-2 for gradients (two passes of rounding).
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

// GPT-2 init plus a perturbation of every entry (biases and LayerNorm parameters non-trivial),
// rounded to T so the CPU reference computes with exactly the device's weights.
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

GptOptions adapter_options(double dropout = 0.0) {
  GptOptions o;
  o.adapter.rank = 3;
  o.adapter.alpha = 6;
  o.adapter.seed = testing::kSeed;
  o.adapter.dropout = dropout;
  return o;
}

// Random A and B (B = 0 at init would hide every dA), the same on both backends. For bf16 the
// values are rounded first: the device multiplies with the bf16 copy.
template <class Spec, class T>
void randomize_adapters(model::Gpt<Spec, double>& c, cuda::Gpt<Spec, T>& g) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-0.3f, 0.3f);
  for (int l = 0; l < tiny().layers; ++l)
    for (int m = 0; m < model::kModulesPerBlock; ++m) {
      auto* ga = g.adapter(l, Module(m));
      auto* ca = c.adapter(l, Module(m));
      REQUIRE((ga == nullptr) == (ca == nullptr));
      if (!ga) continue;
      std::vector<float> host = ga->parameters_host();  // the CPU's init, bit for bit
      const std::size_t a_size = std::size_t(ga->rank()) * std::size_t(ga->in_features());
      for (std::size_t i = 0; i < host.size(); ++i)
        host[i] = round_to<T>((Spec::freeze::freezes_a && i < a_size) ? host[i] : u(rng));
      ga->set_parameters(std::span<const float>(host).first(a_size),
                         std::span<const float>(host).subspan(a_size));
      for (Eigen::Index i = 0; i < ca->A().size(); ++i) ca->A().data()[i] = host[std::size_t(i)];
      for (Eigen::Index i = 0; i < ca->B().size(); ++i)
        ca->B().data()[i] = host[a_size + std::size_t(i)];
    }
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

std::vector<float> device_to_host(const float* p, std::size_t n) {
  std::vector<float> host(n);
  LORALAB_CUDA_CHECK(cudaMemcpy(host.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost));
  return host;
}

// Compares logits, the loss and every gradient that trains after one forward/backward.
template <class Spec, class T>
void compare(model::Gpt<Spec, double>& c, cuda::Gpt<Spec, T>& g, const Data& data, Pass pass) {
  const bool f32 = std::is_same_v<T, float>;
  const double tol_out = f32 ? kF32Tolerance : kBf16Logits;
  const double tol_grad = f32 ? kF32Tolerance : kBf16Grads;
  const auto& logits_c = c.forward_logits(data.tokens, data.batch, data.seq, pass);
  const std::vector<float> logits_g = g.forward_logits(data.tokens, data.batch, data.seq, pass);
  check_close(as_double(logits_g),
              std::span<const double>(logits_c.data(), std::size_t(logits_c.size())), tol_out,
              "logits");

  c.zero_grad();
  g.zero_grad();
  const double loss_c = c.forward(data.tokens, data.targets, data.batch, data.seq, pass);
  const double loss_g = g.forward(data.tokens, data.targets, data.batch, data.seq, pass);
  INFO("loss cpu " << loss_c << " cuda " << loss_g);
  CHECK(std::abs(loss_g - loss_c) <= tol_out * std::abs(loss_c));
  c.backward();
  g.backward();

  auto pc = c.parameters();
  auto pg = g.parameters();
  REQUIRE(pc.size() == pg.size());
  if (c.options().mode == TrainMode::full) {  // one tensor per gpt_layout() slot on both sides
    const std::vector<model::TensorSlot> layout = model::gpt_layout(tiny());
    REQUIRE(pg.size() == layout.size());
    for (std::size_t k = 0; k < layout.size(); ++k) {
      CAPTURE(layout[k].name);
      REQUIRE(pg[k].size == pc[k].grad.size());
      CHECK(pg[k].block == pc[k].block);  // the same layer-sampling and GaLore metadata
      CHECK(pg[k].rows == pc[k].rows);
      CHECK(pg[k].cols == pc[k].cols);
      CHECK(pg[k].projectable == pc[k].projectable);
      const std::vector<float> grad = device_to_host(pg[k].grad, pg[k].size);
      check_close(as_double(grad), pc[k].grad, tol_grad, "d " + layout[k].name);
    }
    return;
  }
  for (int l = 0; l < tiny().layers; ++l)
    for (int m = 0; m < model::kModulesPerBlock; ++m) {
      auto* ga = g.adapter(l, Module(m));
      if (!ga) continue;
      const std::string what = "block " + std::to_string(l) + " " + model::module_name(Module(m));
      const std::vector<float> grad = ga->gradients_host();                 // dA then dB
      const auto cpu_grad = c.adapter(l, Module(m))->parameters()[0].grad;  // dA dB, or dB
      const std::size_t skip = grad.size() - cpu_grad.size();
      for (std::size_t i = 0; i < skip; ++i) CHECK(grad[i] == 0.0f);  // freeze-A: no dA at all
      if (!c.block_trainable(l)) {  // a frozen block: exactly zero on both sides
        for (float x : grad) CHECK(x == 0.0f);
        for (double x : cpu_grad) CHECK(x == 0.0);
        continue;
      }
      check_close(as_double(std::span<const float>(grad).subspan(skip)), cpu_grad, tol_grad,
                  "d " + what);
      if constexpr (Spec::freeze::has_mask) {  // frozen entries: exactly 0
        const std::vector<std::uint8_t> mask = ga->mask_host();
        for (std::size_t i = 0; i < mask.size(); ++i)
          if (!mask[i]) CHECK(grad[i] == 0.0f);
      }
    }
}

template <class Spec, class T>
void compare_adapters(double dropout = 0.0, bool recompute = false) {
  CAPTURE(dropout);
  CAPTURE(recompute);
  const GptWeights<float> w = make_weights<T>();
  GptWeights<double> wd = to_double(w);
  const GptOptions opts = adapter_options(dropout);
  model::Gpt<Spec, double> c(wd, opts);
  cuda::GptDeviceOptions dev;
  dev.recompute = recompute;
  cuda::Gpt<Spec, T> g(w, opts, dev);
  randomize_adapters(c, g);
  compare(c, g, Data{}, Pass{true, 7});
}

}  // namespace

TEST_CASE_TEMPLATE("cuda::Gpt matches the CPU decoder with adapters", T, float, bf16) {
  SUBCASE("LoRA") {
    compare_adapters<LoraSpec, T>();
  }
  SUBCASE("LoRA-SP") {
    compare_adapters<SpSpec, T>();
  }
  SUBCASE("LoRA-FA") {
    compare_adapters<FaSpec, T>();
  }
  SUBCASE("input dropout: the same Philox masks") {
    compare_adapters<DropSpec, T>(0.25);
  }
  SUBCASE("recompute") {
    compare_adapters<DropSpec, T>(0.25, true);
  }
}

TEST_CASE_TEMPLATE("cuda::Gpt matches the CPU decoder in full fine-tuning", T, float, bf16) {
  const GptWeights<float> w = make_weights<T>();
  GptWeights<double> wd = to_double(w);
  GptOptions opts;
  opts.mode = TrainMode::full;
  model::Gpt<LoraSpec, double> c(wd, opts);
  cuda::Gpt<LoraSpec, T> g(w, opts);
  compare(c, g, Data{}, Pass{true, 1});
}

TEST_CASE("cuda::Gpt: a frozen block gets no gradient and still passes one on") {
  const GptWeights<float> w = make_weights<float>();
  GptWeights<double> wd = to_double(w);
  model::Gpt<LoraSpec, double> c(wd, adapter_options());
  cuda::Gpt<LoraSpec, float> g(w, adapter_options());
  randomize_adapters(c, g);
  c.set_block_trainable(0, false);
  g.set_block_trainable(0, false);
  compare(c, g, Data{}, Pass{true, 2});
}

TEST_CASE("cuda::Gpt: attention and MLP hooks act as on the CPU") {
  const GptWeights<float> w = make_weights<float>();
  GptWeights<double> wd = to_double(w);
  const Data data;
  const GptConfig cfg = tiny();
  const std::size_t rows = std::size_t(data.batch) * cfg.heads * data.seq;
  // Layer 1 only: random DropKey keeps (one query row with every allowed key dropped) and
  // DropAttention scales.
  std::vector<std::uint8_t> keep(rows * data.seq);
  std::vector<float> scale(rows * data.seq);
  std::mt19937 rng(3);
  for (std::size_t i = 0; i < keep.size(); ++i) {
    keep[i] = (rng() % 4) != 0;
    scale[i] = (rng() % 5) == 0 ? 0.0f : 1.25f;
  }
  for (int j = 0; j <= 4; ++j) keep[4 * std::size_t(data.seq) + std::size_t(j)] = 0;  // row 4
  auto keep_d = cuda::DeviceBuffer<std::uint8_t>::from_host(keep);
  auto scale_d = cuda::DeviceBuffer<float>::from_host(scale);

  for (int variant = 0; variant < 2; ++variant) {
    CAPTURE(variant);
    model::Gpt<LoraSpec, double> c(wd, adapter_options());
    cuda::GptDeviceOptions dev;
    dev.recompute = variant == 1;  // the MLP hook runs again when the hidden is recomputed
    cuda::Gpt<LoraSpec, float> g(w, adapter_options(), dev);
    randomize_adapters(c, g);
    c.hooks().attention = [&](int layer, int, int) {
      return layer == 1 ? model::AttentionHooks{keep.data(), scale.data()}
                        : model::AttentionHooks{};
    };
    g.hooks().attention = [&](int layer, int, int) {
      return layer == 1 ? model::AttentionHooks{keep_d.data(), scale_d.data()}
                        : model::AttentionHooks{};
    };
    // Doubling the hidden (and its gradient) in block 0: a deterministic stand-in for a mask.
    c.hooks().mlp_hidden_forward = [](int layer, cpu::MatrixR<double>& h) {
      if (layer == 0) h *= 2.0;
    };
    c.hooks().mlp_hidden_backward = [](int layer, cpu::MatrixR<double>& dh) {
      if (layer == 0) dh *= 2.0;
    };
    auto twice = [](int layer, float* h, std::int64_t r, std::int64_t k, cudaStream_t s) {
      if (layer == 0) cuda::layers::accumulate<float>(h, h, r * k, s);
    };
    g.hooks().mlp_hidden_forward = twice;
    g.hooks().mlp_hidden_backward = twice;
    compare(c, g, data, Pass{true, 4});
  }
}

TEST_CASE("cuda::Gpt: recomputation gives the stored-activation gradients") {
  const GptWeights<float> w = make_weights<float>();
  const Data data;
  cuda::GptDeviceOptions keep_all, recompute;
  recompute.recompute = true;
  cuda::Gpt<LoraSpec, float> a(w, adapter_options(), keep_all);
  cuda::Gpt<LoraSpec, float> b(w, adapter_options(), recompute);
  std::vector<std::vector<float>> ga, gb;
  for (auto* m : {&a, &b}) {
    m->zero_grad();
    m->forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 1});
    m->backward();
  }
  for (int l = 0; l < tiny().layers; ++l)
    for (int m = 0; m < model::kModulesPerBlock; ++m) {
      const auto x = a.adapter(l, Module(m))->gradients_host();
      const auto y = b.adapter(l, Module(m))->gradients_host();
      check_close(as_double(y), as_double(x), 1e-6, "recomputed gradient");
    }
  CHECK(b.memory(64).activation_bytes < a.memory(64).activation_bytes);
  CHECK_THROWS_WITH_AS(b.linear_input(0, Module::fc), doctest::Contains("recompute"), Error);
}

TEST_CASE("cuda::Gpt: greedy generation and the memory report") {
  const GptWeights<float> w = make_weights<float>();
  GptWeights<float> wc = w;
  model::Gpt<LoraSpec, float> c(wc, adapter_options());
  cuda::reset_device_memory_peak();
  const std::int64_t before = cuda::device_memory().current;
  cuda::Gpt<LoraSpec, float> g(w, adapter_options());
  CHECK(cuda::device_memory().current - before >= std::int64_t(w.flat().size() * sizeof(float)));
  const std::vector<std::int32_t> prompt = {1, 5, 9, 2};
  CHECK(g.generate(prompt, 6, 22) == c.generate(prompt, 6, 22));
  const MemoryReport m = g.memory(33);
  CHECK(m.trainable_params == c.memory(33).trainable_params);
  CHECK(m.activation_bytes > 0);
  CHECK(cuda::device_memory().peak >= cuda::device_memory().current);
}

TEST_CASE("cuda::Gpt: bad inputs name the problem") {
  const GptWeights<float> w = make_weights<float>();
  cuda::Gpt<LoraSpec, float> g(w, adapter_options());
  const Data data;
  std::vector<std::int32_t> bad = data.tokens;
  bad[3] = 99;
  CHECK(testing::error_of([&] {
          g.forward(bad, data.targets, data.batch, data.seq);
        }).find("[loralab.data] token 99") != std::string::npos);
  std::vector<std::int32_t> long_tokens(13, 1);
  CHECK(testing::error_of([&] {
          g.forward(long_tokens, long_tokens, 1, 13);
        }).find("[loralab.shape]") != std::string::npos);
  CHECK(testing::error_of([&] { g.backward(); }).find("[loralab.state]") != std::string::npos);
}

namespace {

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

train::TrainConfig toy_config() {
  train::TrainConfig cfg;
  cfg.steps = 40;
  cfg.lr = 1e-2;
  cfg.warmup = 4;
  cfg.eval_every = 40;
  cfg.progress = false;
  return cfg;
}

}  // namespace

TEST_CASE_TEMPLATE("a short fine-tune on the device reaches the CPU's loss", T, float, bf16) {
  const GptWeights<float> w = make_weights<T>();
  GptWeights<float> wc = w;
  model::Gpt<LoraSpec, float> c(wc, adapter_options());
  cuda::Gpt<LoraSpec, T> g(w, adapter_options());
  const train::TrainConfig cfg = toy_config();
  const data::Batch probe = toy_batch(1000);
  const double start = c.forward(probe.tokens, probe.targets, 4, 10, Pass{false, 0});
  const double cpu_loss = fine_tune(c, cfg).curve.back().eval.loss;
  const double gpu_loss = fine_tune(g, cfg).curve.back().eval.loss;
  INFO("start " << start << ", cpu " << cpu_loss << ", cuda " << gpu_loss);
  // It learned: the CPU ends at 0.934 of the start on this toy (measured with fp32 and with
  // bf16-rounded weights alike; 2.961 from 3.171). The threshold leaves a margin for other
  // compilers and BLAS orders; the CPU-vs-CUDA comparison below is the real check.
  CHECK(cpu_loss < 0.96 * start);
  // fp32: the same run up to rounding; bf16: within the noise of rounded activations.
  CHECK(std::abs(gpu_loss - cpu_loss) <= (std::is_same_v<T, float> ? 1e-2 : 5e-2) * cpu_loss);
}

TEST_CASE("checkpoints move between CPU and GPU runs bit for bit") {
  const GptWeights<float> w = make_weights<float>();
  testing::TempDir dir;
  train::TrainConfig cfg = toy_config();
  cfg.steps = 6;
  cfg.stop_after = 3;

  SUBCASE("GPU writes, CPU resumes") {
    cfg.checkpoint = dir.path / "gpu.safetensors";
    cuda::Gpt<SpSpec, float> g(w, adapter_options());
    train::Trainer<cuda::Gpt<SpSpec, float>> tg(
        g, cfg, [](std::int64_t s, int) { return toy_batch(s); },
        [] { return train::EvalResult{}; });
    tg.run();
    GptWeights<float> wc = w;
    model::Gpt<SpSpec, float> c(wc, adapter_options());
    train::Trainer<model::Gpt<SpSpec, float>> tc(
        c, cfg, [](std::int64_t s, int) { return toy_batch(s); },
        [] { return train::EvalResult{}; });
    CHECK(tc.load_checkpoint(cfg.checkpoint) == 3);
    REQUIRE(tc.optimizer().tensors() == tg.optimizer().tensors());
    for (std::size_t k = 0; k < tg.optimizer().tensors(); ++k) {
      CHECK(tc.optimizer().values(k) == tg.optimizer().values(k));
      CHECK(tc.optimizer().first_moment(k) == tg.optimizer().first_moment(k));
      CHECK(tc.optimizer().second_moment(k) == tg.optimizer().second_moment(k));
    }
    CHECK(tc.optimizer().steps() == 3);
    cfg.stop_after = -1;
    train::Trainer<model::Gpt<SpSpec, float>> resume(
        c, cfg, [](std::int64_t s, int) { return toy_batch(s); },
        [] { return train::EvalResult{}; });
    CHECK(resume.run().resumed_from == 3);
  }
  SUBCASE("CPU writes, GPU resumes") {
    cfg.checkpoint = dir.path / "cpu.safetensors";
    GptWeights<float> wc = w;
    model::Gpt<SpSpec, float> c(wc, adapter_options());
    train::Trainer<model::Gpt<SpSpec, float>> tc(
        c, cfg, [](std::int64_t s, int) { return toy_batch(s); },
        [] { return train::EvalResult{}; });
    tc.run();
    cuda::Gpt<SpSpec, bf16> g(w, adapter_options());  // a bf16 run may resume an fp32 one
    train::Trainer<cuda::Gpt<SpSpec, bf16>> tg(
        g, cfg, [](std::int64_t s, int) { return toy_batch(s); },
        [] { return train::EvalResult{}; });
    CHECK(tg.load_checkpoint(cfg.checkpoint) == 3);
    for (std::size_t k = 0; k < tc.optimizer().tensors(); ++k) {
      CHECK(tg.optimizer().values(k) == tc.optimizer().values(k));
      CHECK(tg.optimizer().first_moment(k) == tc.optimizer().first_moment(k));
      CHECK(tg.optimizer().second_moment(k) == tc.optimizer().second_moment(k));
    }
  }
}
