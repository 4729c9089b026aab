// Model layers (issue 4): every backward against central finite differences in double, the
// write/accumulate contracts, the invariants of attention, LayerNorm and cross-entropy, float
// against double, GptConfig, and bad input.
#include "loralab/model/layers.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "loralab/model/config.hpp"
#include "support/testing.hpp"

using namespace loralab;
using cpu::MatrixR;
using Eigen::Index;

namespace {

template <class T>
MatrixR<T> random_matrix(Index r, Index c, unsigned seed) {
  std::srand(static_cast<unsigned>(testing::kSeed) + seed);
  return MatrixR<T>::Random(r, c);
}

template <class T>
std::vector<T> random_vector(Index n, unsigned seed) {
  const MatrixR<T> m = random_matrix<T>(1, n, seed);
  return {m.data(), m.data() + n};
}

template <class To, class From>
std::vector<To> cast_vector(const std::vector<From>& v) {
  return {v.begin(), v.end()};
}

double dot(const MatrixR<double>& A, const MatrixR<double>& G) {
  return (A.array() * G.array()).sum();
}

// Central differences of loss() on every entry of values[0 .. count), against grad.
template <class Loss>
void check_fd(double* values, const double* grad, Index count, Loss&& loss,
              const std::string& what) {
  for (Index i = 0; i < count; ++i) {
    const double saved = values[i];
    const double h = 1e-6 * std::max(1.0, std::abs(saved));
    values[i] = saved + h;
    const double up = loss();
    values[i] = saved - h;
    const double down = loss();
    values[i] = saved;
    const double fd = (up - down) / (2 * h);
    INFO(what << "[" << i << "]: analytic " << grad[i] << ", finite difference " << fd);
    CHECK(std::abs(fd - grad[i]) <= 1e-7 + 1e-6 * std::abs(fd));
  }
}

std::vector<double> minus(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> r(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) r[i] = a[i] - b[i];
  return r;
}

// Hook arrays [B*H*T x T] for one attention shape.
struct HookArrays {
  std::vector<std::uint8_t> keep;
  std::vector<float> scale;
};

// DropKey keep mask with about 30% dropped, plus one row with every allowed key dropped
// (b=0, h=last, i=2) and row i=0 of (b=last, h=0) (its only key dropped); DropAttention scales
// 0 or 1/(1-p) with p=0.25.
HookArrays make_hooks(int B, int T, int H) {
  const std::size_t rows = std::size_t(B) * H * T;
  HookArrays a{std::vector<std::uint8_t>(rows * T), std::vector<float>(rows * T)};
  std::mt19937 gen(testing::kSeed);
  for (std::size_t k = 0; k < a.keep.size(); ++k) {
    a.keep[k] = gen() % 10 >= 3;
    a.scale[k] = gen() % 4 == 0 ? 0.0f : 1.0f / (1.0f - 0.25f);
  }
  const std::size_t dropped_row = std::size_t(H - 1) * T + 2;
  for (int j = 0; j <= 2; ++j) a.keep[dropped_row * T + j] = 0;
  const std::size_t first_row = std::size_t(B - 1) * H * T;
  a.keep[first_row * T] = 0;
  return a;
}

template <class T>
struct AttentionRun {
  MatrixR<T> out, probs;
};

template <class T>
AttentionRun<T> run_attention(const MatrixR<T>& qkv, int B, int T_, int H,
                              const model::AttentionHooks& hooks) {
  AttentionRun<T> r{MatrixR<T>(qkv.rows(), qkv.cols() / 3), MatrixR<T>(Index(B) * H * T_, T_)};
  model::attention_forward<T>(qkv, B, T_, H, r.out, r.probs, hooks);
  return r;
}

void attention_gradient_check(int B, int T, int H, Index d, const model::AttentionHooks& hooks) {
  CAPTURE(B);
  CAPTURE(T);
  CAPTURE(H);
  CAPTURE(d);
  CAPTURE(hooks.logit_keep != nullptr);
  CAPTURE(hooks.weight_scale != nullptr);
  MatrixR<double> qkv = 1.5 * random_matrix<double>(Index(B) * T, 3 * d, 1);
  const MatrixR<double> G = random_matrix<double>(Index(B) * T, d, 2);
  const AttentionRun<double> fwd = run_attention(qkv, B, T, H, hooks);
  MatrixR<double> dqkv = MatrixR<double>::Constant(qkv.rows(), qkv.cols(), 99.0);  // written
  model::attention_backward<double>(G, qkv, fwd.probs, B, T, H, dqkv, hooks);
  REQUIRE(qkv.norm() > 0);
  check_fd(
      qkv.data(), dqkv.data(), qkv.size(),
      [&] { return dot(run_attention(qkv, B, T, H, hooks).out, G); }, "dqkv");
}

}  // namespace

