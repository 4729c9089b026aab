// bench_gpt2_cuda: LoRA fine-tuning throughput and peak memory of a GPT-2 124M-shaped decoder
// (random GPT-2 init, no dropout) with loralab's cuda::Gpt, the same configuration as the PyTorch
// + PEFT peer bench/peers/peft_gpt2.py: 12 layers, d 768, 12 heads, context 1024, vocabulary
// 50257, batch 8 x 1024 tokens, LoRA r=16 alpha=32 on c_attn, attn.c_proj, c_fc and mlp.c_proj,
// AdamW lr 1e-4. bf16 mixed precision by default (bf16 base weights and activations, fp32
// adapter masters, moments and statistics), --dtype f32 for fp32 throughout.
//
// Each step: zero_grad, forward (returns the loss, so it synchronizes), backward, AdamW step, on
// a new random batch (fixed seed, all batches generated before the clock starts). `--warmup`
// steps run first, then `--steps` timed steps between two cudaDeviceSynchronize calls;
// tokens/s = batch * context * steps / seconds (the peer counts the same way).
//
// Memory, two numbers:
//   peak_bytes        the most bytes loralab's DeviceBuffers held at once (weights, adapters,
//                     optimizer state, activations, scratch), counted from before the model is
//                     built; the analogue of torch.cuda.max_memory_allocated().
//   device_used_bytes (total - free) from cudaMemGetInfo after the timed steps minus the same
//                     right after the CUDA context was created: adds cuBLAS workspaces, lazily
//                     loaded kernels and allocator slack.
//
// Output: with --json one JSON line on stdout and a human summary on stderr; without, the
// summary on stdout.
// Exit status: 0, 1 on an error (a JSON line with "error" on stdout), 77 when there is no CUDA
// device.
#include <cuda_runtime_api.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cuda/device_buffer.hpp"
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
      .vocab_size = 50257, .context = 1024, .layers = 12, .heads = 12, .d_model = 768};
  int batch = 8;
  int rank = 16;
  double alpha = 32;
  double lr = 1e-4;
  int steps = 20;
  int warmup = 5;
  std::string dtype = "bf16";
  bool recompute = false;
  bool json = false;
  std::uint64_t seed = 1;
  std::string command;
};

const char* kUsage =
    "usage: bench_gpt2_cuda [--layers N] [--d-model N] [--heads N] [--context N] [--vocab N]\n"
    "                       [--batch N] [--rank N] [--alpha X] [--lr X] [--steps N] [--warmup N]\n"
    "                       [--dtype bf16|f32] [--recompute] [--seed N] [--json]\n";

std::string json_escape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

// A JSON number, or null when not finite (a diverged loss must not break the JSON line).
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

// The error line; names the arm (dtype, recompute) so the summary can label it.
void print_error_json(const Options& o, const std::string& message) {
  std::printf("{\"impl\": \"loralab\", \"dtype\": \"%s\", \"recompute\": %s, \"error\": \"%s\"}\n",
              json_escape(o.dtype).c_str(), o.recompute ? "true" : "false",
              json_escape(message).c_str());
  std::fflush(stdout);
}

long parse_int(std::string_view flag, const char* text) {
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  LORALAB_CHECK(end != text && *end == '\0', "[loralab.config] ", flag,
                ": expected an integer, got '", text, "'");
  return v;
}

double parse_double(std::string_view flag, const char* text) {
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  LORALAB_CHECK(end != text && *end == '\0', "[loralab.config] ", flag,
                ": expected a number, got '", text, "'");
  return v;
}

// Fills `o` from the command line (in place, so an error line still names what was parsed).
void parse(int argc, char** argv, Options& o) {
  for (int i = 0; i < argc; ++i) {
    if (i > 0) o.command += ' ';
    o.command += argv[i];
  }
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> const char* {
      LORALAB_CHECK(i + 1 < argc, "[loralab.config] ", a, " needs a value");
      return argv[++i];
    };
    if (a == "--layers")
      o.cfg.layers = int(parse_int(a, value()));
    else if (a == "--d-model")
      o.cfg.d_model = int(parse_int(a, value()));
    else if (a == "--heads")
      o.cfg.heads = int(parse_int(a, value()));
    else if (a == "--context")
      o.cfg.context = int(parse_int(a, value()));
    else if (a == "--vocab")
      o.cfg.vocab_size = int(parse_int(a, value()));
    else if (a == "--batch")
      o.batch = int(parse_int(a, value()));
    else if (a == "--rank")
      o.rank = int(parse_int(a, value()));
    else if (a == "--alpha")
      o.alpha = parse_double(a, value());
    else if (a == "--lr")
      o.lr = parse_double(a, value());
    else if (a == "--steps")
      o.steps = int(parse_int(a, value()));
    else if (a == "--warmup")
      o.warmup = int(parse_int(a, value()));
    else if (a == "--dtype")
      o.dtype = value();
    else if (a == "--seed")
      o.seed = std::uint64_t(parse_int(a, value()));
    else if (a == "--recompute")
      o.recompute = true;
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
  LORALAB_CHECK(o.batch > 0 && o.rank > 0 && o.steps > 0 && o.warmup >= 0,
                "[loralab.config] --batch, --rank and --steps must be > 0, --warmup >= 0");
}

// Bytes in use on the device (every process and library), from cudaMemGetInfo.
std::int64_t device_used() {
  std::size_t free = 0, total = 0;
  LORALAB_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return std::int64_t(total) - std::int64_t(free);
}

// One random batch of token ids [batch x seq] and its next-token targets (-1 at a row's end).
struct Batch {
  std::vector<std::int32_t> tokens, targets;
};

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

