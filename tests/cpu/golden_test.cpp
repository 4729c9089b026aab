// Golden test: cpu::AdaptedLinear and cpu::AdamW against tensors that PyTorch computed
// independently (tests/reference/lora_layer.py writes tests/reference/lora_layer.safetensors;
// its docstring and tests/reference/README.md describe every case). Forward and backward are
// compared to torch autograd in float64, the dropout mask and the default init to an independent
// Python Philox, and AdamW to torch.optim.AdamW in float64 and float32.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <iomanip>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/core/philox.hpp"
#include "loralab/cpu/adamw.hpp"
#include "loralab/cpu/adapted_linear.hpp"
#include "loralab/io/safetensors.hpp"
#include "support/golden.hpp"
#include "support/testing.hpp"

namespace {

using loralab::io::SafetensorsFile;
using loralab::testing::Tolerance;
template <class T>
using MatrixR = loralab::cpu::MatrixR<T>;
using Index = Eigen::Index;

constexpr char kGoldenVersion[] = "1";  // bump together with VERSION in lora_layer.py
constexpr char kRegenerate[] =
    "regenerate it with `/usr/bin/python3 tests/reference/lora_layer.py` (see "
    "tests/reference/README.md)";

// Loads the golden file and checks its magic and version; fails the test case otherwise.
SafetensorsFile open_golden() {
  return loralab::testing::open_golden(LORALAB_TEST_REFERENCE_DIR "/lora_layer.safetensors",
                                       kGoldenVersion, kRegenerate);
}

template <class T>
std::vector<T> read_vector(const SafetensorsFile& f, const std::string& name, std::size_t size) {
  REQUIRE_MESSAGE(f.contains(name), "golden tensor " << name << " is missing; " << kRegenerate);
  std::vector<T> v = f.read<T>(name);
  REQUIRE_MESSAGE(v.size() == size,
                  "golden tensor " << name << " has " << v.size() << " entries, expected " << size);
  return v;
}

// A [rows x cols] row-major tensor of the golden file, converted to T.
template <class T>
MatrixR<T> read_matrix(const SafetensorsFile& f, const std::string& name, Index rows, Index cols) {
  const std::vector<T> v = read_vector<T>(f, name, static_cast<std::size_t>(rows * cols));
  return Eigen::Map<const MatrixR<T>>(v.data(), rows, cols);
}

template <class T>
T read_scalar(const SafetensorsFile& f, const std::string& name) {
  return read_vector<T>(f, name, 1)[0];
}

struct LoraCase {
  const char* prefix;
  Index n, in, out;
  bool bias;
  bool dropout;
};

// Runs forward + backward of one golden LoRA case in precision T and compares Y, dX, dA, dB.
template <class Spec, class T>
void check_lora_case(const LoraCase& c) {
  const SafetensorsFile f = open_golden();
  const std::string p = std::string(c.prefix) + ".";
  const int rank = static_cast<int>(read_scalar<double>(f, p + "rank"));
  MatrixR<T> X = read_matrix<T>(f, p + "X", c.n, c.in);
  MatrixR<T> W = read_matrix<T>(f, p + "W", c.out, c.in);
  MatrixR<T> GY = read_matrix<T>(f, p + "GY", c.n, c.out);
  std::vector<T> b;
  if (c.bias) b = read_vector<T>(f, p + "b", static_cast<std::size_t>(c.out));
  CHECK_MESSAGE(f.contains(p + "b") == c.bias, "bias presence of " << c.prefix);

  loralab::AdapterConfig cfg;
  cfg.rank = rank;
  cfg.alpha = read_scalar<double>(f, p + "alpha");
  loralab::cpu::Pass pass{true, 0};
  if (c.dropout) {
    cfg.dropout = read_scalar<double>(f, p + "p");
    cfg.seed = static_cast<std::uint64_t>(read_scalar<std::int64_t>(f, p + "seed"));
    cfg.module_id = static_cast<std::uint32_t>(read_scalar<std::int64_t>(f, p + "module_id"));
    pass.step = static_cast<std::uint64_t>(read_scalar<std::int64_t>(f, p + "step"));
  }
  loralab::cpu::AdaptedLinear<Spec, T> layer(W, b, cfg);
  REQUIRE(layer.rank() == rank);
  layer.A() = read_matrix<T>(f, p + "A", rank, c.in);
  layer.B() = read_matrix<T>(f, p + "B", c.out, rank);

  MatrixR<T> Y(c.n, c.out), dX(c.n, c.in);
  layer.forward(X, Y, pass);
  layer.backward(X, GY, dX);

  constexpr double rel = Tolerance<T>::rel, abs = Tolerance<T>::abs;
  INFO("case " << c.prefix);
  LORALAB_CHECK_CLOSE(Y, read_matrix<double>(f, p + "Y", c.n, c.out), rel, abs);
  LORALAB_CHECK_CLOSE(dX, read_matrix<double>(f, p + "dX", c.n, c.in), rel, abs);
  LORALAB_CHECK_CLOSE(layer.grad_A(), read_matrix<double>(f, p + "dA", rank, c.in), rel, abs);
  LORALAB_CHECK_CLOSE(layer.grad_B(), read_matrix<double>(f, p + "dB", c.out, rank), rel, abs);

  if (c.dropout) {  // the mask the C++ draws for this (seed, module, step) equals the Python one
    const MatrixR<double> D = read_matrix<double>(f, p + "D", c.n, c.in);
    const std::uint64_t stream = loralab::make_stream(
        loralab::RngPurpose::input_dropout, cfg.module_id, static_cast<std::uint32_t>(pass.step));
    const std::uint32_t threshold = loralab::drop_threshold(cfg.dropout);
    int mismatches = 0;
    for (Index r = 0; r < c.n; ++r)
      for (Index col = 0; col < c.in; ++col) {
        const auto e = static_cast<std::uint64_t>(r * c.in + col);
        const bool kept = loralab::philox_block(cfg.seed, stream, e >> 2).v[e & 3] >= threshold;
        mismatches += (kept ? 1.0 : 0.0) != D(r, col);
      }
    CHECK_MESSAGE(mismatches == 0, mismatches << " dropout mask entries differ from dropout.D");
  }
}

}  // namespace