// ---- finite differences (double) ------------------------------------------------------------

TEST_CASE("layernorm: dX, dgamma, dbeta match finite differences and accumulate") {
  const Index n = 4, d = 6;
  const double eps = 1e-5;
  MatrixR<double> X = 2.0 * random_matrix<double>(n, d, 1).array() + 0.5;
  std::vector<double> gamma = random_vector<double>(d, 2), beta = random_vector<double>(d, 3);
  const MatrixR<double> G = random_matrix<double>(n, d, 4);
  auto loss = [&] {
    MatrixR<double> Y(n, d);
    std::vector<double> mean(n), rstd(n);
    model::layernorm_forward<double>(X, gamma, beta, eps, Y, mean, rstd);
    return dot(Y, G);
  };
  MatrixR<double> Y(n, d);
  std::vector<double> mean(n), rstd(n);
  model::layernorm_forward<double>(X, gamma, beta, eps, Y, mean, rstd);
  // Start from non-zero gradients: the analytic gradient is what backward added.
  const MatrixR<double> dX0 = random_matrix<double>(n, d, 5);
  const std::vector<double> dgamma0 = random_vector<double>(d, 6),
                            dbeta0 = random_vector<double>(d, 7);
  MatrixR<double> dX = dX0;
  std::vector<double> dgamma = dgamma0, dbeta = dbeta0;
  model::layernorm_backward<double>(G, X, gamma, mean, rstd, dX, dgamma, dbeta);
  const MatrixR<double> gX = dX - dX0;
  const std::vector<double> ggamma = minus(dgamma, dgamma0), gbeta = minus(dbeta, dbeta0);
  check_fd(X.data(), gX.data(), X.size(), loss, "dX");
  check_fd(gamma.data(), ggamma.data(), d, loss, "dgamma");
  check_fd(beta.data(), gbeta.data(), d, loss, "dbeta");
}

TEST_CASE("gelu: dX matches finite differences and is written, not accumulated") {
  MatrixR<double> X = 4.0 * random_matrix<double>(4, 5, 1);
  X(0, 0) = 0.0;
  X(1, 1) = 6.0;
  X(2, 2) = -6.0;
  const MatrixR<double> G = random_matrix<double>(4, 5, 2);
  MatrixR<double> dX = MatrixR<double>::Constant(4, 5, 123.0);
  model::gelu_backward<double>(X, G, dX);
  check_fd(
      X.data(), dX.data(), X.size(),
      [&] {
        MatrixR<double> Y(4, 5);
        model::gelu_forward<double>(X, Y);
        return dot(Y, G);
      },
      "dX");
  // Known values of GPT-2's gelu (tanh form): gelu(0) = 0, gelu(1) = 0.841191990...
  MatrixR<double> x(1, 2), y(1, 2);
  x << 0.0, 1.0;
  model::gelu_forward<double>(x, y);
  CHECK(y(0, 0) == 0.0);
  CHECK(y(0, 1) == doctest::Approx(0.8411919906082768).epsilon(1e-12));
  // In place on dY.
  MatrixR<double> inplace = G;
  model::gelu_backward<double>(X, inplace, inplace);
  LORALAB_CHECK_CLOSE(inplace, dX, 1e-15, 1e-15);
}

