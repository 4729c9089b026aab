// CPU vs CUDA for cuda::AdaptedLinear: for the policy combinations the CPU suite covers, forward
// outputs and gradients match the CPU backend (fp32: 1e-4 relative; bf16: see kBf16Tolerance),
// masks match bit for bit, optimizer steps leave frozen entries untouched, merge/unmerge agree.
// Runs only where a GPU is present (tests/cuda/cuda_main.cpp exits 77 otherwise).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "loralab/cpu/adamw.hpp"
#include "loralab/cpu/adapted_linear.hpp"
#include "loralab/cuda/adamw.hpp"
#include "loralab/cuda/adapted_linear.hpp"
#include "support/testing.hpp"

using namespace loralab;
using cpu::MatrixR;
using cuda::bf16;
using cuda::DeviceBuffer;

namespace {

// fp32 on the device against the CPU in double: cuBLAS fp32 GEMMs (no TF32) differ from a double
// reference by accumulated fp32 rounding, far below 1e-4 of the output scale.
constexpr double kF32Tolerance = 1e-4;
// bf16 stores X, W, A, B, U and G_U with 8 significant bits (unit roundoff u = 2^-9, spacing
// 2^-8); each output passes through at most three bf16 roundings on top of fp32 accumulation.
// Against a double reference computed from the same bf16-rounded inputs the error is bounded by
// about 3 u of the output's scale; we allow 4 * 2^-8 = 1.6e-2 of the largest |reference| entry.
constexpr double kBf16Tolerance = 4.0 / 256.0;

template <class T>
std::vector<T> to_device_type(const MatrixR<double>& m) {
  std::vector<T> out(static_cast<std::size_t>(m.size()));
  for (Eigen::Index i = 0; i < m.size(); ++i)
    out[i] = cuda::from_float<T>(static_cast<float>(m.data()[i]));
  return out;
}

template <class T>
MatrixR<double> from_device(const DeviceBuffer<T>& buf, Eigen::Index rows, Eigen::Index cols) {
  const std::vector<T> host = buf.to_host();
  MatrixR<double> m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = cuda::to_float(host[i]);
  return m;
}

// What the device actually sees: the inputs rounded to T.
template <class T>
MatrixR<double> rounded(const MatrixR<double>& m) {
  MatrixR<double> r = m;
  for (Eigen::Index i = 0; i < r.size(); ++i)
    r.data()[i] = cuda::to_float(cuda::from_float<T>(static_cast<float>(r.data()[i])));
  return r;
}

// |got - want| <= tol * max|want| entry-wise, reporting the worst entry.
void check_close(const MatrixR<double>& got, const MatrixR<double>& want, double tol,
                 const char* what) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  const double scale = std::max(want.cwiseAbs().maxCoeff(), 1e-30);
  Eigen::Index r = 0, c = 0;
  const double err = (got - want).cwiseAbs().maxCoeff(&r, &c) / scale;
  INFO(what << ": worst scaled error " << err << " at (" << r << ", " << c << "): got " << got(r, c)
            << ", want " << want(r, c));
  CHECK(err <= tol);
}

struct Shape {
  int n, in, out, rank;
};
constexpr Shape kShapes[] = {
    {5, 6, 4, 1}, {4, 7, 5, 3}, {3, 5, 8, 5}, {67, 96, 80, 8}, {129, 64, 256, 16}};

