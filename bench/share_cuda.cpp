// bench_share_cuda: the cost of the sharing schemes on the device. Forward + backward time of a
// GPT-2 124M-shaped decoder (12 layers, d 768, 12 heads, vocabulary 50257; short context, 128 by
// default) with MoS, pure sharing and PRoLoRA adapters, each over LoRA's at the same rank r on
// all four projections, measured in the same run and reported as a ratio. The sharing schemes
// differ from LoRA only by the gather of A_i, B_i from the pools before the forward and the
// scatter-add of the factor gradients after the backward (cuda::ShardPools), so the ratio is that
// overhead (ideal: 1.0). bf16 mixed precision by default, --dtype f32 for fp32.
//
// Each timed step: zero_grad, forward (returns the loss, so it synchronizes), backward, then a
// cudaDeviceSynchronize; no optimizer step (--with-step adds the AdamW step, whose cost scales
// with the trainable count, which MoS reduces). The arms are timed in interleaved rounds (LoRA,
// MoS, pure, PRoLoRA, LoRA, ...) on the same batches, `--steps` steps per arm and round after
// `--warmup` untimed steps; each arm reports its median round. gather_us is one
// sync_shared_factors() (every module's A_i, B_i in one launch), averaged over 100 calls.
//
// Output: with --json one JSON line per sharing scheme on stdout and the summary on stderr;
// without, the summary on stdout.
// Exit status: 0, 1 on an error (a JSON line with "error" on stdout), 77 when there is no CUDA
// device.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cuda/error.hpp"
#include "loralab/cuda/gpt.hpp"
#include "loralab/cuda/optimizer.hpp"
#include "loralab/model/options.hpp"
#include "loralab/model/weights.hpp"
#include "loralab/optim/adamw.hpp"

namespace {

using namespace loralab;

struct Options {
  model::GptConfig cfg{
      .vocab_size = 50257, .context = 128, .layers = 12, .heads = 12, .d_model = 768};
  int batch = 8;
  int rank = 16;
  int budget_rank = 4;    // MoS e: MoS trains as many entries as LoRA of rank e
  int private_rank = -1;  // MoS p (-1: the library's default, e/2)
  int shards = 4;         // MoS l
  int unshared_rank = 0;  // PRoLoRA u (m = n = 2)
  int steps = 10;
  int warmup = 3;
  int rounds = 5;
  std::string dtype = "bf16";
  bool with_step = false;
  bool json = false;
  std::uint64_t seed = 1;
};

const char* kUsage =
    "usage: bench_share_cuda [--layers N] [--d-model N] [--heads N] [--context N] [--vocab N]\n"
    "                        [--batch N] [--rank N] [--budget-rank N] [--private-rank N]\n"
    "                        [--shards N] [--unshared-rank N] [--steps N] [--warmup N]\n"
    "                        [--rounds N] [--dtype bf16|f32] [--with-step] [--seed N] [--json]\n";

long parse_int(std::string_view flag, const char* text) {
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  LORALAB_CHECK(end != text && *end == '\0', "[loralab.config] ", flag,
                ": expected an integer, got '", text, "'");
  return v;
}

void parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> const char* {
      LORALAB_CHECK(i + 1 < argc, "[loralab.config] ", a, " needs a value");
      return argv[++i];
    };
    auto integer = [&] { return int(parse_int(a, value())); };
    if (a == "--layers")
      o.cfg.layers = integer();
    else if (a == "--d-model")
      o.cfg.d_model = integer();
    else if (a == "--heads")
      o.cfg.heads = integer();
    else if (a == "--context")
      o.cfg.context = integer();
    else if (a == "--vocab")
      o.cfg.vocab_size = integer();
    else if (a == "--batch")
      o.batch = integer();
    else if (a == "--rank")
      o.rank = integer();
    else if (a == "--budget-rank")
      o.budget_rank = integer();
    else if (a == "--private-rank")
      o.private_rank = integer();
    else if (a == "--shards")
      o.shards = integer();
    else if (a == "--unshared-rank")
      o.unshared_rank = integer();
    else if (a == "--steps")
      o.steps = integer();
    else if (a == "--warmup")
      o.warmup = integer();
    else if (a == "--rounds")
      o.rounds = integer();
    else if (a == "--dtype")
      o.dtype = value();
    else if (a == "--seed")
      o.seed = std::uint64_t(parse_int(a, value()));
    else if (a == "--with-step")
      o.with_step = true;
    else if (a == "--json")
      o.json = true;
    else if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      LORALAB_FAIL("[loralab.config] unknown argument '", a, "'\n", kUsage);
    }
  }
  o.cfg.validate();
  LORALAB_CHECK(o.dtype == "bf16" || o.dtype == "f32", "[loralab.config] --dtype ", o.dtype,
                ": expected bf16 or f32");
  LORALAB_CHECK(o.batch > 0 && o.rank > 0 && o.steps > 0 && o.warmup >= 0 && o.rounds > 0,
                "[loralab.config] --batch, --rank, --steps, --rounds must be > 0, --warmup >= 0");
}

