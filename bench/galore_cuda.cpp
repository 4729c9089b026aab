// bench_galore_cuda: the cost of a GaLore projector refresh on the device (methods.md 5.4). One
// fp32 gradient G [m x n] (4096 x 4096 by default) with a power-law spectrum, rank r = 128; the
// projector is refreshed by cuda::GaloreProjector with the exact cuSOLVER SVD (cusolverDnSgesvd)
// and with the randomized range finder (power iterations 2, oversample 8 by default: cuBLAS
// GEMMs, geqrf + orgqr, gesvd of a k x k factor), and the two subspaces are compared:
//   distance = || P_rand P_rand^T - P_exact P_exact^T ||_F / sqrt(2 r)
// (0 = the same subspace, 1 = orthogonal ones). Target: randomized <= 50 ms per refresh.
//
// G = A diag(s) B / sqrt(q) with A [m x q], B [q x n] uniform on [-sqrt 3, sqrt 3] (unit
// variance), q = min(m, n) and s_i = (1 + i)^-alpha (alpha = 1 by default, --alpha): a full-rank
// matrix whose spectrum decays like a gradient's, built once with cuBLAS. bench/peers/
// torch_svd.py builds the same kind of matrix (its own random draws) for torch.linalg.svd and
// torch.svd_lowrank.
//
// Timing: each refresh is synchronous (it checks cuSOLVER's status words), so the wall time of
// the call is what an optimizer step pays; it is reported as the median over --reps calls after
// --warmup untimed ones (the first call also allocates the scratch), with the device time from
// CUDA events beside it.
//
// Output: with --json one JSON line per method on stdout and the summary on stderr; without, the
// summary on stdout. Exit status: 0, 1 on an error (a JSON line with "error"), 77 when there is
// no CUDA device.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cuda/blas.hpp"
#include "loralab/cuda/device_buffer.hpp"
#include "loralab/cuda/error.hpp"
#include "loralab/cuda/galore.hpp"
#include "loralab/optim/galore.hpp"

namespace {

using namespace loralab;

struct Options {
  std::int64_t m = 4096;
  std::int64_t n = 4096;
  int rank = 128;
  int power_iterations = 2;
  int oversample = 8;
  double alpha = 1.0;  // spectrum s_i = (1 + i)^-alpha
  int exact_reps = 3;
  int randomized_reps = 20;
  int warmup = 1;
  double target_ms = 50.0;  // randomized refresh
  bool json = false;
  std::uint64_t seed = 1;
};

const char* kUsage =
    "usage: bench_galore_cuda [--m N] [--n N] [--rank N] [--power-iterations N] [--oversample N]\n"
    "                         [--alpha X] [--exact-reps N] [--randomized-reps N] [--warmup N]\n"
    "                         [--seed N] [--json]\n";

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

void parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> const char* {
      LORALAB_CHECK(i + 1 < argc, "[loralab.config] ", a, " needs a value");
      return argv[++i];
    };
    auto integer = [&] { return int(parse_int(a, value())); };
    if (a == "--m")
      o.m = integer();
    else if (a == "--n")
      o.n = integer();
    else if (a == "--rank")
      o.rank = integer();
    else if (a == "--power-iterations")
      o.power_iterations = integer();
    else if (a == "--oversample")
      o.oversample = integer();
    else if (a == "--alpha")
      o.alpha = parse_double(a, value());
    else if (a == "--exact-reps")
      o.exact_reps = integer();
    else if (a == "--randomized-reps")
      o.randomized_reps = integer();
    else if (a == "--warmup")
      o.warmup = integer();
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
  LORALAB_CHECK(o.m > 0 && o.n > 0 && o.rank > 0 && o.power_iterations >= 0 && o.oversample >= 0 &&
                    o.exact_reps > 0 && o.randomized_reps > 0 && o.warmup >= 0,
                "[loralab.config] sizes, rank and reps must be > 0; power iterations, oversample "
                "and warmup >= 0");
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
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

// The gradient (see the file comment), on the device, row-major [m x n].
cuda::DeviceBuffer<float> make_gradient(const Options& o, cudaStream_t stream) {
  const std::int64_t q = std::min(o.m, o.n);
  std::mt19937_64 rng(o.seed);
  std::uniform_real_distribution<float> u(-std::sqrt(3.0f), std::sqrt(3.0f));
  std::vector<float> a(static_cast<std::size_t>(o.m * q)), b(static_cast<std::size_t>(q * o.n));
  std::vector<float> scale(static_cast<std::size_t>(q));
  for (std::int64_t j = 0; j < q; ++j)  // A diag(s) / sqrt(q): column j scaled by s_j
    scale[std::size_t(j)] = float(std::pow(1.0 + double(j), -o.alpha) / std::sqrt(double(q)));
  for (std::int64_t i = 0; i < o.m; ++i)
    for (std::int64_t j = 0; j < q; ++j) a[std::size_t(i * q + j)] = u(rng) * scale[std::size_t(j)];
  for (float& x : b) x = u(rng);
  const auto da = cuda::DeviceBuffer<float>::from_host(a, stream);
  const auto db = cuda::DeviceBuffer<float>::from_host(b, stream);
  cuda::DeviceBuffer<float> g(std::size_t(o.m * o.n));
  cuda::BlasHandle blas(stream);
  cuda::gemm_row_major(blas.get(), false, false, o.m, o.n, q, 1.0f, da.data(), CUDA_R_32F, q,
                       db.data(), CUDA_R_32F, o.n, 0.0f, g.data(), CUDA_R_32F, o.n);
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream));
  return g;
}