template <class Spec, class T>
void compare_with_cpu(const Shape& s, double dropout, bool with_bias) {
  CAPTURE(s.n);
  CAPTURE(s.in);
  CAPTURE(s.out);
  CAPTURE(s.rank);
  CAPTURE(dropout);
  const double tol = std::is_same_v<T, float> ? kF32Tolerance : kBf16Tolerance;
  std::srand(17);
  MatrixR<double> W = rounded<T>(MatrixR<double>::Random(s.out, s.in));
  const MatrixR<double> bias = rounded<T>(MatrixR<double>::Random(1, s.out));
  const MatrixR<double> X = rounded<T>(MatrixR<double>::Random(s.n, s.in));
  const MatrixR<double> GY = rounded<T>(MatrixR<double>::Random(s.n, s.out));
  const MatrixR<double> Bv = rounded<T>(MatrixR<double>::Random(s.out, s.rank));

  AdapterConfig cfg;
  if constexpr (!Spec::rank::is_static) cfg.rank = s.rank;
  cfg.alpha = 3.0;
  cfg.dropout = dropout;
  cfg.seed = testing::kSeed;
  cfg.module_id = 5;

  cpu::AdaptedLinear<Spec, double> ref(
      W, with_bias ? std::span<const double>(bias.data(), s.out) : std::span<const double>{}, cfg);
  ref.A() = rounded<T>(ref.A());  // the device computes with T copies of A and B
  ref.B() = Bv;

  DeviceBuffer<T> dW = DeviceBuffer<T>::from_host(to_device_type<T>(W));
  DeviceBuffer<T> dbias = DeviceBuffer<T>::from_host(to_device_type<T>(bias));
  DeviceBuffer<T> dX = DeviceBuffer<T>::from_host(to_device_type<T>(X));
  DeviceBuffer<T> dGY = DeviceBuffer<T>::from_host(to_device_type<T>(GY));
  DeviceBuffer<T> dY(std::size_t(s.n) * s.out), ddX(std::size_t(s.n) * s.in);
  cuda::AdaptedLinear<Spec, T> dev(dW.data(), s.out, s.in, with_bias ? dbias.data() : nullptr, cfg);

  // Same initial values and masks as the CPU adapter, bit for bit.
  MatrixR<float> Wf = W.cast<float>();
  cpu::AdaptedLinear<Spec, float> cpu_float(Wf, {}, cfg);
  const std::vector<float> init = dev.parameters_host();
  REQUIRE(init.size() == std::size_t(cpu_float.A().size() + cpu_float.B().size()));
  CHECK(std::memcmp(init.data(), cpu_float.A().data(), init.size() * sizeof(float)) == 0);
  const std::vector<std::uint8_t> mask = dev.mask_host();
  CHECK(mask.size() == cpu_float.mask().size());
  CHECK(std::equal(mask.begin(), mask.end(), cpu_float.mask().begin()));

  // Same A (rounded to T), random B on both sides.
  const std::vector<float> a_host(ref.A().data(), ref.A().data() + ref.A().size());
  std::vector<float> b_host(std::size_t(Bv.size()));
  for (Eigen::Index i = 0; i < Bv.size(); ++i) b_host[i] = static_cast<float>(Bv.data()[i]);
  dev.set_parameters(a_host, b_host);

  const Pass pass{true, 9};
  const MatrixR<double> Y_ref = ref.forward(X, pass);
  MatrixR<double> dX_ref(s.n, s.in);
  ref.backward(X, GY, dX_ref);
  dev.forward(dX.data(), dY.data(), s.n, pass);
  dev.backward(dX.data(), dGY.data(), ddX.data(), s.n);
  REQUIRE(X.norm() > 0);
  check_close(from_device(dY, s.n, s.out), Y_ref, tol, "Y");
  check_close(from_device(ddX, s.n, s.in), dX_ref, tol, "dX");
  const std::vector<float> grads = dev.gradients_host();
  MatrixR<double> dA(s.rank, s.in), dB(s.out, s.rank);
  for (Eigen::Index i = 0; i < dA.size(); ++i) dA.data()[i] = grads[i];
  for (Eigen::Index i = 0; i < dB.size(); ++i) dB.data()[i] = grads[dA.size() + i];
  check_close(dB, ref.grad_B(), tol, "dB");
  if constexpr (Spec::freeze::freezes_a) {
    CHECK(dA.cwiseAbs().maxCoeff() == 0.0);
  } else {
    check_close(dA, ref.grad_A(), tol, "dA");
  }
  for (std::size_t i = 0; i < mask.size(); ++i)
    if (!mask[i]) CHECK(grads[i] == 0.0f);  // frozen gradients exactly 0
}

template <class Spec>
void compare_all_shapes() {
  using WithDropout = Adapter<DynamicRank, typename Spec::freeze, typename Spec::init,
                              typename Spec::scaling, InputDropout>;
  for (const Shape& s : kShapes) {
    compare_with_cpu<Spec, float>(s, 0.0, true);
    compare_with_cpu<WithDropout, float>(s, 0.3, false);
    compare_with_cpu<Spec, bf16>(s, 0.0, true);
    compare_with_cpu<WithDropout, bf16>(s, 0.3, true);
  }
}

}  // namespace

using Arms =
    std::tuple<Adapter<DynamicRank>, Adapter<DynamicRank, RandomMask<50>>,
               Adapter<DynamicRank, FreezeA>, Adapter<DynamicRank, RandomMask<30>, RsLoraScale>,
               Adapter<DynamicRank, GaussianA>>;

TEST_CASE_TEMPLATE_DEFINE("CUDA forward and gradients match the CPU backend", Spec, cpu_vs_cuda) {
  compare_all_shapes<Spec>();
}
TEST_CASE_TEMPLATE_APPLY(cpu_vs_cuda, Arms);

