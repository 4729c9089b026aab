// CUDA microbenchmarks (bf16, fp32 accumulation): the frozen base GEMM alone (cuBLAS, the floor),
// then LoRA, LoRA-SP and LoRA with input dropout through cuda::AdaptedLinear, forward and
// forward+backward. Each adapter row reports `ratio_to_base` = its mean time / the base's mean
// time for the same shape and pass, measured earlier in this same run (the base family is
// registered first, and Google Benchmark runs families in registration order).
//
// Shapes from the CUDA issue (T tokens, d = in = out, rank r):
//   T=4096 d=4096 r=16, T=8192 d=4096 r=64, T=2048 d=8192 r=16, T=16 d=4096 r=16.
// "fwd+bwd": base = Y = X W^T then dX = dY W; adapter = forward, then backward with dX, dA, dB.
//
// Timing: CUDA events recorded on the benchmark's stream around each iteration, reported as
// manual time; the host waits on the stop event before the next iteration, so launch overhead
// counts (as it does in the PEFT peer, bench/peers/peft_layer.py). Adapters run with
// cfg.check_finite = false: the finiteness check copies a flag to the host and so synchronizes
// the stream every call, and PEFT does no such check. B is set to random values so the branch
// does the work of a trained adapter. Without a CUDA device the binary says so and exits 77.
// Run side by side with PEFT through bench/run_cuda.sh.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <loralab/core/philox.hpp>
#include <loralab/cuda/adapted_linear.hpp>
#include <loralab/cuda/blas.hpp>
#include <loralab/cuda/device_buffer.hpp>
#include <loralab/cuda/error.hpp>

namespace {

using loralab::cuda::bf16;
using loralab::cuda::DeviceBuffer;
using ShapeKey = std::tuple<long, long, long, bool>;  // (T, d, r, with_backward)

std::map<ShapeKey, double>& base_seconds() {
  static std::map<ShapeKey, double> m;
  return m;
}

// Uniform values in [-scale, scale) from Philox, generated on the device: the largest shape
// needs 3 x 32 M entries per benchmark, too slow to draw and upload from the host each time.
template <class T>
__global__ void fill_uniform(T* x, std::int64_t n, std::uint64_t seed, float scale) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float u = loralab::uniform01_float(loralab::philox_word(seed, 0, std::uint64_t(i)));
  const float value = (2.0f * u - 1.0f) * scale;
  if constexpr (std::is_same_v<T, float>) {
    x[i] = value;
  } else {
    x[i] = __float2bfloat16(value);
  }
}

template <class T>
void fill(DeviceBuffer<T>& buf, std::uint64_t seed, float scale, cudaStream_t stream) {
  const std::int64_t n = std::int64_t(buf.size());
  if (n == 0) return;
  constexpr int kThreads = 256;
  fill_uniform<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      buf.data(), n, seed, scale);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

