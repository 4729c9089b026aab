// cpu::AdaptedLinear: gradients against central finite differences (double), the invariants of
// methods.md 1.11 and 2.7, memory accounting, and bad input. Arms are type lists (STYLE.md L9).
#include "loralab/cpu/adapted_linear.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "loralab/cpu/adamw.hpp"
#include "support/testing.hpp"

using namespace loralab;
using cpu::MatrixR;
using cpu::Pass;

namespace {

struct Shape {
  int n, in, out, rank;
};
// Includes rank 1 and ranks equal to min(in, out).
constexpr Shape kShapes[] = {{5, 6, 4, 1}, {4, 7, 5, 3}, {3, 5, 8, 5}, {6, 4, 4, 4}};

template <class T>
MatrixR<T> random_matrix(Eigen::Index r, Eigen::Index c, unsigned seed) {
  std::srand(seed);
  return MatrixR<T>::Random(r, c);
}

template <class Spec>
AdapterConfig config_for(int rank, double dropout) {
  AdapterConfig cfg;
  if constexpr (!Spec::rank::is_static) cfg.rank = rank;
  cfg.alpha = 3.0;
  cfg.dropout = dropout;
  cfg.seed = testing::kSeed;
  cfg.module_id = 11;
  return cfg;
}

// L = sum(Y .* G): dL/dY = G.
template <class Layer>
double loss(Layer& layer, const MatrixR<double>& X, const MatrixR<double>& G, Pass pass) {
  return (layer.forward(X, pass).array() * G.array()).sum();
}

// Central differences on every entry of `values`, compared with `grad`; entries with mask 0
// must have gradient exactly 0.
template <class Layer>
void check_entries(Layer& layer, double* values, const double* grad, const std::uint8_t* mask,
                   Eigen::Index count, const MatrixR<double>& X, const MatrixR<double>& G,
                   Pass pass, const std::string& what) {
  for (Eigen::Index i = 0; i < count; ++i) {
    if (mask && !mask[i]) {
      INFO(what << "[" << i << "] is frozen");
      CHECK(grad[i] == 0.0);
      continue;
    }
    const double saved = values[i];
    const double h = 1e-6 * std::max(1.0, std::abs(saved));
    values[i] = saved + h;
    const double up = loss(layer, X, G, pass);
    values[i] = saved - h;
    const double down = loss(layer, X, G, pass);
    values[i] = saved;
    const double fd = (up - down) / (2 * h);
    INFO(what << "[" << i << "]: analytic " << grad[i] << ", finite difference " << fd);
    CHECK(std::abs(fd - grad[i]) <= 1e-7 + 1e-6 * std::abs(fd));
  }
}

template <class Spec>
void gradient_check(const Shape& s, double dropout) {
  CAPTURE(s.n);
  CAPTURE(s.in);
  CAPTURE(s.out);
  CAPTURE(s.rank);
  CAPTURE(dropout);
  MatrixR<double> W = random_matrix<double>(s.out, s.in, 1);
  const MatrixR<double> bias = random_matrix<double>(1, s.out, 2);
  const MatrixR<double> X = random_matrix<double>(s.n, s.in, 3);
  const MatrixR<double> G = random_matrix<double>(s.n, s.out, 4);
  cpu::AdaptedLinear<Spec, double> layer(W, std::span<const double>(bias.data(), s.out),
                                         config_for<Spec>(s.rank, dropout));
  layer.B() = random_matrix<double>(s.out, s.rank, 5);  // B = 0 would make dA vanish
  REQUIRE(X.norm() > 0);     // guard against a vacuous pass (CUTLASS's TensorNorm check)
  const Pass pass{true, 7};  // fixed step: the same dropout mask in every forward
  layer.forward(X, pass);
  MatrixR<double> dX(s.n, s.in);
  layer.backward(X, G, dX);
  const MatrixR<double> dA = layer.grad_A(), dB = layer.grad_B();
  const bool has_mask = !layer.mask().empty();
  // Under FreezeA every entry of A is frozen: its gradient must be exactly 0.
  const std::vector<std::uint8_t> all_frozen(static_cast<std::size_t>(dA.size()), 0);
  const std::uint8_t* mask_a = Spec::freeze::freezes_a ? all_frozen.data()
                               : has_mask              ? layer.mask_A().data()
                                                       : nullptr;
  check_entries(layer, layer.A().data(), dA.data(), mask_a, dA.size(), X, G, pass, "dA");
  check_entries(layer, layer.B().data(), dB.data(), has_mask ? layer.mask_B().data() : nullptr,
                dB.size(), X, G, pass, "dB");
  MatrixR<double> Xp = X;
  for (Eigen::Index i = 0; i < X.size(); ++i) {
    const double h = 1e-6 * std::max(1.0, std::abs(X.data()[i]));
    Xp = X;
    Xp.data()[i] += h;
    const double up = loss(layer, Xp, G, pass);
    Xp.data()[i] -= 2 * h;
    const double down = loss(layer, Xp, G, pass);
    const double fd = (up - down) / (2 * h);
    INFO("dX[" << i << "]: analytic " << dX.data()[i] << ", finite difference " << fd);
    CHECK(std::abs(fd - dX.data()[i]) <= 1e-7 + 1e-6 * std::abs(fd));
  }
}

}  // namespace

