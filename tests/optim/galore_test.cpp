// GaLore (methods.md 5.4, invariants 5.10 9-14): projector orthonormality and shapes, the refresh
// clock, updates inside the projected subspace, the full-rank round trip, the SGD reduction, the
// randomized range finder against the exact SVD, and HostOptimizer's GaLore step against an
// independent implementation (Jacobi SVD, explicit loops).
#include "loralab/cpu/galore.hpp"

#include <doctest/doctest.h>

#include <Eigen/SVD>
#include <cmath>
#include <vector>

#include "loralab/train/host_optimizer.hpp"
#include "support/testing.hpp"

using namespace loralab;
using cpu::MatrixR;

namespace {

MatrixR<double> random_matrix(Eigen::Index m, Eigen::Index n, unsigned seed) {
  std::srand(seed);
  return MatrixR<double>::Random(m, n);
}

// A matrix with a clear spectrum: rank-q signal plus small noise.
MatrixR<double> low_rank_plus_noise(Eigen::Index m, Eigen::Index n, int q, unsigned seed) {
  std::srand(seed);
  const MatrixR<double> U = MatrixR<double>::Random(m, q), V = MatrixR<double>::Random(q, n);
  return U * V + 1e-3 * MatrixR<double>::Random(m, n);
}

// One weight [m x n] with its gradient, as a model's parameters() would expose it.
struct OneWeight {
  std::vector<double> value, grad;
  std::int64_t rows, cols;
  OneWeight(std::int64_t m, std::int64_t n) : value(m * n), grad(m * n), rows(m), cols(n) {
    for (std::size_t i = 0; i < value.size(); ++i) value[i] = std::cos(0.3 * double(i));
  }
  std::vector<ParamTensor<double>> parameters() {
    return {ParamTensor<double>{value, grad, {}, 0, rows, cols, true}};
  }
  void set_grad(const MatrixR<double>& G) {
    std::copy(G.data(), G.data() + G.size(), grad.begin());
  }
  MatrixR<double> W() const { return cpu::ConstMatrixMap<double>(value.data(), rows, cols); }
};

}  // namespace