struct Timing {
  double wall_ms = 0;    // median wall time of a refresh call
  double device_ms = 0;  // median device time (events)
  double min_ms = 0;     // fastest wall time
};

Timing time_refresh(cuda::GaloreProjector& p, const float* G, cuda::GaloreContext& ctx, int warmup,
                    int reps) {
  for (int i = 0; i < warmup; ++i) p.refresh(G, 0, ctx);
  cudaEvent_t start, stop;
  LORALAB_CUDA_CHECK(cudaEventCreate(&start));
  LORALAB_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> wall, device;
  for (int i = 0; i < reps; ++i) {
    LORALAB_CUDA_CHECK(cudaEventRecord(start, ctx.stream()));
    const auto t0 = std::chrono::steady_clock::now();
    p.refresh(G, 0, ctx);
    const auto t1 = std::chrono::steady_clock::now();
    LORALAB_CUDA_CHECK(cudaEventRecord(stop, ctx.stream()));
    LORALAB_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    LORALAB_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    wall.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    device.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return {median(wall), median(device), *std::min_element(wall.begin(), wall.end())};
}

// || P1 P1^T - P2 P2^T ||_F / sqrt(2 r) for projectors with orthonormal vectors, from
// || . ||_F^2 = 2 r - 2 || P1^T P2 ||_F^2 (kept vectors as the r rows of a right projector or
// the r columns of a left one), in double on the host.
double subspace_distance(const std::vector<float>& p1, const std::vector<float>& p2, std::int64_t r,
                         std::int64_t len, bool left) {
  auto at = [&](const std::vector<float>& p, std::int64_t vec, std::int64_t j) {
    return double(left ? p[std::size_t(j * r + vec)] : p[std::size_t(vec * len + j)]);
  };
  double cross = 0;
  for (std::int64_t a = 0; a < r; ++a)
    for (std::int64_t b = 0; b < r; ++b) {
      double dot = 0;
      for (std::int64_t j = 0; j < len; ++j) dot += at(p1, a, j) * at(p2, b, j);
      cross += dot * dot;
    }
  return std::sqrt(std::max(0.0, 2.0 * double(r) - 2.0 * cross) / (2.0 * double(r)));
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    parse(argc, argv, o);
    if (cuda::device_count() == 0) {
      std::printf(
          "{\"impl\": \"loralab\", \"bench\": \"galore_refresh\", \"error\": \"no CUDA "
          "device\"}\n");
      std::fprintf(stderr, "[bench_galore_cuda] no CUDA device: nothing was measured\n");
      return 77;
    }
    cuda::Stream stream;
    const cuda::DeviceBuffer<float> G = make_gradient(o, stream.get());
    GaloreConfig exact_cfg;
    exact_cfg.rank = o.rank;
    exact_cfg.refresh = GaloreRefresh::exact_svd;
    GaloreConfig rand_cfg = exact_cfg;
    rand_cfg.refresh = GaloreRefresh::randomized;
    rand_cfg.power_iterations = o.power_iterations;
    rand_cfg.oversample = o.oversample;
    rand_cfg.seed = o.seed;
    cuda::GaloreContext ctx(stream.get());
    cuda::GaloreProjector exact(exact_cfg, o.m, o.n), randomized(rand_cfg, o.m, o.n);
    const Timing te = time_refresh(exact, G.data(), ctx, o.warmup, o.exact_reps);
    const Timing tr = time_refresh(randomized, G.data(), ctx, o.warmup, o.randomized_reps);
    const GaloreShapes& shapes = exact.shapes();
    const bool left = shapes.side == GaloreSide::left;
    const double distance =
        subspace_distance(randomized.values(stream.get()), exact.values(stream.get()), shapes.rank,
                          left ? o.m : o.n, left);
    const bool pass = tr.wall_ms <= o.target_ms;

    const std::string name = json_safe(device_name());
    FILE* human = o.json ? stderr : stdout;
    std::fprintf(human,
                 "[bench_galore_cuda] %s: projector refresh of a %lld x %lld fp32 gradient, rank "
                 "%lld (spectrum (1+i)^-%g)\n",
                 name.c_str(), static_cast<long long>(o.m), static_cast<long long>(o.n),
                 static_cast<long long>(shapes.rank), o.alpha);
    std::fprintf(human, "  exact (cusolverDnSgesvd)   %9.3f ms  (device %.3f ms, min %.3f ms)\n",
                 te.wall_ms, te.device_ms, te.min_ms);
    std::fprintf(human,
                 "  randomized (q=%d, p=%d)     %9.3f ms  (device %.3f ms, min %.3f ms)  "
                 "speed-up %.1fx, subspace distance to exact %.3g  [target <= %.0f ms: %s]\n",
                 o.power_iterations, o.oversample, tr.wall_ms, tr.device_ms, tr.min_ms,
                 te.wall_ms / tr.wall_ms, distance, o.target_ms, pass ? "PASS" : "FAIL");
    if (o.json) {
      auto head = [&] {
        std::printf(
            "{\"impl\": \"loralab\", \"bench\": \"galore_refresh\", \"device\": \"%s\", "
            "\"m\": %lld, \"n\": %lld, \"rank\": %lld, \"alpha\": %g",
            name.c_str(), static_cast<long long>(o.m), static_cast<long long>(o.n),
            static_cast<long long>(shapes.rank), o.alpha);
      };
      head();
      std::printf(
          ", \"method\": \"exact_svd\", \"solver\": \"cusolverDnSgesvd\", \"ms\": %.6g, "
          "\"device_ms\": %.6g, \"min_ms\": %.6g, \"reps\": %d}\n",
          te.wall_ms, te.device_ms, te.min_ms, o.exact_reps);
      head();
      std::printf(
          ", \"method\": \"randomized\", \"power_iterations\": %d, \"oversample\": %d, \"ms\": "
          "%.6g, \"device_ms\": %.6g, \"min_ms\": %.6g, \"reps\": %d, \"subspace_distance\": "
          "%.6g, \"target_ms\": %g, \"pass\": %s}\n",
          o.power_iterations, o.oversample, tr.wall_ms, tr.device_ms, tr.min_ms, o.randomized_reps,
          distance, o.target_ms, pass ? "true" : "false");
    }
    std::fflush(stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[bench_galore_cuda] error: %s\n", e.what());
    std::printf("{\"impl\": \"loralab\", \"bench\": \"galore_refresh\", \"error\": \"%s\"}\n",
                json_safe(e.what()).c_str());
    return 1;
  }
}