using GradArms =
    std::tuple<Adapter<DynamicRank>, Adapter<DynamicRank, RandomMask<50>>,
               Adapter<DynamicRank, FreezeA>, Adapter<DynamicRank, RandomMask<30>, RsLoraScale>,
               Adapter<DynamicRank, GaussianA>>;

TEST_CASE_TEMPLATE_DEFINE("gradients match central finite differences (double)", Spec, grad_check) {
  for (const Shape& s : kShapes) {
    gradient_check<Spec>(s, 0.0);
    // With InputDropout and a fixed mask: the same spec plus the dropout axis.
    using WithDropout = Adapter<DynamicRank, typename Spec::freeze, typename Spec::init,
                                typename Spec::scaling, InputDropout>;
    gradient_check<WithDropout>(s, 0.3);
  }
}
TEST_CASE_TEMPLATE_APPLY(grad_check, GradArms);

TEST_CASE("gradient check with a compile-time rank") {
  gradient_check<Adapter<Rank<2>>>({4, 5, 3, 2}, 0.0);
}

// ---- invariants -----------------------------------------------------------------------------

TEST_CASE_TEMPLATE("zero-B adapter equals the base layer; dA = 0 at step 0 (1.11 inv. 1, 2)", T,
                   float, double) {
  MatrixR<T> W = random_matrix<T>(12, 20, 1);
  const MatrixR<T> b = random_matrix<T>(1, 12, 2), X = random_matrix<T>(9, 20, 3);
  cpu::AdaptedLinear<LoraSP<4>, T> layer(W, std::span<const T>(b.data(), 12));
  const MatrixR<T> Y = layer.forward(X);
  MatrixR<T> base = X * W.transpose();
  base.rowwise() += b.row(0);
  CHECK((Y - base).cwiseAbs().maxCoeff() == T(0));
  layer.backward(X, random_matrix<T>(9, 12, 4));
  CHECK(layer.grad_A().cwiseAbs().maxCoeff() == T(0));
  CHECK(layer.grad_B().cwiseAbs().maxCoeff() > T(0));
}

TEST_CASE_TEMPLATE("merge then forward equals the unmerged forward; unmerge recovers W (inv. 3, 4)",
                   T, float, double) {
  MatrixR<T> W = random_matrix<T>(24, 16, 1);
  const MatrixR<T> W0 = W, X = random_matrix<T>(10, 16, 2);
  AdapterConfig cfg;
  cfg.alpha = 16;
  cpu::AdaptedLinear<Lora<4>, T> layer(W, {}, cfg);
  layer.B() = random_matrix<T>(24, 4, 3);
  const MatrixR<T> unmerged = layer.forward(X, {.training = false});
  layer.merge();
  CHECK(layer.merged());
  CHECK((W - W0).norm() > 0);
  const MatrixR<T> merged = layer.forward(X, {.training = false});
  LORALAB_CHECK_CLOSE(merged, unmerged, testing::Tolerance<T>::rel,
                      testing::Tolerance<T>::abs * 10);
  const MatrixR<T> plain = X * W.transpose();  // merged = the plain base layer with the new W
  LORALAB_CHECK_CLOSE(merged, plain, testing::Tolerance<T>::rel, testing::Tolerance<T>::abs);
  layer.unmerge();
  const double unmerge_rel = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  LORALAB_CHECK_CLOSE(W, W0, unmerge_rel, 1e-7);
  CHECK_THROWS_WITH_AS(layer.backward(X, random_matrix<T>(10, 24, 4)),
                       doctest::Contains("[loralab.state]"), Error);  // forward ran merged
}

TEST_CASE("doubling alpha doubles the branch exactly (inv. 6)") {
  MatrixR<double> W = random_matrix<double>(6, 8, 1);
  const MatrixR<double> X = random_matrix<double>(5, 8, 2), B = random_matrix<double>(6, 2, 3);
  AdapterConfig one, two;
  one.alpha = 1.5;
  two.alpha = 3.0;
  cpu::AdaptedLinear<Lora<2>, double> a(W, {}, one), b(W, {}, two);
  a.B() = B;
  b.B() = B;
  const MatrixR<double> base = X * W.transpose();
  CHECK(((b.forward(X) - base) - 2 * (a.forward(X) - base)).cwiseAbs().maxCoeff() <= 1e-15);
}

