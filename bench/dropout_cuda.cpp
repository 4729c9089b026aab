// bench_dropout_cuda: the cost of the dropout framework on the device. Forward + backward time of
// a GPT-2 124M-shaped decoder (12 layers, d 768, 12 heads, vocabulary 50257; context 128 by
// default) with LoRA of rank r on all four projections, plain and with HiddenKey- (column DropKey
// + element FFN-hidden dropout in the latter half of the blocks, one pass), HiddenKey (the same
// plus the bidirectional KL: a second forward without backward, methods.md 4.7 "about +50%") and
// HiddenKey with both branches back-propagated (R-Drop's original: two forwards and two
// backwards), measured in the same run and reported over plain LoRA's step as a ratio. bf16 mixed
// precision by default, --dtype f32 for fp32.
//
// Each timed step: zero_grad, forward (returns the loss, so it synchronizes), backward, then a
// cudaDeviceSynchronize; no optimizer step. The arms are timed in interleaved rounds on the same
// batches, `--steps` steps per arm and round after `--warmup` untimed steps; each arm reports its
// median round.
//
// Output: with --json one JSON line per dropout arm on stdout and the summary on stderr; without,
// the summary on stdout. Exit status: 0, 1 on an error (a JSON line with "error" on stdout), 77
// when there is no CUDA device.
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
#include "loralab/dropout/config.hpp"
#include "loralab/model/options.hpp"
#include "loralab/model/weights.hpp"

namespace {

using namespace loralab;

struct Options {
  model::GptConfig cfg{
      .vocab_size = 50257, .context = 128, .layers = 12, .heads = 12, .d_model = 768};
  int batch = 8;
  int rank = 8;
  double p_key = 0.1;     // HiddenKey's p_k (column DropKey)
  double p_hidden = 0.1;  // HiddenKey's p_h (element FFN-hidden dropout)
  int steps = 10;
  int warmup = 3;
  int rounds = 5;
  std::string dtype = "bf16";
  bool json = false;
  std::uint64_t seed = 1;
};

const char* kUsage =
    "usage: bench_dropout_cuda [--layers N] [--d-model N] [--heads N] [--context N] [--vocab N]\n"
    "                          [--batch N] [--rank N] [--steps N] [--warmup N] [--rounds N]\n"
    "                          [--dtype bf16|f32] [--seed N] [--json]\n";

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

struct Arm {
  std::string name;
  std::function<double(const Batch&, std::int64_t)> step;  // one timed unit; returns the loss
  std::vector<double> ms;                                  // per round: ms per step
};

template <class T>
Arm make_arm(const std::string& name, const dropout::Config& dc, const Options& o,
             const model::GptWeights<float>& w) {
  model::GptOptions opts;  // adapter mode, all four projections
  opts.adapter.rank = o.rank;
  opts.adapter.alpha = 2.0 * o.rank;
  opts.adapter.seed = o.seed;
  opts.dropout = dc;
  auto model = std::make_shared<cuda::Gpt<Adapter<DynamicRank>, T>>(w, opts);
  const int B = o.batch, L = o.cfg.context;
  Arm arm;
  arm.name = name;
  arm.step = [model, B, L](const Batch& b, std::int64_t s) {
    model->zero_grad();
    const double loss = model->forward(b.tokens, b.targets, B, L, Pass{true, std::uint64_t(s)});
    model->backward();
    return loss;
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
  dropout::Config both = dropout::hiddenkey(o.p_key, o.p_hidden);
  both.backprop_both = true;
  std::vector<Arm> arms;
  arms.push_back(make_arm<T>("lora", {}, o, w));
  arms.push_back(
      make_arm<T>("hiddenkey_minus", dropout::hiddenkey_minus(o.p_key, o.p_hidden), o, w));
  arms.push_back(make_arm<T>("hiddenkey", dropout::hiddenkey(o.p_key, o.p_hidden), o, w));
  arms.push_back(make_arm<T>("hiddenkey_both", both, o, w));
  const std::vector<Batch> batches = make_batches(o, o.steps);
  std::int64_t step = 0;
  for (Arm& a : arms)
    for (int s = 0; s < o.warmup; ++s) a.step(batches[std::size_t(s % o.steps)], step++);
  for (int r = 0; r < o.rounds; ++r)
    for (Arm& a : arms) {
      LORALAB_CUDA_CHECK(cudaDeviceSynchronize());
      const auto t0 = std::chrono::steady_clock::now();
      for (int s = 0; s < o.steps; ++s) a.step(batches[std::size_t(s)], s);
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
      std::printf(
          "{\"impl\": \"loralab\", \"bench\": \"dropout\", \"error\": \"no CUDA device\"}\n");
      std::fprintf(stderr, "[bench_dropout_cuda] no CUDA device: nothing was measured\n");
      return 77;
    }
    const std::vector<Arm> arms = o.dtype == "bf16" ? run<cuda::bf16>(o) : run<float>(o);
    const std::string name = json_safe(device_name());
    const double lora_ms = median(arms[0].ms);
    FILE* human = o.json ? stderr : stdout;
    std::fprintf(human,
                 "[bench_dropout_cuda] %s %s B=%d T=%d L=%d d=%d r=%d p_k=%g p_h=%g, forward + "
                 "backward, median of %d rounds x %d steps\n",
                 name.c_str(), o.dtype.c_str(), o.batch, o.cfg.context, o.cfg.layers, o.cfg.d_model,
                 o.rank, o.p_key, o.p_hidden, o.rounds, o.steps);
    for (const Arm& a : arms) {
      const double ms = median(a.ms);
      std::fprintf(human, "  %-16s %8.3f ms/step  ratio %.3f\n", a.name.c_str(), ms, ms / lora_ms);
      if (!o.json || a.name == "lora") continue;
      std::printf(
          "{\"impl\": \"loralab\", \"bench\": \"dropout\", \"arm\": \"%s\", \"dtype\": \"%s\", "
          "\"ms_per_step\": %.6g, \"lora_ms_per_step\": %.6g, \"ratio\": %.6g, \"device\": "
          "\"%s\", \"config\": {\"layers\": %d, \"d_model\": %d, \"heads\": %d, \"context\": %d, "
          "\"vocab\": %d, \"batch\": %d, \"rank\": %d, \"p_k\": %g, \"p_h\": %g, \"steps\": %d, "
          "\"warmup\": %d, \"rounds\": %d, \"seed\": %llu}}\n",
          a.name.c_str(), o.dtype.c_str(), ms, lora_ms, ms / lora_ms, name.c_str(), o.cfg.layers,
          o.cfg.d_model, o.cfg.heads, o.cfg.context, o.cfg.vocab_size, o.batch, o.rank, o.p_key,
          o.p_hidden, o.steps, o.warmup, o.rounds, static_cast<unsigned long long>(o.seed));
    }
    std::fflush(stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[bench_dropout_cuda] error: %s\n", e.what());
    std::printf("{\"impl\": \"loralab\", \"bench\": \"dropout\", \"error\": \"%s\"}\n",
                json_safe(e.what()).c_str());
    return 1;
  }
}
