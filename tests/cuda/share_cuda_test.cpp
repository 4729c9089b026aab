// Sharing schemes on the device (cuda::ShardPools, cuda::Gpt with MoS, pure sharing, PRoLoRA)
// against the host: the gather and the scatter-add bit for bit against share::assemble_factors /
// share::scatter_pool_grad<float> and reproducible run to run; the decoder's logits, loss and
// every pool gradient against model::Gpt in double (fp32: 1e-4 of the largest entry; bf16: the
// tolerances argued in gpt_cuda_test.cpp); a short fine-tune reaching the CPU's loss; checkpoints
// moving between CPU and GPU runs; the memory report.
// Runs only where a GPU is present (tests/cuda/cuda_main.cpp exits 77 otherwise).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "loralab/cuda/gpt.hpp"
#include "loralab/cuda/shard_pools.hpp"
#include "loralab/data/batch.hpp"
#include "loralab/model/gpt.hpp"
#include "loralab/share/shard_plan.hpp"
#include "loralab/train/trainer.hpp"
#include "support/temp_dir.hpp"
#include "support/testing.hpp"

using namespace loralab;
using cuda::bf16;
using model::GptConfig;
using model::GptOptions;
using model::GptWeights;
using model::Module;

namespace {

using MosSpec = Adapter<DynamicRank, MixtureOfShards<>>;
// Ablation: pair dissociation and vector sharding off (B reuses A's draw; whole vectors drawn).
using MosAblSpec = Adapter<DynamicRank, MixtureOfShards<true, false, false, true>>;
using PureSpec = Adapter<DynamicRank, PureSharing>;
using ProloraSpec = Adapter<DynamicRank, Prolora<>>;
using LoraSpec = Adapter<DynamicRank>;

// fp32 against double: as gpt_cuda_test.cpp (fp32 accumulation everywhere, a few roundings per
// layer); the scatter adds at most L uses per pool entry in the CPU's order, nothing more.
constexpr double kF32Tolerance = 1e-4;
// bf16: the activations' roundings, argued in gpt_cuda_test.cpp (kBf16Logits, kBf16Grads). A pool
// gradient sums the factor gradients of the blocks that use it; each carries the same relative
// error, so the sum's error stays within the same fraction of the tensor's largest entry.
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
      targets.push_back(i % 5 == 2 ? -1 : (i * 5 + 1) % 23);
    }
  }
};

template <class T>
float round_to(float x) {
  return cuda::to_float(cuda::from_float<T>(x));
}

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

// r = 3 everywhere. MoS: e = 2, p = 1, l = 2 (with L = 2, each block takes all 4 public shards of
// a pool, so every public row is used by both blocks). PRoLoRA: u = 1, m = n = 2.
GptOptions share_options() {
  GptOptions o;
  o.adapter.rank = 3;
  o.adapter.alpha = 6;
  o.adapter.seed = testing::kSeed;
  o.adapter.share.budget_rank = 2;
  o.adapter.share.private_rank = 1;
  o.adapter.share.shards = 2;
  o.adapter.share.unshared_rank = 1;
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

// Bitwise equality of two float vectors (NaN-safe, -0 != +0), with the first difference.
void check_bitwise(const std::vector<float>& got, const std::vector<float>& want,
                   const std::string& what) {
  REQUIRE(got.size() == want.size());
  std::size_t first = got.size();
  for (std::size_t i = 0; i < got.size() && first == got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) first = i;
  const bool same = first == got.size();
  INFO(what << ": first difference at " << first << " of " << got.size() << " (got "
            << (same ? 0.0f : got[first]) << ", want " << (same ? 0.0f : want[first]) << ")");
  CHECK(same);
}

// The same plan on both sides: same pools (names, shapes) and the same tables.
void check_same_plan(const share::ShardPlan& c, const share::ShardPlan& g) {
  REQUIRE(c.pools.size() == g.pools.size());
  for (std::size_t k = 0; k < c.pools.size(); ++k) {
    CHECK(c.pools[k].name == g.pools[k].name);
    CHECK(c.pools[k].rows == g.pools[k].rows);
    CHECK(c.pools[k].row_length == g.pools[k].row_length);
  }
  REQUIRE(c.tables.size() == g.tables.size());
  for (std::size_t m = 0; m < c.tables.size(); ++m) {
    CHECK(c.tables[m].a == g.tables[m].a);
    CHECK(c.tables[m].b == g.tables[m].b);
  }
}

// Random pool values (B-pools too, so every pool gets a gradient), rounded to T (the device
// multiplies with the bf16 copy), the same on both models.
template <class Spec, class T>
void randomize_pools(model::Gpt<Spec, double>& c, cuda::Gpt<Spec, T>& g) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-0.3f, 0.3f);
  const share::ShardPlan& plan = *g.shard_plan();
  for (std::size_t k = 0; k < plan.pools.size(); ++k) {
    std::vector<float> v(std::size_t(plan.pools[k].size()));
    for (float& x : v) x = round_to<T>(u(rng));
    g.set_pool_values(int(k), v);
    auto cv = c.pool_values(int(k));
    std::copy(v.begin(), v.end(), cv.begin());
  }
}