TEST_SUITE("golden") {
  TEST_CASE_TEMPLATE("golden: plain LoRA forward/backward matches torch", T, float, double) {
    check_lora_case<loralab::Adapter<loralab::Rank<3>>, T>({"plain", 6, 10, 7, true, false});
  }

  TEST_CASE_TEMPLATE("golden: full-rank LoRA without bias matches torch", T, float, double) {
    check_lora_case<loralab::Adapter<loralab::DynamicRank>, T>(
        {"rank_full", 5, 4, 6, false, false});
  }

  TEST_CASE_TEMPLATE("golden: LoRA with input dropout matches torch and the Philox mask", T, float,
                     double) {
    check_lora_case<loralab::Adapter<loralab::DynamicRank, loralab::InputDropout>, T>(
        {"dropout", 6, 10, 7, true, true});
  }

  TEST_CASE_TEMPLATE("golden: default Kaiming-uniform A matches the Python Philox", T, float,
                     double) {
    const SafetensorsFile f = open_golden();
    const Index in = 10;
    const int rank = 3;
    MatrixR<T> W = MatrixR<T>::Zero(4, in);
    loralab::AdapterConfig cfg;
    cfg.seed = static_cast<std::uint64_t>(read_scalar<std::int64_t>(f, "init.seed"));
    cfg.module_id = static_cast<std::uint32_t>(read_scalar<std::int64_t>(f, "init.module_id"));
    loralab::cpu::AdaptedLinear<loralab::Adapter<loralab::Rank<rank>>, T> layer(W, {}, cfg);
    const MatrixR<double> want = read_matrix<double>(f, "init.A_init", rank, in);
    if constexpr (std::is_same_v<T, double>) {  // computed in double: bit-identical
      const MatrixR<double> got = layer.A();
      Index i = 0, j = 0;
      const double worst = (got - want).cwiseAbs().maxCoeff(&i, &j);
      const auto differing = ((got - want).array() != 0.0).count();
      std::ostringstream os;
      os << std::setprecision(17) << differing << " of " << got.size()
         << " entries differ; worst A(" << i << ", " << j << ") = " << got(i, j) << ", want "
         << want(i, j) << " (diff " << worst
         << "). 1-ulp differences usually mean lo + (hi - lo) * u was contracted into an FMA";
      CHECK_MESSAGE(worst == 0.0, os.str());
    } else {  // the double value rounded once to float
      LORALAB_CHECK_CLOSE(layer.A(), want, 1e-7, 1e-30);
    }
    CHECK((layer.B().array() == T(0)).all());
  }
}

namespace {

// Three AdamW steps from golden p0 with golden gradients; compares p1, p2, p3.
template <class T>
void check_adamw_case(const std::string& prefix, double rel, double abs) {
  const SafetensorsFile f = open_golden();
  const std::string p = prefix + ".";
  constexpr std::size_t kNumel = 12;
  std::vector<T> value = read_vector<T>(f, p + "p0", kNumel);
  std::vector<T> grad(kNumel, T(0));
  loralab::AdamWConfig cfg;
  cfg.lr = read_scalar<double>(f, p + "lr");
  cfg.beta1 = read_scalar<double>(f, p + "beta1");
  cfg.beta2 = read_scalar<double>(f, p + "beta2");
  cfg.eps = read_scalar<double>(f, p + "eps");
  cfg.weight_decay = read_scalar<double>(f, p + "weight_decay");
  loralab::cpu::AdamW<T> opt(std::vector<loralab::ParamTensor<T>>{loralab::ParamTensor<T>{
                                 std::span<T>(value), std::span<const T>(grad), {}}},
                             cfg);
  for (int t = 1; t <= 3; ++t) {
    const std::vector<T> g = read_vector<T>(f, p + "g" + std::to_string(t), kNumel);
    std::copy(g.begin(), g.end(), grad.begin());  // the optimizer holds a view of `grad`
    opt.step();
    INFO(prefix << " after step " << t);
    const auto got = Eigen::Map<const MatrixR<T>>(value.data(), 1, kNumel);
    LORALAB_CHECK_CLOSE(got, read_matrix<double>(f, p + "p" + std::to_string(t), 1, kNumel), rel,
                        abs);
  }
}

}  // namespace

TEST_SUITE("golden") {
  TEST_CASE("golden: AdamW<double> matches torch.optim.AdamW in float64") {
    check_adamw_case<double>("adamw", 1e-12, Tolerance<double>::abs);
  }

  TEST_CASE("golden: AdamW<float> matches torch.optim.AdamW in float32") {
    check_adamw_case<float>("adamw32", 1e-6, 1e-7);
  }
}
