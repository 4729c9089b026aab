// CPU microbenchmarks: the frozen base GEMM alone (the floor), then LoRA and LoRA-SP forward and
// forward+backward, each reporting `ratio_to_base` = its mean time / the base's mean time for the
// same shape and pass, measured in this same run. Shapes from issue 2:
//   T=2048, in=out=1024, r=16   and   T=512, in=out=4096, r=16.
// Run side by side with PyTorch through bench/run_cpu.sh.
#include <benchmark/benchmark.h>

#include <chrono>
#include <map>
#include <tuple>

#include <loralab/loralab.hpp>

namespace {

using loralab::cpu::MatrixR;
using Clock = std::chrono::steady_clock;
using ShapeKey = std::tuple<long, long, bool>;  // (T, d, with_backward)
std::map<ShapeKey, double>& base_seconds() {
  static std::map<ShapeKey, double> m;
  return m;
}

struct Inputs {
  MatrixR<float> W, X, GY, Y, dX;
  Inputs(long T, long d)
      : W(MatrixR<float>::Random(d, d) * 0.02f),
        X(MatrixR<float>::Random(T, d)),
        GY(MatrixR<float>::Random(T, d)),
        Y(T, d),
        dX(T, d) {}
};

// Times the loop body manually as well, so the ratio uses exactly the measured iterations.
template <class Body>
double run_timed(benchmark::State& state, Body&& body) {
  double total = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    body();
    total += std::chrono::duration<double>(Clock::now() - t0).count();
  }
  return total / double(state.iterations());
}

void set_flops(benchmark::State& state, double flops_per_iter) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops_per_iter * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Base(benchmark::State& state) {
  const long T = state.range(0), d = state.range(1);
  const bool backward = state.range(2) != 0;
  Inputs in(T, d);
  const double secs = run_timed(state, [&] {
    in.Y.noalias() = in.X * in.W.transpose();
    if (backward) in.dX.noalias() = in.GY * in.W;
    benchmark::DoNotOptimize(in.Y.data());
    benchmark::DoNotOptimize(in.dX.data());
  });
  base_seconds()[{T, d, backward}] = secs;
  set_flops(state, (backward ? 4.0 : 2.0) * double(T) * double(d) * double(d));
}

template <class Spec>
void BM_Adapter(benchmark::State& state) {
  const long T = state.range(0), d = state.range(1);
  const bool backward = state.range(2) != 0;
  Inputs in(T, d);
  loralab::AdapterConfig cfg;
  cfg.alpha = 32;
  cfg.seed = 1;
  loralab::cpu::AdaptedLinear<Spec, float> layer(in.W, {}, cfg);
  layer.B().setRandom();  // a trained-looking adapter; B = 0 would not change the work done
  const double secs = run_timed(state, [&] {
    layer.forward(in.X, in.Y);
    if (backward) layer.backward(in.X, in.GY, in.dX);
    benchmark::DoNotOptimize(in.Y.data());
    benchmark::DoNotOptimize(in.dX.data());
  });
  const auto it = base_seconds().find({T, d, backward});
  if (it != base_seconds().end()) state.counters["ratio_to_base"] = secs / it->second;
  set_flops(state, (backward ? 4.0 : 2.0) * double(T) * double(d) * double(d));
}

using Lora16 = loralab::Adapter<loralab::Rank<16>>;
using LoraSP16 = loralab::Adapter<loralab::Rank<16>, loralab::RandomMask<50>>;

// Args: T, d (= in = out), with_backward. The base runs first so the ratios can refer to it.
void shapes(benchmark::internal::Benchmark* b) {
  for (auto [T, d] : {std::pair{2048L, 1024L}, std::pair{512L, 4096L}})
    for (long bwd : {0L, 1L}) b->Args({T, d, bwd});
  b->ArgNames({"T", "d", "bwd"})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
}

BENCHMARK(BM_Base)->Apply(shapes)->Name("base_gemm");
BENCHMARK(BM_Adapter<Lora16>)->Apply(shapes)->Name("lora_r16");
BENCHMARK(BM_Adapter<LoraSP16>)->Apply(shapes)->Name("lora_sp_r16");

}  // namespace

BENCHMARK_MAIN();