// Logits, loss, the assembled factors and every pool gradient after one forward/backward.
template <class Spec, class T>
void compare_share() {
  const bool f32 = std::is_same_v<T, float>;
  const double tol_out = f32 ? kF32Tolerance : kBf16Logits;
  const double tol_grad = f32 ? kF32Tolerance : kBf16Grads;
  const GptWeights<float> w = make_weights<T>();
  GptWeights<double> wd = to_double(w);
  model::Gpt<Spec, double> c(wd, share_options());
  cuda::Gpt<Spec, T> g(w, share_options());
  REQUIRE(c.shard_plan());
  REQUIRE(g.shard_plan());
  const share::ShardPlan& plan = *g.shard_plan();
  check_same_plan(*c.shard_plan(), plan);

  // Initial pools: the CPU's values (drawn in double here, in float on the device).
  for (std::size_t k = 0; k < plan.pools.size(); ++k)
    check_close(as_double(g.pool_values_host(int(k))), c.pool_values(int(k)), 1e-6,
                "initial " + plan.pools[k].name);
  REQUIRE(g.parameters().size() == c.parameters().size());
  REQUIRE(g.parameters().size() == plan.pools.size());

  randomize_pools(c, g);
  const Data data;
  const Pass pass{true, 7};
  const auto& logits_c = c.forward_logits(data.tokens, data.batch, data.seq, pass);
  const std::vector<float> logits_g = g.forward_logits(data.tokens, data.batch, data.seq, pass);
  check_close(as_double(logits_g),
              std::span<const double>(logits_c.data(), std::size_t(logits_c.size())), tol_out,
              "logits");

  // The gather is a copy: the device's assembled factors are the CPU's exactly.
  for (int l = 0; l < tiny().layers; ++l)
    for (int m = 0; m < model::kModulesPerBlock; ++m) {
      auto* ga = g.adapter(l, Module(m));
      auto* ca = c.adapter(l, Module(m));
      REQUIRE(ga != nullptr);
      const std::vector<float> got = ga->parameters_host();
      std::vector<float> want(ca->A().data(), ca->A().data() + ca->A().size());
      want.insert(want.end(), ca->B().data(), ca->B().data() + ca->B().size());
      check_bitwise(
          got, want,
          "assembled A, B of block " + std::to_string(l) + " " + model::module_name(Module(m)));
    }

  c.zero_grad();
  g.zero_grad();
  const double loss_c = c.forward(data.tokens, data.targets, data.batch, data.seq, pass);
  const double loss_g = g.forward(data.tokens, data.targets, data.batch, data.seq, pass);
  INFO("loss cpu " << loss_c << " cuda " << loss_g);
  CHECK(std::abs(loss_g - loss_c) <= tol_out * std::abs(loss_c));
  c.backward();
  g.backward();
  for (std::size_t k = 0; k < plan.pools.size(); ++k) {
    const std::vector<float> grad = g.pool_grad_host(int(k));
    bool nonzero = false;
    for (float x : grad) nonzero |= x != 0.0f;
    CHECK(nonzero);
    check_close(as_double(grad), c.pool_grad(int(k)), tol_grad, "d " + plan.pools[k].name);
  }
  // The adapters' gradients were moved into the pools, as on the CPU.
  for (int l = 0; l < tiny().layers; ++l)
    for (int m = 0; m < model::kModulesPerBlock; ++m)
      for (float x : g.adapter(l, Module(m))->gradients_host()) REQUIRE(x == 0.0f);
}

}  // namespace

TEST_CASE_TEMPLATE("cuda::Gpt matches the CPU decoder under sharing policies", T, float, bf16) {
  SUBCASE("MoS, every strategy on") {
    compare_share<MosSpec, T>();
  }
  SUBCASE("MoS without pair dissociation and vector sharding") {
    compare_share<MosAblSpec, T>();
  }
  SUBCASE("pure sharing") {
    compare_share<PureSpec, T>();
  }
  SUBCASE("PRoLoRA") {
    compare_share<ProloraSpec, T>();
  }
}

