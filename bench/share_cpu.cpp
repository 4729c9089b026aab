// CPU benchmark of the sharing axis at model level (assembly and scatter happen in model::Gpt):
// one training step (zero_grad + forward + backward, no optimizer) of a GPT-2-style decoder
// whose four linears per block carry LoRA r=8, MoS r=8 (e=2, p=1, l=4), pure sharing r=8 or
// PRoLoRA r=8 (u=0, m=n=2). Each sharing arm is measured side by side with LoRA: every iteration
// runs one LoRA step and one step of the arm, alternately, so load on the machine hits both
// alike; the iteration time reported is the arm's, and `ratio_to_lora` is the median over
// iterations of (arm step / LoRA step). Two more benchmarks time the sharing overhead alone:
// the assembly of every A_i, B_i from the pools (Gpt::sync_shared_factors) and the scatter-add
// of the factor gradients into the pools (share::scatter_pool_grad, as Gpt::backward runs it).
// Run through bench/run_cpu.sh; bench/summarize_cpu.py prints the table of docs/benchmarks.md.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include <loralab/loralab.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using loralab::Pass;
using loralab::model::Gpt;
using loralab::model::GptConfig;
using loralab::model::GptOptions;
using loralab::model::GptWeights;

constexpr int kRank = 8;
using Lora = loralab::Adapter<loralab::Rank<kRank>>;
using Mos = loralab::Adapter<loralab::Rank<kRank>, loralab::MixtureOfShards<>>;
using Pure = loralab::Adapter<loralab::Rank<kRank>, loralab::PureSharing>;
using Pro = loralab::Adapter<loralab::Rank<kRank>, loralab::Prolora<>>;

// 8 blocks, d_model 256, 4 heads, context 64, batch 8 (512 tokens per step), byte vocabulary.
struct Setup {
  GptConfig cfg;
  int batch = 8;
  std::vector<std::int32_t> tokens, targets;
  GptWeights<float> weights;
  Setup() : cfg(make_config()), weights(cfg) {
    weights.init_gpt2(1);
    for (int i = 0; i < batch * cfg.context; ++i) {
      tokens.push_back(std::int32_t((i * 37 + 11) % 256));
      targets.push_back(std::int32_t((i * 53 + 7) % 256));
    }
  }
  static GptConfig make_config() {
    GptConfig c;
    c.layers = 8;
    c.d_model = 256;
    c.heads = 4;
    c.context = 64;
    return c;
  }
};

Setup& setup() {
  static Setup s;
  return s;
}

GptOptions options() {
  GptOptions o;  // all four modules targeted
  o.adapter.alpha = 16;
  o.adapter.seed = 1;
  o.adapter.share.budget_rank = 2;   // MoS e
  o.adapter.share.private_rank = 1;  // MoS p
  o.adapter.share.shards = 4;        // MoS l
  return o;
}

// Trained-looking factors: B = 0 would not change the work, but keeps the numbers honest.
template <class Spec>
void make_nonzero(Gpt<Spec, float>& m) {
  if constexpr (Spec::shares_factors) {
    const auto* plan = m.shard_plan();
    for (std::size_t k = 0; k < plan->pools.size(); ++k)
      for (float& v : m.pool_values(int(k))) v = 0.01f;
  } else {
    for (int l = 0; l < m.config().layers; ++l)
      for (int k = 0; k < loralab::model::kModulesPerBlock; ++k)
        m.adapter(l, loralab::model::Module(k))->B().setConstant(0.01f);
  }
}