TEST_CASE(
    "dropout: eval is deterministic, train masks follow the step, MC mean is the eval branch (inv. "
    "8)") {
  using Spec = Adapter<Rank<3>, InputDropout>;
  MatrixR<double> W = random_matrix<double>(5, 16, 1);
  const MatrixR<double> X = random_matrix<double>(4, 16, 2);
  AdapterConfig cfg;
  cfg.dropout = 0.5;
  cpu::AdaptedLinear<Spec, double> layer(W, {}, cfg);
  layer.B() = random_matrix<double>(5, 3, 3);
  const MatrixR<double> base = X * W.transpose();
  const MatrixR<double> eval = layer.forward(X, {.training = false}) - base;
  CHECK((layer.forward(X, {.training = false}) - base - eval).norm() == 0.0);
  const MatrixR<double> s1 = layer.forward(X, {true, 1}), s1b = layer.forward(X, {true, 1});
  CHECK((s1 - s1b).norm() == 0.0);                         // same step, same mask
  CHECK((s1 - layer.forward(X, {true, 2})).norm() > 0.0);  // another step, another mask
  MatrixR<double> mean = MatrixR<double>::Zero(4, 5);
  const int passes = 4000;
  for (int k = 0; k < passes; ++k) mean += layer.forward(X, {true, std::uint64_t(k)}) - base;
  mean /= passes;
  CHECK((mean - eval).cwiseAbs().mean() < 0.05 * eval.cwiseAbs().mean());
}

TEST_CASE_TEMPLATE(
    "frozen entries are bit-identical after 100 AdamW steps; frozen B stays 0 (2.7 inv. 1, 2)", T,
    float, double) {
  MatrixR<T> W = random_matrix<T>(20, 30, 1);
  cpu::AdaptedLinear<LoraSP<6>, T> layer(W);
  const std::vector<T> before(layer.A().data(),
                              layer.A().data() + layer.A().size() + layer.B().size());
  cpu::AdamW<T> opt(layer.parameters(), {.lr = 0.05, .weight_decay = 0.1});
  for (int step = 0; step < 100; ++step) {
    const MatrixR<T> X = random_matrix<T>(8, 30, 100 + step);
    layer.forward(X);
    layer.zero_grad();
    layer.backward(X, random_matrix<T>(8, 20, 500 + step));
    opt.step();
  }
  const auto mask = layer.mask();
  const T* now = layer.A().data();
  int frozen = 0, moved = 0;
  for (std::size_t i = 0; i < mask.size(); ++i) {
    if (!mask[i]) {
      ++frozen;
      CHECK(std::memcmp(&now[i], &before[i], sizeof(T)) == 0);
      if (i >= std::size_t(layer.A().size())) CHECK(now[i] == T(0));
    } else {
      moved += now[i] != before[i];
    }
  }
  CHECK(frozen > 0);
  CHECK(moved ==
        std::count(mask.begin(), mask.end(), std::uint8_t{1}));  // every trainable entry moved
  CHECK(opt.state_bytes() == layer.memory(8).optimizer_state_bytes);
}

// ---- masks -----------------------------------------------------------------------------------

TEST_CASE(
    "LoRA-SP masks: exact counts, deterministic by seed and module, Bernoulli fraction (2.7 inv. "
    "3, 4)") {
  MatrixR<float> W = random_matrix<float>(33, 41, 1);
  AdapterConfig cfg;
  cfg.seed = 5;
  cpu::AdaptedLinear<LoraSP<7>, float> a(W, {}, cfg), same(W, {}, cfg);
  CHECK(std::count(a.mask_A().begin(), a.mask_A().end(), 1) == 7 * 41 / 2);
  CHECK(std::count(a.mask_B().begin(), a.mask_B().end(), 1) == 33 * 7 / 2);
  CHECK(std::equal(a.mask().begin(), a.mask().end(), same.mask().begin()));
  AdapterConfig other_seed = cfg, other_module = cfg;
  other_seed.seed = 6;
  other_module.module_id = 1;
  cpu::AdaptedLinear<LoraSP<7>, float> b(W, {}, other_seed), c(W, {}, other_module);
  CHECK(!std::equal(a.mask().begin(), a.mask().end(), b.mask().begin()));
  CHECK(!std::equal(a.mask().begin(), a.mask().end(), c.mask().begin()));

  cpu::AdaptedLinear<Adapter<Rank<16>, RandomMask<25>>, float> quarter(W);
  CHECK(quarter.memory(1).frozen_adapter_params ==
        (16 * 41 - 16 * 41 * 75 / 100) + (33 * 16 - 33 * 16 * 75 / 100));

  AdapterConfig bern = cfg;
  bern.mask_sampling = MaskSampling::bernoulli;
  MatrixR<float> Wbig = random_matrix<float>(256, 256, 2);
  cpu::AdaptedLinear<Adapter<Rank<32>, RandomMask<50>>, float> d(Wbig, {}, bern);
  const double n = double(d.mask().size());
  const double frac = std::count(d.mask().begin(), d.mask().end(), 1) / n;
  CHECK(std::abs(frac - 0.5) < 5 * std::sqrt(0.25 / n));
}