struct Result {
  double seconds = 0;
  double loss_first = 0, loss_last = 0;
  std::int64_t peak_bytes = 0, device_used_bytes = 0;
  std::int64_t trainable_params = 0;
};

template <class Model>
Result run(const Options& o, std::int64_t used_baseline) {
  const std::vector<Batch> batches = make_batches(o, o.warmup + o.steps);

  model::GptWeights<float> w(o.cfg);
  w.init_gpt2(o.seed);
  model::GptOptions opts;  // adapter mode; targets default to all four modules
  opts.adapter.rank = o.rank;
  opts.adapter.alpha = o.alpha;
  opts.adapter.seed = o.seed;
  cuda::GptDeviceOptions dev;
  dev.recompute = o.recompute;

  cuda::reset_device_memory_peak();  // from here on, everything loralab allocates counts
  Model m(w, opts, dev);
  cuda::DeviceOptimizer opt(m, AdamWConfig{.lr = o.lr});

  Result r;
  r.trainable_params = m.memory(0).trainable_params;

  std::int64_t step = 0;
  auto train_step = [&](const Batch& b) {
    m.zero_grad();
    const double loss =
        m.forward(b.tokens, b.targets, o.batch, o.cfg.context, Pass{true, std::uint64_t(step)});
    m.backward();
    opt.step(1.0);
    ++step;
    return loss;
  };

  for (int s = 0; s < o.warmup; ++s) {
    const double loss = train_step(batches[std::size_t(s)]);
    if (s == 0) r.loss_first = loss;
  }
  LORALAB_CUDA_CHECK(cudaDeviceSynchronize());
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < o.steps; ++s) {
    const double loss = train_step(batches[std::size_t(o.warmup + s)]);
    if (o.warmup == 0 && s == 0) r.loss_first = loss;
    r.loss_last = loss;
  }
  LORALAB_CUDA_CHECK(cudaDeviceSynchronize());
  const auto t1 = std::chrono::steady_clock::now();
  r.seconds = std::chrono::duration<double>(t1 - t0).count();
  r.peak_bytes = cuda::device_memory().peak;
  r.device_used_bytes = device_used() - used_baseline;
  return r;
}

std::string device_name() {
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess)
    return "unknown";
  return prop.name;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;  // defaults until parsed, for the error line
  try {
    parse(argc, argv, o);
    if (cuda::device_count() == 0) {
      print_error_json(o, "no CUDA device visible (cudaGetDeviceCount returned 0 or failed)");
      std::fprintf(stderr, "[bench_gpt2_cuda] no CUDA device: nothing was measured\n");
      return 77;
    }
    LORALAB_CUDA_CHECK(cudaFree(nullptr));  // create the context before the baseline
    const std::int64_t baseline = device_used();

    const Result r = o.dtype == "bf16"
                         ? run<cuda::Gpt<Adapter<DynamicRank>, cuda::bf16>>(o, baseline)
                         : run<cuda::Gpt<Adapter<DynamicRank>, float>>(o, baseline);

    const double tokens = double(o.batch) * o.cfg.context * o.steps;
    const double tokens_per_s = tokens / r.seconds;
    const double step_ms = 1e3 * r.seconds / o.steps;
    const double gib = 1024.0 * 1024.0 * 1024.0;
    const std::string name = device_name();

    std::ostringstream human;
    human << "[bench_gpt2_cuda] " << name << " " << o.dtype << (o.recompute ? " recompute" : "")
          << " B=" << o.batch << " T=" << o.cfg.context << " L=" << o.cfg.layers
          << " d=" << o.cfg.d_model << " r=" << o.rank << ": " << tokens_per_s << " tokens/s, "
          << step_ms << " ms/step, peak " << double(r.peak_bytes) / gib << " GiB (device used "
          << double(r.device_used_bytes) / gib << " GiB), loss " << r.loss_first << " -> "
          << r.loss_last << "\n";
    std::fputs(human.str().c_str(), o.json ? stderr : stdout);
    if (!o.json) return 0;
    std::printf(
        "{\"impl\": \"loralab\", \"dtype\": \"%s\", \"recompute\": %s, \"tokens_per_s\": %.6g, "
        "\"peak_bytes\": %lld, \"device_used_bytes\": %lld, \"step_ms\": %.6g, "
        "\"loss_first\": %s, \"loss_last\": %s, \"trainable_params\": %lld, "
        "\"device\": \"%s\", \"command\": \"%s\", "
        "\"config\": {\"layers\": %d, \"d_model\": %d, \"heads\": %d, \"context\": %d, "
        "\"vocab\": %d, \"batch\": %d, \"rank\": %d, \"alpha\": %g, "
        "\"targets\": [\"c_attn\", \"attn.c_proj\", \"c_fc\", \"mlp.c_proj\"], \"lr\": %g, "
        "\"steps\": %d, \"warmup\": %d, \"seed\": %llu}}\n",
        o.dtype.c_str(), o.recompute ? "true" : "false", tokens_per_s, (long long)r.peak_bytes,
        (long long)r.device_used_bytes, step_ms, json_number(r.loss_first).c_str(),
        json_number(r.loss_last).c_str(), (long long)r.trainable_params, json_escape(name).c_str(),
        json_escape(o.command).c_str(), o.cfg.layers, o.cfg.d_model, o.cfg.heads, o.cfg.context,
        o.cfg.vocab_size, o.batch, o.rank, o.alpha, o.lr, o.steps, o.warmup,
        (unsigned long long)o.seed);
    std::fflush(stdout);
    return 0;
  } catch (const std::exception& e) {  // loralab::Error derives from std::runtime_error
    std::fprintf(stderr, "[bench_gpt2_cuda] error: %s\n", e.what());
    print_error_json(o, e.what());
    return 1;
  }
}