TEST_CASE("projector: orthonormal, sided by shape, with the state shapes of the memory formula") {
  struct Case {
    Eigen::Index m, n;
    GaloreProjection type;
    GaloreSide side;
  };
  for (const Case c : {Case{12, 7, GaloreProjection::standard, GaloreSide::right},
                       Case{7, 12, GaloreProjection::standard, GaloreSide::left},
                       Case{12, 7, GaloreProjection::reverse_standard, GaloreSide::left},
                       Case{12, 7, GaloreProjection::left, GaloreSide::left},
                       Case{7, 12, GaloreProjection::right, GaloreSide::right},
                       Case{9, 11, GaloreProjection::full, GaloreSide::both}}) {
    const GaloreConfig cfg{.rank = 3, .type = c.type};
    cpu::GaloreProjector<double> p(cfg, c.m, c.n);
    p.refresh(random_matrix(c.m, c.n, 1), 0);
    const auto& s = p.shapes();
    INFO("m " << c.m << " n " << c.n);
    CHECK(s.side == c.side);
    const MatrixR<double> I = MatrixR<double>::Identity(3, 3);
    if (c.side != GaloreSide::right) CHECK((p.left().transpose() * p.left() - I).norm() <= 1e-12);
    if (c.side != GaloreSide::left) CHECK((p.right() * p.right().transpose() - I).norm() <= 1e-12);
    // right: moments m x r, projector r x n; left: r x n and m x r; `std` picks the side that
    // makes them r x max(m, n) and r x min(m, n) (5.4's memory formula)
    if (c.side == GaloreSide::right)
      CHECK((s.moment_size() == 3 * c.m && s.projector_size == 3 * c.n));
    if (c.side == GaloreSide::left)
      CHECK((s.moment_size() == 3 * c.n && s.projector_size == 3 * c.m));
    if (c.side == GaloreSide::both)
      CHECK((s.moment_size() == 9 && s.projector_size == 3 * (c.m + c.n)));
    if (c.type == GaloreProjection::standard)
      CHECK((s.moment_size() == 3 * std::max(c.m, c.n) &&
             s.projector_size == 3 * std::min(c.m, c.n)));
    MatrixR<double> R;
    p.project(random_matrix(c.m, c.n, 2), R);
    CHECK(R.size() == s.moment_size());
    CHECK(std::int64_t(p.values().size()) == s.projector_size);
  }
  // The projector spans the leading singular vectors: the exact SVD of G.
  const MatrixR<double> G = random_matrix(10, 6, 3);
  cpu::GaloreProjector<double> p({.rank = 2}, 10, 6);
  p.refresh(G, 0);
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(G, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::MatrixXd V2 = svd.matrixV().leftCols(2);
  CHECK((p.right().transpose() * p.right() - V2 * V2.transpose()).norm() <= 1e-10);
  // sign convention: the largest-magnitude entry of each projector row is positive
  for (Eigen::Index i = 0; i < 2; ++i) {
    Eigen::Index k;
    p.right().row(i).cwiseAbs().maxCoeff(&k);
    CHECK(p.right()(i, k) > 0);
  }
}

TEST_CASE("full rank: back_project(project(G)) == G; one SGD step equals SGD times alpha") {
  for (auto [m, n] : {std::pair{8, 5}, std::pair{5, 8}, std::pair{6, 6}}) {
    const MatrixR<double> G = random_matrix(m, n, 4);
    for (GaloreProjection t : {GaloreProjection::standard, GaloreProjection::full}) {
      cpu::GaloreProjector<double> p({.rank = 99, .type = t}, m, n);  // r >= min(m, n)
      p.refresh(G, 0);
      CHECK(p.shapes().rank == std::min(m, n));
      MatrixR<double> R, D;
      p.project(G, R);
      p.back_project(R, D);
      CHECK((D - G).norm() <= 1e-12 * G.norm());
      // SGD in the projected space: N = lr * R; the update alpha * back_project(N) is
      // alpha * lr * G, plain SGD's update times alpha (invariant 14).
      const double lr = 0.1, alpha = 0.25;
      p.back_project(lr * R, D);
      CHECK((alpha * D - alpha * lr * G).norm() <= 1e-12 * G.norm());
    }
  }
}

TEST_CASE("GaLore step: every update lies in the projected subspace; P changes only on refresh") {
  for (auto [m, n] : {std::pair{10, 6}, std::pair{6, 10}}) {
    OneWeight w(m, n);
    const GaloreConfig g{.rank = 2, .period = 3, .scale = 0.5};
    train::HostOptimizer<double> opt(w, AdamWConfig{.lr = 0.01, .weight_decay = 0.0},
                                     OptimizerOptions{g, StatePolicy::keep});
    REQUIRE(opt.projected(0));
    std::vector<double> before_p;
    for (int t = 0; t < 8; ++t) {
      w.set_grad(random_matrix(m, n, 10 + t));
      const MatrixR<double> W0 = w.W();
      opt.step(1.0);
      const auto* proj = opt.projector(0);
      const MatrixR<double> dW = w.W() - W0;
      INFO("m " << m << " step " << t);
      if (m >= n) {  // right: dW (I - P^T P) = 0
        const MatrixR<double> P = proj->right();
        CHECK((dW - dW * P.transpose() * P).norm() <= 1e-12 * dW.norm());
      } else {  // left: (I - P P^T) dW = 0
        const MatrixR<double> P = proj->left();
        CHECK((dW - P * P.transpose() * dW).norm() <= 1e-12 * dW.norm());
      }
      CHECK(dW.norm() > 0);
      const std::vector<double> now = opt.projector_values(0);
      // counter before the step was t: refresh at t = 0, 3, 6 (invariant 11)
      if (t % 3 == 0)
        CHECK(now != before_p);
      else
        CHECK(now == before_p);
      CHECK(proj->refreshes() == t / 3 + 1);
      before_p = now;
    }
    CHECK(opt.tensor_steps(0) == 8);
    // memory: moments 2 * r * max(m, n) + projector r * min(m, n)
    CHECK(opt.state_bytes() ==
          std::int64_t(sizeof(double)) * (2 * 2 * std::max(m, n) + 2 * std::min(m, n)));
  }
}

TEST_CASE("GaLore step equals an independent implementation of galore_torch's AdamW") {
  const int m = 9, n = 5, r = 2, T = 2;
  const double lr = 0.02, b1 = 0.9, b2 = 0.999, eps = 1e-6, wd = 0.1, alpha = 0.7;
  OneWeight w(m, n);
  train::HostOptimizer<double> opt(
      w, AdamWConfig{.lr = lr, .beta1 = b1, .beta2 = b2, .eps = eps, .weight_decay = wd},
      OptimizerOptions{GaloreConfig{.rank = r, .period = T, .scale = alpha}, StatePolicy::keep});
  // Reference: right projection (m >= n), P from a Jacobi SVD with the same sign rule.
  Eigen::MatrixXd W = w.W(), P, Mo = Eigen::MatrixXd::Zero(m, r), Ve = Mo;
  for (int t = 0; t < 5; ++t) {
    const Eigen::MatrixXd G = low_rank_plus_noise(m, n, 3, 50 + t);
    w.set_grad(G);
    opt.step(1.0);
    if (t % T == 0) {
      Eigen::JacobiSVD<Eigen::MatrixXd> svd(G, Eigen::ComputeThinU | Eigen::ComputeThinV);
      P = svd.matrixV().leftCols(r).transpose();
      for (int i = 0; i < r; ++i) {
        Eigen::Index k;
        P.row(i).cwiseAbs().maxCoeff(&k);
        if (P(i, k) < 0) P.row(i) *= -1;
      }
    }
    const Eigen::MatrixXd R = G * P.transpose();
    Mo = b1 * Mo + (1 - b1) * R;
    Ve = b2 * Ve + (1 - b2) * R.cwiseProduct(R);
    const double step = lr * std::sqrt(1 - std::pow(b2, t + 1)) / (1 - std::pow(b1, t + 1));
    const Eigen::MatrixXd N = Mo.array() / (Ve.array().sqrt() + eps);
    W -= step * alpha * (N * P);
    W -= lr * wd * W;
    INFO("step " << t);
    CHECK((w.W() - W).norm() <= 1e-10 * W.norm());
  }
}

TEST_CASE("randomized range finder: close to the exact subspace on a matrix with a spectral gap") {
  const MatrixR<double> G = low_rank_plus_noise(60, 40, 4, 7);
  cpu::GaloreProjector<double> exact({.rank = 4}, 60, 40);
  cpu::GaloreProjector<double> fast(
      {.rank = 4, .refresh = GaloreRefresh::randomized, .power_iterations = 2, .oversample = 4}, 60,
      40);
  exact.refresh(G, 0);
  fast.refresh(G, 0);
  const MatrixR<double> Pe = exact.right().transpose() * exact.right();
  const MatrixR<double> Pf = fast.right().transpose() * fast.right();
  CHECK((Pe - Pf).norm() / std::sqrt(2.0 * 4) <= 1e-5);
  CHECK((fast.right() * fast.right().transpose() - MatrixR<double>::Identity(4, 4)).norm() <=
        1e-12);
  // with the signs fixed, the projectors themselves agree, not only their spans
  CHECK((exact.right() - fast.right()).norm() <= 1e-4);
  // the sketch is keyed by the refresh count: a second refresh draws a new Omega
  cpu::GaloreProjector<double> again = fast;
  again.refresh(G, 0);
  CHECK(again.refreshes() == 2);
}

TEST_CASE("GaLore rejects bad configurations") {
  CHECK(testing::error_of([] { cpu::GaloreProjector<float>({.rank = 0}, 4, 4); }).find("rank=0") !=
        std::string::npos);
  cpu::GaloreProjector<float> p({.rank = 2}, 4, 3);
  MatrixR<float> R;
  CHECK(testing::error_of([&] {
          p.project(MatrixR<float>::Zero(4, 3), R);
        }).find("before the first refresh") != std::string::npos);
  CHECK(testing::error_of([&] { p.refresh(MatrixR<float>::Zero(3, 4), 0); }).find("[3 x 4]") !=
        std::string::npos);
}