// ---- memory accounting -----------------------------------------------------------------------

TEST_CASE("memory accounting matches the formulas (1.8, 1.9, 2.4)") {
  MatrixR<float> W = random_matrix<float>(48, 32, 1);
  const int r = 8, in = 32, out = 48, n = 100;
  cpu::AdaptedLinear<Lora<r>, float> lora(W);
  const auto m = lora.memory(n);
  CHECK(m.trainable_params == r * (in + out));
  CHECK(m.frozen_adapter_params == 0);
  CHECK(m.parameter_bytes == 4 * r * (in + out));
  CHECK(m.gradient_bytes == 4 * r * (in + out));
  CHECK(m.optimizer_state_bytes == 2 * 4 * r * (in + out));
  CHECK(m.mask_bytes == 0);
  CHECK(m.activation_bytes == 4 * n * (r + in));
  cpu::AdaptedLinear<LoraSP<r>, float> sp(W);
  CHECK(sp.memory(n).trainable_params == r * in / 2 + out * r / 2);
  CHECK(sp.memory(n).mask_bytes == r * (in + out));
  MatrixR<double> Wd = W.cast<double>();
  cpu::AdaptedLinear<Adapter<Rank<r>, FreezeA>, double> fa(Wd);
  CHECK(fa.memory(n).trainable_params == out * r);
  CHECK(fa.memory(n).saved_input_bytes == 0);  // dA is never formed, X need not be kept
  // RoBERTa-base, q and v, r = 8: 294,912 trainable parameters (methods.md 1.8).
  MatrixR<float> q = MatrixR<float>::Zero(768, 768);
  cpu::AdaptedLinear<Lora<8>, float> q_adapter(q);
  CHECK(12 * 2 * q_adapter.memory(1).trainable_params == 294912);
}

// ---- bad input -------------------------------------------------------------------------------