struct Batch {
  std::vector<std::int32_t> tokens, targets;
};

// Random token ids [batch x context] and next-token targets (-1 at a row's end).
std::vector<Batch> make_batches(const Options& o, int count) {
  const int B = o.batch, T = o.cfg.context;
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<std::int32_t> token(0, o.cfg.vocab_size - 1);
  std::vector<Batch> out(static_cast<std::size_t>(count));
  for (Batch& b : out) {
    b.tokens.resize(std::size_t(B) * std::size_t(T));
    b.targets.resize(b.tokens.size());
    for (auto& t : b.tokens) t = token(rng);
    for (int r = 0; r < B; ++r)
      for (int i = 0; i < T; ++i) {
        const std::size_t k = std::size_t(r) * std::size_t(T) + std::size_t(i);
        b.targets[k] = i + 1 < T ? b.tokens[k + 1] : -1;
      }
  }
  return out;
}

// One arm: a model, its optimizer (only stepped with --with-step), and its timings.
struct Arm {
  std::string name;
  std::function<double(const Batch&, std::int64_t)> step;  // one timed unit; returns the loss
  std::function<double()> gather_us;                       // < 0 for LoRA
  std::int64_t trainable = 0;
  std::vector<double> ms;  // per round: ms per step
  double loss = 0;
};

template <class Spec, class T>
Arm make_arm(const std::string& name, const Options& o, const model::GptWeights<float>& w) {
  model::GptOptions opts;  // adapter mode, all four projections
  opts.adapter.rank = o.rank;
  opts.adapter.alpha = 2.0 * o.rank;
  opts.adapter.seed = o.seed;
  opts.adapter.share.budget_rank = o.budget_rank;
  opts.adapter.share.private_rank = o.private_rank;
  opts.adapter.share.shards = o.shards;
  opts.adapter.share.unshared_rank = o.unshared_rank;
  auto model = std::make_shared<cuda::Gpt<Spec, T>>(w, opts);
  auto opt = std::make_shared<cuda::DeviceOptimizer>(*model, AdamWConfig{.lr = 1e-4});
  Arm arm;
  arm.name = name;
  arm.trainable = model->memory(0).trainable_params;
  const bool with_step = o.with_step;
  const int B = o.batch, L = o.cfg.context;
  arm.step = [model, opt, with_step, B, L](const Batch& b, std::int64_t s) {
    model->zero_grad();
    const double loss = model->forward(b.tokens, b.targets, B, L, Pass{true, std::uint64_t(s)});
    model->backward();
    if (with_step) opt->step(1.0);
    return loss;
  };
  arm.gather_us = [model]() -> double {
    if (!model->shard_plan()) return -1;
    LORALAB_CUDA_CHECK(cudaDeviceSynchronize());
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 100; ++i) model->sync_shared_factors();
    LORALAB_CUDA_CHECK(cudaDeviceSynchronize());
    return 1e6 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 100;
  };
  return arm;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

template <class T>
std::vector<Arm> run(const Options& o) {
  model::GptWeights<float> w(o.cfg);
  w.init_gpt2(o.seed);
  std::vector<Arm> arms;
  arms.push_back(make_arm<Adapter<DynamicRank>, T>("lora", o, w));
  arms.push_back(make_arm<Adapter<DynamicRank, MixtureOfShards<>>, T>("mos", o, w));
  arms.push_back(make_arm<Adapter<DynamicRank, PureSharing>, T>("pure", o, w));
  arms.push_back(make_arm<Adapter<DynamicRank, Prolora<>>, T>("prolora", o, w));
  const std::vector<Batch> batches = make_batches(o, o.steps);
  std::int64_t step = 0;
  for (Arm& a : arms)
    for (int s = 0; s < o.warmup; ++s) a.step(batches[std::size_t(s % o.steps)], step++);
  for (int r = 0; r < o.rounds; ++r)
    for (Arm& a : arms) {
      LORALAB_CUDA_CHECK(cudaDeviceSynchronize());
      const auto t0 = std::chrono::steady_clock::now();
      for (int s = 0; s < o.steps; ++s) a.loss = a.step(batches[std::size_t(s)], s);
      LORALAB_CUDA_CHECK(cudaDeviceSynchronize());
      const double sec =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      a.ms.push_back(1e3 * sec / o.steps);
    }
  return arms;
}