TEST_CASE("attention: dqkv matches finite differences, with and without hooks") {
  const int B = 2, T = 5, H = 2;
  const Index d = 6;
  const HookArrays a = make_hooks(B, T, H);
  attention_gradient_check(B, T, H, d, {});
  attention_gradient_check(B, T, H, d, {a.keep.data(), nullptr});
  attention_gradient_check(B, T, H, d, {nullptr, a.scale.data()});
  attention_gradient_check(B, T, H, d, {a.keep.data(), a.scale.data()});
  // One head of width d, and T = 1.
  attention_gradient_check(1, 4, 1, 3, {});
  attention_gradient_check(3, 1, 3, 3, {});
}

TEST_CASE("embedding: dwte, dwpe match finite differences and accumulate (repeated token)") {
  const int B = 2, T = 3;
  const Index V = 5, d = 4, context = 4;
  const std::vector<std::int32_t> tokens = {1, 3, 1, 4, 1, 0};  // token 1 three times, 2 never
  MatrixR<double> wte = random_matrix<double>(V, d, 1), wpe = random_matrix<double>(context, d, 2);
  const MatrixR<double> G = random_matrix<double>(Index(B) * T, d, 3);
  auto loss = [&] {
    MatrixR<double> X(Index(B) * T, d);
    model::embedding_forward<double>(tokens, B, T, wte, wpe, X);
    return dot(X, G);
  };
  const MatrixR<double> dwte0 = random_matrix<double>(V, d, 4);
  const MatrixR<double> dwpe0 = random_matrix<double>(context, d, 5);
  MatrixR<double> dwte = dwte0, dwpe = dwpe0;
  model::embedding_backward<double>(G, tokens, B, T, dwte, dwpe);
  const MatrixR<double> gwte = dwte - dwte0, gwpe = dwpe - dwpe0;
  check_fd(wte.data(), gwte.data(), wte.size(), loss, "dwte");
  check_fd(wpe.data(), gwpe.data(), wpe.size(), loss, "dwpe");
  CHECK(dwte.row(2) == dwte0.row(2));  // absent token: untouched
  CHECK(dwpe.row(3) == dwpe0.row(3));  // position >= T: untouched
  CHECK(gwte.row(1).isApprox(G.row(0) + G.row(2) + G.row(4), 1e-14));
}

TEST_CASE("tied head: dX (written) and dwte (accumulated) match finite differences") {
  const Index n = 4, d = 3, V = 5;
  MatrixR<double> X = random_matrix<double>(n, d, 1), wte = random_matrix<double>(V, d, 2);
  const MatrixR<double> G = random_matrix<double>(n, V, 3);
  auto loss = [&] {
    MatrixR<double> logits(n, V);
    model::lm_head_forward<double>(X, wte, logits);
    return dot(logits, G);
  };
  MatrixR<double> dX = MatrixR<double>::Constant(n, d, 42.0);
  const MatrixR<double> dwte0 = random_matrix<double>(V, d, 4);
  MatrixR<double> dwte = dwte0;
  model::lm_head_backward<double>(G, X, wte, dX, dwte);
  const MatrixR<double> gwte = dwte - dwte0;
  check_fd(X.data(), dX.data(), X.size(), loss, "dX");
  check_fd(wte.data(), gwte.data(), wte.size(), loss, "dwte");
}