TEST_CASE("bad input gives a clear error and writes nothing") {
  MatrixR<float> W = random_matrix<float>(48, 32, 1);
  AdapterConfig cfg;
  cfg.rank = 64;
  CHECK_THROWS_WITH_AS((cpu::AdaptedLinear<Adapter<>, float>(W, {}, cfg)),
                       doctest::Contains("adapter rank 64 exceeds min(in=32, out=48)"), Error);
  cfg.rank = -1;
  CHECK_THROWS_WITH_AS((cpu::AdaptedLinear<Adapter<>, float>(W, {}, cfg)),
                       doctest::Contains("rank must be >= 1"), Error);
  cfg.rank = 3;
  CHECK_THROWS_WITH_AS((cpu::AdaptedLinear<Lora<4>, float>(W, {}, cfg)),
                       doctest::Contains("contradicts the compile-time Rank<4>"), Error);
  const std::vector<float> short_bias(47);
  CHECK_THROWS_WITH_AS((cpu::AdaptedLinear<Lora<4>, float>(W, short_bias)),
                       doctest::Contains("bias has 47 entries, expected out=48"), Error);
  AdapterConfig bad_p;
  bad_p.dropout = 1.0;
  CHECK_THROWS_WITH_AS((cpu::AdaptedLinear<Adapter<Rank<4>, InputDropout>, float>(W, {}, bad_p)),
                       doctest::Contains("dropout rate must be in [0, 1)"), Error);

  cpu::AdaptedLinear<Lora<4>, float> layer(W);
  MatrixR<float> X = random_matrix<float>(5, 32, 2);
  MatrixR<float> Y = MatrixR<float>::Constant(5, 48, 42.0f);
  MatrixR<float> wrong = random_matrix<float>(5, 31, 3);
  CHECK_THROWS_WITH_AS(layer.forward(wrong, Y),
                       doctest::Contains("X has 31 columns, the layer expects in=32"), Error);
  MatrixR<float> Ybad(5, 47);
  CHECK_THROWS_WITH_AS(layer.forward(X, Ybad),
                       doctest::Contains("Y is [5 x 47], expected [5 x 48]"), Error);
  CHECK_THROWS_WITH_AS(layer.backward(X, MatrixR<float>::Zero(5, 48)),
                       doctest::Contains("backward without a preceding forward"), Error);

  // NaN in the input: documented choice is to throw (check_finite = true, the default), naming
  // the position, before anything is written; with check_finite = false the NaN propagates.
  X(2, 3) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH_AS(layer.forward(X, Y),
                       doctest::Contains("non-finite value nan in forward input X at (2, 3)"),
                       Error);
  CHECK((Y.array() == 42.0f).all());
  AdapterConfig propagate;
  propagate.check_finite = false;
  cpu::AdaptedLinear<Lora<4>, float> lenient(W, {}, propagate);
  lenient.forward(X, Y);
  CHECK(std::isnan(Y(2, 0)));
  CHECK(!std::isnan(Y(1, 0)));

  X(2, 3) = 0;
  layer.forward(X, Y);
  MatrixR<float> GY = MatrixR<float>::Ones(5, 48);
  GY(0, 0) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH_AS(layer.backward(X, GY), doctest::Contains("backward input dL/dY"), Error);
  CHECK(layer.grad_B().cwiseAbs().maxCoeff() == 0.0f);  // nothing accumulated
  CHECK_THROWS_WITH_AS(layer.backward(X.topRows(4), GY.topRows(4)),
                       doctest::Contains("forward saw [5 x 32]"), Error);

  // A merge that would overflow leaves W untouched.
  layer.B().setConstant(3e38f);
  layer.A().setConstant(3e38f);
  const MatrixR<float> W_before = W;
  CHECK_THROWS_WITH_AS(layer.merge(), doctest::Contains("[loralab.numeric] merge"), Error);
  CHECK(!layer.merged());
  CHECK((W.array() == W_before.array()).all());
}

TEST_CASE("reset redraws A from the seed, zeroes B and unmerges") {
  MatrixR<double> W = random_matrix<double>(8, 8, 1);
  const MatrixR<double> W0 = W;
  cpu::AdaptedLinear<Lora<2>, double> layer(W);
  const MatrixR<double> A0 = layer.A();
  const double bound = 1 / std::sqrt(8.0);
  CHECK(A0.cwiseAbs().maxCoeff() <= bound);
  layer.A().setRandom();
  layer.B().setRandom();
  layer.merge();
  layer.reset();
  CHECK(!layer.merged());
  CHECK((layer.A() - A0).norm() == 0.0);
  CHECK(layer.B().norm() == 0.0);
  LORALAB_CHECK_CLOSE(W, W0, 1e-14, 1e-15);
}

TEST_CASE("all_finite detects NaN, +Inf and -Inf anywhere and accepts huge finite values") {
  MatrixR<float> M = MatrixR<float>::Constant(7, 13, 3e38f);  // a plain sum would overflow
  CHECK(cpu::all_finite(M));
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    MatrixR<float> N = M;
    N(6, 12) = bad;
    CHECK(!cpu::all_finite(N));
    N(6, 12) = 0;
    N(0, 0) = bad;
    CHECK(!cpu::all_finite(N));
  }
}

TEST_CASE("backward_input gives the same dX as backward and leaves the gradients alone") {
  using Spec = Adapter<Rank<3>, RandomMask<50>, InputDropout>;
  MatrixR<double> W = random_matrix<double>(9, 11, 1);
  AdapterConfig cfg;
  cfg.dropout = 0.2;
  cpu::AdaptedLinear<Spec, double> layer(W, {}, cfg);
  layer.B() = random_matrix<double>(9, 3, 2);
  const MatrixR<double> X = random_matrix<double>(6, 11, 3), GY = random_matrix<double>(6, 9, 4);
  MatrixR<double> dX_full(6, 11), dX_only(6, 11);
  layer.forward(X, Pass{true, 5});
  layer.backward(X, GY, dX_full);
  const MatrixR<double> dA = layer.grad_A(), dB = layer.grad_B();
  layer.forward(X, Pass{true, 5});
  layer.backward_input(X, GY, dX_only);
  CHECK((dX_full - dX_only).cwiseAbs().maxCoeff() == 0.0);
  CHECK((layer.grad_A() - dA).cwiseAbs().maxCoeff() == 0.0);  // not accumulated a second time
  CHECK((layer.grad_B() - dB).cwiseAbs().maxCoeff() == 0.0);
}