namespace {

// Four projection types of a small block (as the model's qkv, attn_proj, fc, proj), 3 blocks.
std::vector<share::TypeShape> plan_types() {
  return {{0, "c_attn", 16, 48},
          {1, "attn.c_proj", 16, 16},
          {2, "c_fc", 16, 64},
          {3, "mlp.c_proj", 64, 16}};
}

// Gather and scatter of `plan` on the device against the host functions, bit for bit.
void check_plan_on_device(const share::ShardPlan& plan) {
  const int r = plan.rank;
  const std::size_t P = plan.pools.size(), M = plan.tables.size();
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto random = [&](std::size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = u(rng);
    return v;
  };

  std::vector<std::vector<float>> pool_v, pool_g;
  std::vector<cuda::DeviceBuffer<float>> pool_vd, pool_gd;
  std::vector<cuda::ShardPoolBuffers> pools;
  for (std::size_t k = 0; k < P; ++k) {
    pool_v.push_back(random(std::size_t(plan.pools[k].size())));
    pool_g.push_back(random(std::size_t(plan.pools[k].size())));  // scatter adds to what is there
    pool_vd.push_back(cuda::DeviceBuffer<float>::from_host(pool_v.back()));
    pool_gd.push_back(cuda::DeviceBuffer<float>::from_host(pool_g.back()));
    pools.push_back({pool_vd.back().data(), pool_gd.back().data()});
  }
  std::vector<std::vector<float>> fgrad(M);  // dA then dB per active module
  std::vector<cuda::DeviceBuffer<float>> factors_d(M), fgrad_d(M);
  std::vector<cuda::DeviceBuffer<bf16>> shadow_d(M);
  std::vector<cuda::ShardFactors> modules(M);
  for (std::size_t m = 0; m < M; ++m) {
    const share::Table& t = plan.tables[m];
    if (!t.active()) continue;
    const std::size_t n = std::size_t(r) * std::size_t(t.in + t.out);
    fgrad[m] = random(n);
    factors_d[m] = cuda::DeviceBuffer<float>(n);
    shadow_d[m] = cuda::DeviceBuffer<bf16>(n);
    fgrad_d[m] = cuda::DeviceBuffer<float>::from_host(fgrad[m]);
    modules[m] = {factors_d[m].data(), shadow_d[m].data(), fgrad_d[m].data()};
  }
  cuda::ShardPools sp(plan);
  sp.bind(pools, modules);

  // Gather: every module in one launch, then module by module through the unbound call.
  sp.assemble();
  for (std::size_t m = 0; m < M; ++m) {
    const share::Table& t = plan.tables[m];
    if (!t.active()) continue;
    const std::size_t a_size = std::size_t(r) * std::size_t(t.in);
    std::vector<float> want(std::size_t(r) * std::size_t(t.in + t.out));
    share::assemble_factors<float>(plan, int(m), pool_v[std::size_t(t.pool_a)],
                                   pool_v[std::size_t(t.pool_b)], want.data(),
                                   want.data() + a_size);
    check_bitwise(factors_d[m].to_host(), want, "assembled factors of table " + std::to_string(m));
    const std::vector<bf16> copy = shadow_d[m].to_host();
    std::vector<float> copy_f(copy.size()), want_copy(want.size());
    for (std::size_t i = 0; i < copy.size(); ++i) {
      copy_f[i] = cuda::to_float(copy[i]);
      want_copy[i] = round_to<bf16>(want[i]);
    }
    check_bitwise(copy_f, want_copy, "bf16 copy of table " + std::to_string(m));
    cuda::DeviceBuffer<float> one(want.size());
    sp.assemble(int(m), pool_vd[std::size_t(t.pool_a)].data(),
                pool_vd[std::size_t(t.pool_b)].data(), one.data(), one.data() + a_size);
    check_bitwise(one.to_host(), want, "one-module gather of table " + std::to_string(m));
  }

  // Scatter: the host order, bit for bit; twice from the same start gives the same bits.
  std::vector<std::vector<float>> want_g = pool_g;
  for (std::size_t k = 0; k < P; ++k) {
    const bool side_a = plan.pools[k].side == share::Side::a;
    share::scatter_pool_grad<float>(plan, int(k), want_g[k], [&](int m) {
      const share::Table& t = plan.tables[std::size_t(m)];
      return fgrad[std::size_t(m)].data() + (side_a ? 0 : std::size_t(r) * std::size_t(t.in));
    });
  }
  for (int run = 0; run < 2; ++run) {
    for (std::size_t k = 0; k < P; ++k) pool_gd[k].upload(pool_g[k]);
    sp.scatter();
    for (std::size_t k = 0; k < P; ++k)
      check_bitwise(pool_gd[k].to_host(), want_g[k],
                    "scatter into " + plan.pools[k].name + ", run " + std::to_string(run));
  }
  for (std::size_t k = 0; k < P; ++k) {  // the unbound call, pool by pool
    const bool side_a = plan.pools[k].side == share::Side::a;
    std::vector<const float*> ptrs(M, nullptr);
    for (std::size_t m = 0; m < M; ++m)
      if (plan.tables[m].active())
        ptrs[m] =
            fgrad_d[m].data() + (side_a ? 0 : std::size_t(r) * std::size_t(plan.tables[m].in));
    pool_gd[k].upload(pool_g[k]);
    sp.scatter(int(k), pool_gd[k].data(), ptrs);
    check_bitwise(pool_gd[k].to_host(), want_g[k], "one-pool scatter into " + plan.pools[k].name);
  }
  CHECK(sp.bytes() >= plan.index_entries() * std::int64_t(sizeof(std::int32_t)));
}

}  // namespace