TEST_CASE("cross-entropy: dlogits matches finite differences; ignored rows are 0") {
  const Index n = 5, V = 7;
  const std::vector<std::int32_t> targets = {2, -1, 6, 0, -1};
  MatrixR<double> logits = 3.0 * random_matrix<double>(n, V, 1);
  auto loss = [&] {
    MatrixR<double> probs(n, V);
    return model::cross_entropy_forward<double>(logits, targets, probs).loss;
  };
  MatrixR<double> probs(n, V);
  const model::CrossEntropyResult r = model::cross_entropy_forward<double>(logits, targets, probs);
  CHECK(r.count == 3);
  MatrixR<double> dlogits = MatrixR<double>::Constant(n, V, 5.0);  // written
  model::cross_entropy_backward<double>(probs, targets, r.count, dlogits);
  check_fd(logits.data(), dlogits.data(), logits.size(), loss, "dlogits");
  CHECK(dlogits.row(1).isZero(0.0));
  CHECK(dlogits.row(4).isZero(0.0));
  // The loss by hand: mean of -log softmax at the targets.
  double want = 0;
  for (Index i : {0, 2, 3}) {
    double sum = 0;
    for (Index j = 0; j < V; ++j) sum += std::exp(logits(i, j));
    const double lse = std::log(sum);
    want += lse - logits(i, targets[std::size_t(i)]);
  }
  CHECK(r.loss == doctest::Approx(want / 3).epsilon(1e-13));
  // In place: probs over logits, then dlogits over probs.
  MatrixR<double> buf = logits;
  const model::CrossEntropyResult r2 = model::cross_entropy_forward<double>(buf, targets, buf);
  CHECK(r2.loss == r.loss);
  CHECK(buf == probs);
  model::cross_entropy_backward<double>(buf, targets, r2.count, buf);
  CHECK(buf == dlogits);
}

// ---- invariants -----------------------------------------------------------------------------

TEST_CASE_TEMPLATE("attention: rows sum to 1, zero above the diagonal, causal", T, float, double) {
  const int B = 2, S = 6, H = 3;
  const Index d = 6;
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  const MatrixR<T> qkv = T(2) * random_matrix<T>(Index(B) * S, 3 * d, 1);
  const AttentionRun<T> base = run_attention<T>(qkv, B, S, H, {});
  for (Index r = 0; r < base.probs.rows(); ++r) {
    const Index i = r % S;
    CHECK(std::abs(double(base.probs.row(r).sum()) - 1.0) <= tol);
    CHECK((base.probs.row(r).tail(S - 1 - i).array() == T(0)).all());
    CHECK((base.probs.row(r).head(i + 1).array() > T(0)).all());
  }
  // Changing q, k and v at position 3 of batch 0 leaves earlier positions and batch 1 exactly
  // unchanged.
  MatrixR<T> changed = qkv;
  changed.row(3) = T(5) * random_matrix<T>(1, 3 * d, 2);
  const AttentionRun<T> after = run_attention<T>(changed, B, S, H, {});
  CHECK(after.out.topRows(3) == base.out.topRows(3));
  CHECK(after.out.bottomRows(S) == base.out.bottomRows(S));
  CHECK(after.out.row(3) != base.out.row(3));
  // weight_scale of ones is plain attention.
  const std::vector<float> ones(std::size_t(B) * H * S * S, 1.0f);
  const AttentionRun<T> scaled = run_attention<T>(qkv, B, S, H, {nullptr, ones.data()});
  LORALAB_CHECK_CLOSE(scaled.out, base.out, testing::Tolerance<T>::rel, testing::Tolerance<T>::abs);
  CHECK(scaled.probs == base.probs);
}