// Device operands of one shape: W [d x d], X, dY, Y, dX [T x d].
template <class T>
struct Inputs {
  DeviceBuffer<T> W, X, GY, Y, dX;
  Inputs(long tokens, long d, cudaStream_t stream)
      : W(std::size_t(d) * d),
        X(std::size_t(tokens) * d),
        GY(std::size_t(tokens) * d),
        Y(std::size_t(tokens) * d),
        dX(std::size_t(tokens) * d) {
    fill(W, 1, 0.02f, stream);
    fill(X, 2, 1.0f, stream);
    fill(GY, 3, 1.0f, stream);
    Y.zero(stream);
    dX.zero(stream);
    LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
};

// A pair of events, destroyed with the benchmark.
class EventPair {
 public:
  EventPair() {
    LORALAB_CUDA_CHECK(cudaEventCreate(&start_));
    LORALAB_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~EventPair() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
  cudaEvent_t start() const { return start_; }
  cudaEvent_t stop() const { return stop_; }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// Warms up (cuBLAS heuristics, lazily sized workspaces), then times every iteration with events
// on `stream`; returns the mean seconds of exactly the measured iterations.
template <class Body>
double run_timed(benchmark::State& state, cudaStream_t stream, Body&& body) {
  for (int i = 0; i < 3; ++i) body();
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream));
  EventPair events;
  double total = 0;
  for (auto _ : state) {
    LORALAB_CUDA_CHECK(cudaEventRecord(events.start(), stream));
    body();
    LORALAB_CUDA_CHECK(cudaEventRecord(events.stop(), stream));
    LORALAB_CUDA_CHECK(cudaEventSynchronize(events.stop()));
    float ms = 0;
    LORALAB_CUDA_CHECK(cudaEventElapsedTime(&ms, events.start(), events.stop()));
    state.SetIterationTime(double(ms) * 1e-3);
    total += double(ms) * 1e-3;
  }
  return state.iterations() > 0 ? total / double(state.iterations()) : 0.0;
}

struct Args {
  long tokens, d, r;
  bool backward;
  explicit Args(const benchmark::State& s)
      : tokens(s.range(0)), d(s.range(1)), r(s.range(2)), backward(s.range(3) != 0) {}
  ShapeKey key() const { return {tokens, d, r, backward}; }
  // The base GEMM's flops (2 T d^2 per GEMM); adapter rows report the same count, so their
  // TFLOP/s is the base-equivalent throughput.
  double flops() const { return (backward ? 4.0 : 2.0) * double(tokens) * double(d) * double(d); }
};

void report(benchmark::State& state, const Args& a, double secs) {
  if (secs > 0) state.counters["TFLOP/s"] = a.flops() / secs * 1e-12;
}

template <class T>
void bm_base(benchmark::State& state) {
  const Args a(state);
  try {
    loralab::cuda::Stream stream;
    Inputs<T> in(a.tokens, a.d, stream.get());
    loralab::cuda::BlasHandle blas(stream.get());
    constexpr cudaDataType_t kT = loralab::cuda::data_type<T>();
    const double secs = run_timed(state, stream.get(), [&] {
      loralab::cuda::gemm_row_major(blas.get(), false, true, a.tokens, a.d, a.d, 1.0f, in.X.data(),
                                    kT, a.d, in.W.data(), kT, a.d, 0.0f, in.Y.data(), kT,
                                    a.d);  // Y = X W^T
      if (a.backward)
        loralab::cuda::gemm_row_major(blas.get(), false, false, a.tokens, a.d, a.d, 1.0f,
                                      in.GY.data(), kT, a.d, in.W.data(), kT, a.d, 0.0f,
                                      in.dX.data(), kT, a.d);  // dX = dY W
    });
    base_seconds()[a.key()] = secs;
    report(state, a, secs);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

template <class Spec, class T>
void bm_adapter(benchmark::State& state) {
  const Args a(state);
  try {
    loralab::cuda::Stream stream;
    Inputs<T> in(a.tokens, a.d, stream.get());
    loralab::AdapterConfig cfg;
    cfg.rank = int(a.r);
    cfg.alpha = 32;
    cfg.seed = 1;
    cfg.check_finite = false;  // synchronizes the stream; PEFT checks nothing
    if constexpr (Spec::dropout::has_input_dropout) cfg.dropout = 0.1;
    loralab::cuda::AdaptedLinear<Spec, T> layer(in.W.data(), a.d, a.d, nullptr, cfg, stream.get());
    // Keep the initial A, make B random: B = 0 would not change the work, but a trained adapter
    // is what the comparison is about.
    const std::vector<float> params = layer.parameters_host();
    const std::vector<float> A(params.begin(), params.begin() + a.r * a.d);
    std::vector<float> B(std::size_t(a.d * a.r));
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (float& b : B) b = u(rng);
    layer.set_parameters(A, B);
    std::uint64_t step = 0;
    const double secs = run_timed(state, stream.get(), [&] {
      layer.forward(in.X.data(), in.Y.data(), a.tokens, loralab::Pass{true, step++});
      if (a.backward) layer.backward(in.X.data(), in.GY.data(), in.dX.data(), a.tokens);
    });
    const auto it = base_seconds().find(a.key());
    if (it != base_seconds().end() && it->second > 0)
      state.counters["ratio_to_base"] = secs / it->second;
    report(state, a, secs);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

using Lora = loralab::Adapter<loralab::DynamicRank>;
using LoraSP = loralab::Adapter<loralab::DynamicRank, loralab::RandomMask<50>>;
using LoraDropout = loralab::Adapter<loralab::DynamicRank, loralab::InputDropout>;  // p = 0.1

// Args: T, d (= in = out), r, with_backward.
void shapes(benchmark::internal::Benchmark* b) {
  for (auto [T, d, r] : {std::tuple{4096L, 4096L, 16L}, std::tuple{8192L, 4096L, 64L},
                         std::tuple{2048L, 8192L, 16L}, std::tuple{16L, 4096L, 16L}})
    for (long bwd : {0L, 1L}) b->Args({T, d, r, bwd});
  b->ArgNames({"T", "d", "r", "bwd"})->Unit(benchmark::kMicrosecond)->UseManualTime()->MinTime(0.5);
}

}  // namespace

int main(int argc, char** argv) {
  if (loralab::cuda::device_count() == 0) {
    std::fprintf(stderr,
                 "bench_adapter_cuda: SKIPPED: no CUDA device on this machine "
                 "(cudaGetDeviceCount reported none); run it on a GPU machine "
                 "(bench/run_cuda.sh)\n");
    return 77;
  }
  cudaDeviceProp prop{};
  LORALAB_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  benchmark::AddCustomContext("cuda_device", prop.name);
  benchmark::AddCustomContext("cuda_sm", std::to_string(prop.major * 10 + prop.minor));
  // Base first: the adapter rows divide by its times.
  benchmark::RegisterBenchmark("base_gemm", bm_base<bf16>)->Apply(shapes);
  benchmark::RegisterBenchmark("lora", bm_adapter<Lora, bf16>)->Apply(shapes);
  benchmark::RegisterBenchmark("lora_sp", bm_adapter<LoraSP, bf16>)->Apply(shapes);
  benchmark::RegisterBenchmark("lora_dropout", bm_adapter<LoraDropout, bf16>)->Apply(shapes);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