std::string device_name() {
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess)
    return "unknown";
  return prop.name;
}

// Device names and error messages go into JSON strings: keep printable ASCII, drop quotes.
std::string json_safe(std::string_view s) {
  std::string out;
  for (const char c : s) {
    if (c == '"' || c == '\\')
      out += '\'';
    else if (static_cast<unsigned char>(c) < 0x20)
      out += ' ';
    else
      out += c;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    parse(argc, argv, o);
    if (cuda::device_count() == 0) {
      std::printf("{\"impl\": \"loralab\", \"bench\": \"share\", \"error\": \"no CUDA device\"}\n");
      std::fprintf(stderr, "[bench_share_cuda] no CUDA device: nothing was measured\n");
      return 77;
    }
    const std::vector<Arm> arms = o.dtype == "bf16" ? run<cuda::bf16>(o) : run<float>(o);
    const std::string name = json_safe(device_name());
    const double lora_ms = median(arms[0].ms);
    FILE* human = o.json ? stderr : stdout;
    std::fprintf(human,
                 "[bench_share_cuda] %s %s B=%d T=%d L=%d d=%d r=%d (MoS e=%d l=%d), forward + "
                 "backward%s, median of %d rounds x %d steps\n",
                 name.c_str(), o.dtype.c_str(), o.batch, o.cfg.context, o.cfg.layers, o.cfg.d_model,
                 o.rank, o.budget_rank, o.shards, o.with_step ? " + AdamW" : "", o.rounds, o.steps);
    for (const Arm& a : arms) {
      const double ms = median(a.ms);
      const double gather = a.gather_us();
      std::fprintf(human, "  %-8s %8.3f ms/step  ratio %.3f  trainable %lld", a.name.c_str(), ms,
                   ms / lora_ms, static_cast<long long>(a.trainable));
      if (gather >= 0) std::fprintf(human, "  gather %.1f us", gather);
      std::fprintf(human, "\n");
      if (!o.json || a.name == "lora") continue;
      std::printf(
          "{\"impl\": \"loralab\", \"bench\": \"share\", \"scheme\": \"%s\", \"dtype\": \"%s\", "
          "\"ms_per_step\": %.6g, \"lora_ms_per_step\": %.6g, \"ratio\": %.6g, "
          "\"gather_us\": %.6g, \"trainable_params\": %lld, \"lora_trainable_params\": %lld, "
          "\"with_step\": %s, \"device\": \"%s\", \"config\": {\"layers\": %d, \"d_model\": %d, "
          "\"heads\": %d, \"context\": %d, \"vocab\": %d, \"batch\": %d, \"rank\": %d, "
          "\"budget_rank\": %d, \"private_rank\": %d, \"shards\": %d, \"unshared_rank\": %d, "
          "\"steps\": %d, \"warmup\": %d, \"rounds\": %d, \"seed\": %llu}}\n",
          a.name.c_str(), o.dtype.c_str(), ms, lora_ms, ms / lora_ms, gather,
          static_cast<long long>(a.trainable), static_cast<long long>(arms[0].trainable),
          o.with_step ? "true" : "false", name.c_str(), o.cfg.layers, o.cfg.d_model, o.cfg.heads,
          o.cfg.context, o.cfg.vocab_size, o.batch, o.rank, o.budget_rank, o.private_rank, o.shards,
          o.unshared_rank, o.steps, o.warmup, o.rounds, static_cast<unsigned long long>(o.seed));
    }
    std::fflush(stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[bench_share_cuda] error: %s\n", e.what());
    std::printf("{\"impl\": \"loralab\", \"bench\": \"share\", \"error\": \"%s\"}\n",
                json_safe(e.what()).c_str());
    return 1;
  }
}