TEST_CASE_TEMPLATE("attention: DropKey zeros dropped keys; an all-dropped row is 0, not NaN", T,
                   float, double) {
  const int B = 2, S = 5, H = 2;
  const Index d = 6, hd = d / H;
  const HookArrays a = make_hooks(B, S, H);
  const model::AttentionHooks hooks{a.keep.data(), a.scale.data()};
  const MatrixR<T> qkv = random_matrix<T>(Index(B) * S, 3 * d, 1);
  const AttentionRun<T> fwd = run_attention<T>(qkv, B, S, H, hooks);
  CHECK(cpu::all_finite(fwd.out));
  CHECK(cpu::all_finite(fwd.probs));
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  int all_dropped_rows = 0;
  for (Index r = 0; r < fwd.probs.rows(); ++r) {
    const Index i = r % S;
    bool any_kept = false;
    for (Index j = 0; j < S; ++j) {
      const bool kept = j <= i && a.keep[std::size_t(r * S + j)];
      any_kept = any_kept || kept;
      if (!kept) CHECK(fwd.probs(r, j) == T(0));
    }
    if (any_kept) {
      CHECK(std::abs(double(fwd.probs.row(r).sum()) - 1.0) <= tol);
    } else {
      ++all_dropped_rows;
      CHECK(fwd.probs.row(r).isZero(0));
      const Index b = r / (Index(H) * S), h = (r / S) % H;
      CHECK(fwd.out.block(b * S + i, h * hd, 1, hd).isZero(0));  // zero output, no NaN
    }
  }
  CHECK(all_dropped_rows >= 2);
  MatrixR<T> dqkv(qkv.rows(), qkv.cols());
  model::attention_backward<T>(random_matrix<T>(Index(B) * S, d, 2), qkv, fwd.probs, B, S, H, dqkv,
                               hooks);
  CHECK(cpu::all_finite(dqkv));
}

TEST_CASE_TEMPLATE("layernorm: rows have mean 0 and variance 1 with gamma = 1, beta = 0", T, float,
                   double) {
  const Index n = 5, d = 16;
  const MatrixR<T> X = T(3) * random_matrix<T>(n, d, 1).array() - T(1);
  const std::vector<T> gamma(d, T(1)), beta(d, T(0));
  MatrixR<T> Y(n, d);
  std::vector<T> mean(n), rstd(n);
  model::layernorm_forward<T>(X, gamma, beta, 1e-12, Y, mean, rstd);
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-10;
  for (Index i = 0; i < n; ++i) {
    const double m = double(Y.row(i).mean());
    const double var = double((Y.row(i).array() - T(m)).square().mean());
    CHECK(std::abs(m) <= tol);
    CHECK(std::abs(var - 1.0) <= tol);
    CHECK(std::abs(double(mean[std::size_t(i)] - X.row(i).mean())) <= tol);
  }
}

TEST_CASE_TEMPLATE("cross-entropy of uniform logits is log(V)", T, float, double) {
  const Index V = 11;
  const MatrixR<T> logits = MatrixR<T>::Constant(3, V, T(2.5));
  const std::vector<std::int32_t> targets = {0, 10, 4};
  MatrixR<T> probs(3, V);
  const model::CrossEntropyResult r = model::cross_entropy_forward<T>(logits, targets, probs);
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  CHECK(r.count == 3);
  CHECK(std::abs(r.loss - std::log(double(V))) <= tol * std::log(double(V)));
  CHECK(std::abs(double(probs(1, 3)) - 1.0 / V) <= tol);
}

TEST_CASE("cross-entropy with every target ignored: loss 0, count 0, zero gradient") {
  const MatrixR<double> logits = random_matrix<double>(2, 4, 1);
  const std::vector<std::int32_t> targets = {-1, -1};
  MatrixR<double> probs(2, 4), dlogits = MatrixR<double>::Constant(2, 4, 1.0);
  const model::CrossEntropyResult r = model::cross_entropy_forward<double>(logits, targets, probs);
  CHECK(r.loss == 0.0);
  CHECK(r.count == 0);
  model::cross_entropy_backward<double>(probs, targets, r.count, dlogits);
  CHECK(dlogits.isZero(0));
}

TEST_CASE("residual: forward adds, backward accumulates into both branches") {
  const MatrixR<double> A = random_matrix<double>(3, 4, 1), B = random_matrix<double>(3, 4, 2);
  const MatrixR<double> dY = random_matrix<double>(3, 4, 3);
  MatrixR<double> Y(3, 4);
  model::residual_forward<double>(A, B, Y);
  CHECK(Y == A + B);
  MatrixR<double> dA = A, dB = B;
  model::residual_backward<double>(dY, dA, dB);
  CHECK(dA == A + dY);
  CHECK(dB == B + dY);
}