template <class Spec>
double step_seconds(Gpt<Spec, float>& m, std::uint64_t step) {
  Setup& s = setup();
  const auto t0 = Clock::now();
  m.zero_grad();
  const double loss = m.forward(s.tokens, s.targets, s.batch, s.cfg.context, Pass{true, step});
  m.backward();
  benchmark::DoNotOptimize(loss);
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

template <class Spec>
void BM_Step(benchmark::State& state) {
  Setup& s = setup();
  Gpt<Lora, float> lora(s.weights, options());
  Gpt<Spec, float> arm(s.weights, options());
  make_nonzero(lora);
  make_nonzero(arm);
  step_seconds(lora, 0);  // warm-up: first-touch allocations of activations
  step_seconds(arm, 0);
  std::vector<double> ratios;
  double arm_total = 0, lora_total = 0;
  std::uint64_t step = 1;
  for (auto _ : state) {
    // Alternate which model goes first, so neither always runs on a warm cache.
    double t_lora = 0, t_arm = 0;
    if (step % 2) {
      t_lora = step_seconds(lora, step);
      t_arm = step_seconds(arm, step);
    } else {
      t_arm = step_seconds(arm, step);
      t_lora = step_seconds(lora, step);
    }
    ++step;
    state.SetIterationTime(t_arm);
    ratios.push_back(t_arm / t_lora);
    arm_total += t_arm;
    lora_total += t_lora;
  }
  state.counters["lora_ms"] = 1e3 * lora_total / double(state.iterations());
  state.counters["ratio_to_lora"] = median(ratios);
  state.counters["ratio_of_means"] = arm_total / lora_total;
  state.counters["trainable"] = double(arm.memory(0).trainable_params);
}

template <class Spec>
void BM_Assemble(benchmark::State& state) {
  Setup& s = setup();
  Gpt<Spec, float> m(s.weights, options());
  make_nonzero(m);
  for (auto _ : state) {
    m.sync_shared_factors();
    benchmark::ClobberMemory();
  }
}

template <class Spec>
void BM_Scatter(benchmark::State& state) {
  Setup& s = setup();
  Gpt<Spec, float> m(s.weights, options());
  make_nonzero(m);
  const auto& plan = *m.shard_plan();
  std::vector<std::vector<float>> grads;
  for (const auto& p : plan.pools) grads.emplace_back(std::size_t(p.size()), 0.0f);
  // Non-zero factor gradients dA [r x in], dB [out x r] per module, as after a backward.
  std::vector<std::vector<float>> dA(plan.tables.size()), dB(plan.tables.size());
  for (std::size_t mod = 0; mod < plan.tables.size(); ++mod) {
    const auto& t = plan.tables[mod];
    dA[mod].assign(std::size_t(plan.rank * t.in), 1e-3f);
    dB[mod].assign(std::size_t(plan.rank * t.out), 1e-3f);
  }
  for (auto _ : state) {
    for (std::size_t k = 0; k < plan.pools.size(); ++k) {
      const bool side_a = plan.pools[k].side == loralab::share::Side::a;
      loralab::share::scatter_pool_grad<float>(plan, int(k), grads[k], [&](int mod) {
        return static_cast<const float*>(side_a ? dA[mod].data() : dB[mod].data());
      });
    }
    benchmark::ClobberMemory();
  }
}

void step_args(benchmark::internal::Benchmark* b) {
  b->Unit(benchmark::kMillisecond)->UseManualTime()->MinTime(3.0);
}
void part_args(benchmark::internal::Benchmark* b) {
  b->Unit(benchmark::kMicrosecond)->UseRealTime()->MinTime(0.5);
}

BENCHMARK(BM_Step<Lora>)->Apply(step_args)->Name("gpt_step/lora_r8");
BENCHMARK(BM_Step<Mos>)->Apply(step_args)->Name("gpt_step/mos_r8_e2_p1_l4");
BENCHMARK(BM_Step<Pure>)->Apply(step_args)->Name("gpt_step/pure_r8");
BENCHMARK(BM_Step<Pro>)->Apply(step_args)->Name("gpt_step/prolora_r8_u0_m2_n2");
BENCHMARK(BM_Assemble<Mos>)->Apply(part_args)->Name("share_assemble/mos_r8_e2_p1_l4");
BENCHMARK(BM_Scatter<Mos>)->Apply(part_args)->Name("share_scatter/mos_r8_e2_p1_l4");

}  // namespace

BENCHMARK_MAIN();