TEST_CASE("cuda::ShardPools: gather and scatter equal the host plan's bit for bit") {
  const auto types = plan_types();
  ShareConfig cfg;
  cfg.budget_rank = 2;
  cfg.private_rank = 1;
  cfg.shards = 2;
  const int layers = 3, rank = 3;
  SUBCASE("MoS, per-type pools") {
    check_plan_on_device(share::make_shard_plan(MixtureOfShards<>::scheme, cfg, rank, layers, 4,
                                                types, testing::kSeed));
  }
  SUBCASE("MoS, one global pool (types use different shard counts)") {
    cfg.global_pool = true;
    check_plan_on_device(share::make_shard_plan(MixtureOfShards<>::scheme, cfg, rank, layers, 4,
                                                types, testing::kSeed));
  }
  SUBCASE("MoS ablation") {
    check_plan_on_device(share::make_shard_plan(MixtureOfShards<true, false, false, true>::scheme,
                                                cfg, rank, layers, 4, types, testing::kSeed));
  }
  SUBCASE("pure sharing, with an untargeted type") {
    const std::vector<share::TypeShape> some = {types[0], types[2]};
    check_plan_on_device(
        share::make_shard_plan(PureSharing::scheme, cfg, rank, layers, 4, some, testing::kSeed));
  }
  SUBCASE("PRoLoRA") {
    cfg.unshared_rank = 1;
    check_plan_on_device(
        share::make_shard_plan(Prolora<>::scheme, cfg, rank, layers, 4, types, testing::kSeed));
  }
}

TEST_CASE_TEMPLATE("cuda::Gpt: pool gradients are bitwise reproducible run to run", T, float,
                   bf16) {
  const GptWeights<float> w = make_weights<T>();
  cuda::Gpt<MosSpec, T> g(w, share_options());
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-0.3f, 0.3f);
  const share::ShardPlan& plan = *g.shard_plan();
  for (std::size_t k = 0; k < plan.pools.size(); ++k) {
    std::vector<float> v(std::size_t(plan.pools[k].size()));
    for (float& x : v) x = u(rng);
    g.set_pool_values(int(k), v);
  }
  const Data data;
  std::vector<std::vector<float>> first;
  for (int run = 0; run < 2; ++run) {
    g.zero_grad();
    g.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 3});
    g.backward();
    for (std::size_t k = 0; k < plan.pools.size(); ++k) {
      if (run == 0) {
        first.push_back(g.pool_grad_host(int(k)));
      } else {
        check_bitwise(g.pool_grad_host(int(k)), first[k], "d " + plan.pools[k].name);
      }
    }
  }
  // Gradient accumulation: a second backward without zero_grad doubles every entry exactly.
  g.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 3});
  g.backward();
  for (std::size_t k = 0; k < plan.pools.size(); ++k) {
    std::vector<float> twice = first[k];
    for (float& x : twice) x += x;
    check_bitwise(g.pool_grad_host(int(k)), twice, "accumulated d " + plan.pools[k].name);
  }
}