// ---- float against double -------------------------------------------------------------------

TEST_CASE("float and double agree within float tolerance") {
  // Every forward and backward once in each type, from the same double inputs.
  const double rel = 1e-5, abs = 1e-5;  // a few float roundings on O(1) values
  const int B = 2, S = 4, H = 2;
  const Index d = 4, n = Index(B) * S, V = 6;
  const MatrixR<double> Xd = random_matrix<double>(n, d, 1);
  const MatrixR<float> Xf = Xd.cast<float>();
  const MatrixR<double> Gd = random_matrix<double>(n, d, 2);
  const MatrixR<float> Gf = Gd.cast<float>();
  const std::vector<double> gd = random_vector<double>(d, 3), bd = random_vector<double>(d, 4);
  const std::vector<float> gf = cast_vector<float>(gd), bf = cast_vector<float>(bd);

  SUBCASE("layernorm") {
    MatrixR<double> Yd(n, d), dXd = MatrixR<double>::Zero(n, d);
    MatrixR<float> Yf(n, d), dXf = MatrixR<float>::Zero(n, d);
    std::vector<double> md(n), rd(n), dgd(d), dbd(d);
    std::vector<float> mf(n), rf(n), dgf(d), dbf(d);
    model::layernorm_forward<double>(Xd, gd, bd, 1e-5, Yd, md, rd);
    model::layernorm_forward<float>(Xf, gf, bf, 1e-5, Yf, mf, rf);
    LORALAB_CHECK_CLOSE(Yf, Yd, rel, abs);
    model::layernorm_backward<double>(Gd, Xd, gd, md, rd, dXd, dgd, dbd);
    model::layernorm_backward<float>(Gf, Xf, gf, mf, rf, dXf, dgf, dbf);
    LORALAB_CHECK_CLOSE(dXf, dXd, rel, abs);
    for (Index j = 0; j < d; ++j) CHECK(std::abs(dgf[j] - dgd[j]) <= abs + rel * std::abs(dgd[j]));
  }
  SUBCASE("gelu") {
    MatrixR<double> Yd(n, d), dXd(n, d);
    MatrixR<float> Yf(n, d), dXf(n, d);
    model::gelu_forward<double>(Xd, Yd);
    model::gelu_forward<float>(Xf, Yf);
    LORALAB_CHECK_CLOSE(Yf, Yd, rel, abs);
    model::gelu_backward<double>(Xd, Gd, dXd);
    model::gelu_backward<float>(Xf, Gf, dXf);
    LORALAB_CHECK_CLOSE(dXf, dXd, rel, abs);
  }
  SUBCASE("attention with hooks") {
    const HookArrays a = make_hooks(B, S, H);
    const model::AttentionHooks hooks{a.keep.data(), a.scale.data()};
    const MatrixR<double> qd = random_matrix<double>(n, 3 * d, 5);
    const MatrixR<float> qf = qd.cast<float>();
    const AttentionRun<double> fd = run_attention<double>(qd, B, S, H, hooks);
    const AttentionRun<float> ff = run_attention<float>(qf, B, S, H, hooks);
    LORALAB_CHECK_CLOSE(ff.out, fd.out, rel, abs);
    LORALAB_CHECK_CLOSE(ff.probs, fd.probs, rel, abs);
    MatrixR<double> dd(n, 3 * d);
    MatrixR<float> df(n, 3 * d);
    model::attention_backward<double>(Gd, qd, fd.probs, B, S, H, dd, hooks);
    model::attention_backward<float>(Gf, qf, ff.probs, B, S, H, df, hooks);
    LORALAB_CHECK_CLOSE(df, dd, rel, abs);
  }
  SUBCASE("embedding, head and cross-entropy") {
    const std::vector<std::int32_t> tokens = {0, 5, 2, 2, 1, 3, 4, 0};
    const std::vector<std::int32_t> targets = {5, 2, 2, -1, 3, 4, 0, 1};
    const MatrixR<double> wted = random_matrix<double>(V, d, 6),
                          wped = random_matrix<double>(S, d, 7);
    const MatrixR<float> wtef = wted.cast<float>(), wpef = wped.cast<float>();
    MatrixR<double> Ed(n, d), Ld(n, V), Pd(n, V), dLd(n, V), dEd(n, d);
    MatrixR<float> Ef(n, d), Lf(n, V), Pf(n, V), dLf(n, V), dEf(n, d);
    model::embedding_forward<double>(tokens, B, S, wted, wped, Ed);
    model::embedding_forward<float>(tokens, B, S, wtef, wpef, Ef);
    LORALAB_CHECK_CLOSE(Ef, Ed, rel, abs);
    model::lm_head_forward<double>(Ed, wted, Ld);
    model::lm_head_forward<float>(Ef, wtef, Lf);
    LORALAB_CHECK_CLOSE(Lf, Ld, rel, abs);
    const auto rd = model::cross_entropy_forward<double>(Ld, targets, Pd);
    const auto rf = model::cross_entropy_forward<float>(Lf, targets, Pf);
    CHECK(std::abs(rf.loss - rd.loss) <= abs + rel * std::abs(rd.loss));
    model::cross_entropy_backward<double>(Pd, targets, rd.count, dLd);
    model::cross_entropy_backward<float>(Pf, targets, rf.count, dLf);
    LORALAB_CHECK_CLOSE(dLf, dLd, rel, abs);
    MatrixR<double> dwted = MatrixR<double>::Zero(V, d), dwped = MatrixR<double>::Zero(S, d);
    MatrixR<float> dwtef = MatrixR<float>::Zero(V, d), dwpef = MatrixR<float>::Zero(S, d);
    model::lm_head_backward<double>(dLd, Ed, wted, dEd, dwted);
    model::lm_head_backward<float>(dLf, Ef, wtef, dEf, dwtef);
    model::embedding_backward<double>(dEd, tokens, B, S, dwted, dwped);
    model::embedding_backward<float>(dEf, tokens, B, S, dwtef, dwpef);
    LORALAB_CHECK_CLOSE(dwtef, dwted, rel, abs);
    LORALAB_CHECK_CLOSE(dwpef, dwped, rel, abs);
  }
}