TEST_CASE("dropout masks on the device equal the CPU's bit for bit") {
  // in = out = r, A = B = I, W = 0, alpha = r (s = 1): Y = drop(X) exactly, so with X = 1 the
  // zero pattern of Y is the dropout mask.
  const int d = 8, n = 1000;
  using Spec = Adapter<DynamicRank, InputDropout>;
  AdapterConfig cfg;
  cfg.rank = d;
  cfg.alpha = d;
  cfg.dropout = 0.37;
  cfg.seed = 77;
  cfg.module_id = 3;
  MatrixR<float> W = MatrixR<float>::Zero(d, d);
  cpu::AdaptedLinear<Spec, float> host(W, {}, cfg);
  host.A().setIdentity();
  host.B().setIdentity();
  const MatrixR<float> X = MatrixR<float>::Ones(n, d);
  const MatrixR<float> Y_cpu = host.forward(X, {true, 123});

  DeviceBuffer<float> dW = DeviceBuffer<float>::from_host(std::vector<float>(d * d, 0.0f));
  DeviceBuffer<float> dX = DeviceBuffer<float>::from_host(std::vector<float>(n * d, 1.0f));
  DeviceBuffer<float> dY(n * d);
  cuda::AdaptedLinear<Spec, float> dev(dW.data(), d, d, nullptr, cfg);
  const std::vector<float> eye = [&] {
    std::vector<float> e(d * d, 0.0f);
    for (int i = 0; i < d; ++i) e[i * d + i] = 1.0f;
    return e;
  }();
  dev.set_parameters(eye, eye);
  dev.forward(dX.data(), dY.data(), n, {true, 123});
  const std::vector<float> Y_dev = dY.to_host();
  int dropped = 0, mismatches = 0;
  for (int i = 0; i < n * d; ++i) {
    dropped += Y_cpu.data()[i] == 0.0f;
    mismatches += (Y_cpu.data()[i] == 0.0f) != (Y_dev[i] == 0.0f);
  }
  CHECK(mismatches == 0);
  CHECK(dropped > 0.3 * n * d);
  CHECK(dropped < 0.45 * n * d);
}

TEST_CASE("N device AdamW steps leave frozen entries bit-identical; merge/unmerge match the CPU") {
  using Spec = LoraSP<4>;
  const int n = 32, in = 48, out = 40;
  std::srand(3);
  MatrixR<float> W = MatrixR<float>::Random(out, in);
  const MatrixR<float> W0 = W;
  DeviceBuffer<float> dW =
      DeviceBuffer<float>::from_host(std::vector<float>(W.data(), W.data() + W.size()));
  cuda::AdaptedLinear<Spec, float> dev(dW.data(), out, in);
  const std::vector<float> before = dev.parameters_host();
  const std::vector<std::uint8_t> mask = dev.mask_host();
  cuda::AdamW opt(dev.parameters(), {.lr = 0.05, .weight_decay = 0.1}, dev.stream());
  CHECK(opt.state_bytes() == dev.memory(n).optimizer_state_bytes);
  DeviceBuffer<float> dX(n * in), dY(n * out), dGY(n * out);
  for (int step = 0; step < 50; ++step) {
    const MatrixR<float> X = MatrixR<float>::Random(n, in), GY = MatrixR<float>::Random(n, out);
    dX.upload(std::span<const float>(X.data(), X.size()));
    dGY.upload(std::span<const float>(GY.data(), GY.size()));
    dev.forward(dX.data(), dY.data(), n, {true, std::uint64_t(step)});
    dev.zero_grad();
    dev.backward(dX.data(), dGY.data(), n);
    opt.step();
  }
  const std::vector<float> after = dev.parameters_host();
  int moved = 0;
  for (std::size_t i = 0; i < mask.size(); ++i) {
    if (!mask[i])
      CHECK(std::memcmp(&after[i], &before[i], sizeof(float)) == 0);
    else
      moved += after[i] != before[i];
  }
  CHECK(moved > 0);

  // merge on the device equals W + s B A computed on the host; unmerge restores W.
  cpu::AdaptedLinear<Spec, float> host(W);
  std::copy(after.begin(), after.end(), host.A().data());  // A then B, same layout
  host.merge();
  dev.merge();
  const std::vector<float> merged = dW.to_host();
  const MatrixR<double> merged_dev =
      Eigen::Map<const MatrixR<float>>(merged.data(), out, in).cast<double>();
  check_close(merged_dev, W.cast<double>(), 1e-5, "merged W");
  dev.unmerge();
  const std::vector<float> restored = dW.to_host();
  check_close(Eigen::Map<const MatrixR<float>>(restored.data(), out, in).cast<double>(),
              W0.cast<double>(), 1e-5, "unmerged W");
}

TEST_CASE(
    "non-finite input on the device throws with the position; check_finite=false skips the check") {
  const int n = 4, in = 8, out = 6;
  std::vector<float> x(n * in, 1.0f);
  x[2 * in + 5] = std::nanf("");
  DeviceBuffer<float> dW = DeviceBuffer<float>::from_host(std::vector<float>(out * in, 0.5f));
  DeviceBuffer<float> dX = DeviceBuffer<float>::from_host(x), dY(n * out);
  cuda::AdaptedLinear<Lora<2>, float> dev(dW.data(), out, in);
  CHECK_THROWS_WITH_AS(dev.forward(dX.data(), dY.data(), n), doctest::Contains("at (2, 5)"), Error);
  AdapterConfig lenient;
  lenient.check_finite = false;
  cuda::AdaptedLinear<Lora<2>, float> quiet(dW.data(), out, in, nullptr, lenient);
  CHECK_NOTHROW(quiet.forward(dX.data(), dY.data(), n));
  CHECK_THROWS_WITH_AS((cuda::AdaptedLinear<Lora<8>, float>(dW.data(), out, in)),
                       doctest::Contains("adapter rank 8 exceeds min(in=8, out=6)"), Error);
}