TEST_CASE("cuda::Gpt under sharing: zero B pools give LoRA-at-init's logits; memory report") {
  const GptWeights<float> w = make_weights<float>();
  const Data data;
  cuda::Gpt<MosSpec, float> mos(w, share_options());
  cuda::Gpt<LoraSpec, float> lora(w, share_options());
  // B = 0 on both: the low-rank term adds exact zeros on the same base path.
  CHECK(mos.forward_logits(data.tokens, data.batch, data.seq, Pass{false, 0}) ==
        lora.forward_logits(data.tokens, data.batch, data.seq, Pass{false, 0}));

  GptWeights<float> wc = w;
  model::Gpt<MosSpec, float> cpu(wc, share_options());
  const MemoryReport m = mos.memory(33), mc = cpu.memory(33);
  CHECK(m.trainable_params == mc.trainable_params);
  CHECK(m.trainable_params == mos.shard_plan()->trainable_params());
  CHECK(m.parameter_bytes == 4 * m.trainable_params);
  CHECK(m.optimizer_state_bytes == 8 * m.trainable_params);
  CHECK(m.index_bytes >= mc.index_bytes);
  CHECK(m.index_bytes == mos.shard_pools()->bytes());
  CHECK(m.transient_bytes > 0);
  std::int64_t params = 0;
  for (const auto& p : mos.parameters()) params += std::int64_t(p.size);
  CHECK(params == m.trainable_params);
}

namespace {

// A learnable toy stream: every row counts up by a row-specific stride (as gpt_cuda_test.cpp).
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
  cfg.steps = 20;
  cfg.lr = 2e-2;
  cfg.warmup = 2;
  cfg.eval_every = 20;
  cfg.progress = false;
  return cfg;
}

}  // namespace

TEST_CASE_TEMPLATE("a short MoS fine-tune on the device reaches the CPU's loss", T, float, bf16) {
  const GptWeights<float> w = make_weights<T>();
  GptWeights<float> wc = w;
  model::Gpt<MosSpec, float> c(wc, share_options());
  cuda::Gpt<MosSpec, T> g(w, share_options());
  const train::TrainConfig cfg = toy_config();
  const data::Batch probe = toy_batch(1000);
  const double start = c.forward(probe.tokens, probe.targets, 4, 10, Pass{false, 0});
  const double cpu_loss = fine_tune(c, cfg).curve.back().eval.loss;
  const double gpu_loss = fine_tune(g, cfg).curve.back().eval.loss;
  INFO("start " << start << ", cpu " << cpu_loss << ", cuda " << gpu_loss);
  CHECK(cpu_loss < 0.97 * start);  // it learned (the CPU reaches about 0.95 of the start)
  CHECK(std::abs(gpu_loss - cpu_loss) <= (std::is_same_v<T, float> ? 1e-2 : 5e-2) * cpu_loss);
}

TEST_CASE("MoS checkpoints move between CPU and GPU runs bit for bit") {
  const GptWeights<float> w = make_weights<float>();
  testing::TempDir dir;
  train::TrainConfig cfg = toy_config();
  cfg.steps = 6;
  cfg.stop_after = 3;
  cfg.checkpoint = dir.path / "mos.safetensors";
  cuda::Gpt<MosSpec, float> g(w, share_options());
  train::Trainer<cuda::Gpt<MosSpec, float>> tg(
      g, cfg, [](std::int64_t s, int) { return toy_batch(s); }, [] { return train::EvalResult{}; });
  tg.run();
  GptWeights<float> wc = w;
  model::Gpt<MosSpec, float> c(wc, share_options());
  train::Trainer<model::Gpt<MosSpec, float>> tc(
      c, cfg, [](std::int64_t s, int) { return toy_batch(s); }, [] { return train::EvalResult{}; });
  CHECK(tc.load_checkpoint(cfg.checkpoint) == 3);
  REQUIRE(tc.optimizer().tensors() == tg.optimizer().tensors());
  for (std::size_t k = 0; k < tg.optimizer().tensors(); ++k) {
    CHECK(tc.optimizer().values(k) == tg.optimizer().values(k));
    CHECK(tc.optimizer().first_moment(k) == tg.optimizer().first_moment(k));
    CHECK(tc.optimizer().second_moment(k) == tg.optimizer().second_moment(k));
  }
  // The same pools in the same order: both models now compute the same loss.
  const data::Batch probe = toy_batch(1000);
  const double lc = c.forward(probe.tokens, probe.targets, 4, 10, Pass{false, 0});
  const double lg = g.forward(probe.tokens, probe.targets, 4, 10, Pass{false, 0});
  CHECK(std::abs(lg - lc) <= kF32Tolerance * std::abs(lc));
}