// ---- GptConfig and bad input ----------------------------------------------------------------

TEST_CASE("GptConfig: derived sizes, validation and the stable key") {
  model::GptConfig cfg;
  CHECK_NOTHROW(cfg.validate());
  CHECK(cfg.ff() == 256);
  CHECK(cfg.head_dim() == 16);
  CHECK(cfg.to_string() ==
        "vocab_size=260 context=64 layers=2 heads=4 d_model=64 d_ff=256 ln_eps=1e-05");
  model::GptConfig same = cfg;
  same.d_ff = 256;  // explicit 4*d_model builds the same model, so it prints the same
  CHECK(same.to_string() == cfg.to_string());
  model::GptConfig bad = cfg;
  bad.heads = 5;
  CHECK_THROWS_WITH_AS(bad.validate(),
                       doctest::Contains("[loralab.config] GptConfig: d_model=64 is not "
                                         "divisible by heads=5"),
                       Error);
  bad = cfg;
  bad.layers = 0;
  CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("layers=0 must be > 0"), Error);
  bad = cfg;
  bad.vocab_size = -3;
  CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("vocab_size=-3"), Error);
  bad = cfg;
  bad.d_ff = -1;
  CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("[loralab.config]"), Error);
  bad = cfg;
  bad.ln_eps = 0;
  CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("ln_eps=0"), Error);
}

TEST_CASE("bad input gives [loralab.data] or [loralab.shape] errors naming the values") {
  const MatrixR<float> wte = random_matrix<float>(5, 4, 1), wpe = random_matrix<float>(3, 4, 2);
  MatrixR<float> X(4, 4);
  const std::vector<std::int32_t> bad_token = {0, 1, 7, 2};
  CHECK_THROWS_WITH_AS(model::embedding_forward<float>(bad_token, 2, 2, wte, wpe, X),
                       doctest::Contains("[loralab.data] embedding_forward: token 7 at position 2 "
                                         "is outside [0, vocab=5)"),
                       Error);
  const std::vector<std::int32_t> tokens = {0, 1, 2, 3};
  CHECK_THROWS_WITH_AS(model::embedding_forward<float>(tokens, 1, 4, wte, wpe, X.topRows(4)),
                       doctest::Contains("[loralab.shape] embedding_forward: T=4 exceeds"), Error);
  CHECK_THROWS_WITH_AS(model::embedding_forward<float>(tokens, 1, 3, wte, wpe, X.topRows(3)),
                       doctest::Contains("tokens has 4 entries, expected 3"), Error);

  const MatrixR<float> logits = random_matrix<float>(3, 5, 3);
  MatrixR<float> probs(3, 5);
  const std::vector<std::int32_t> bad_target = {0, 5, -1};
  CHECK_THROWS_WITH_AS(model::cross_entropy_forward<float>(logits, bad_target, probs),
                       doctest::Contains("[loralab.data] cross_entropy_forward: target 5 at "
                                         "position 1 is outside [0, vocab=5)"),
                       Error);
  const std::vector<std::int32_t> neg_target = {0, -2, -1};
  CHECK_THROWS_WITH_AS(model::cross_entropy_forward<float>(logits, neg_target, probs),
                       doctest::Contains("[loralab.data]"), Error);
  const std::vector<std::int32_t> targets = {0, 4, -1};
  CHECK_THROWS_WITH_AS(model::cross_entropy_forward<float>(logits, targets, probs.leftCols(4)),
                       doctest::Contains("[loralab.shape] cross_entropy_forward: probs is [3 x 4], "
                                         "expected [3 x 5]"),
                       Error);
  CHECK_THROWS_WITH_AS(model::cross_entropy_backward<float>(probs, targets, 0, probs),
                       doctest::Contains("count=0 with 2 non-ignored targets"), Error);

  const MatrixR<float> qkv = random_matrix<float>(4, 12, 4);
  MatrixR<float> out(4, 4), attn(2 * 3 * 2, 2);
  CHECK_THROWS_WITH_AS(model::attention_forward<float>(qkv, 2, 2, 3, out, attn),
                       doctest::Contains("[loralab.shape] attention_forward: d=4 is not divisible "
                                         "by heads=3"),
                       Error);
  CHECK_THROWS_WITH_AS(model::attention_forward<float>(qkv.leftCols(11), 2, 2, 2, out, attn),
                       doctest::Contains("qkv has 11 columns"), Error);
  CHECK_THROWS_WITH_AS(model::attention_forward<float>(qkv, 2, 2, 2, out, attn),
                       doctest::Contains("probs is [12 x 2], expected [8 x 2]"), Error);
  CHECK_THROWS_WITH_AS(model::attention_forward<float>(qkv, 2, 3, 2, out, attn.topRows(12)),
                       doctest::Contains("qkv is [4 x 12], expected [6 x 12]"), Error);

  const std::vector<float> gamma(3, 1.0f), beta(4, 0.0f);
  std::vector<float> mean(4), rstd(4);
  MatrixR<float> Y(4, 4);
  CHECK_THROWS_WITH_AS(model::layernorm_forward<float>(X, gamma, beta, 1e-5, Y, mean, rstd),
                       doctest::Contains("[loralab.shape] layernorm_forward: gamma has 3 entries, "
                                         "expected 4"),
                       Error);
  MatrixR<float> G(4, 3), dX(4, 4);
  CHECK_THROWS_WITH_AS(model::gelu_backward<float>(X, G, dX),
                       doctest::Contains("[loralab.shape] gelu_backward: dY is [4 x 3]"), Error);
}
