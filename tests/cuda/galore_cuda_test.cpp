// GaLore and layer sampling on the device against the CPU (methods.md 5.3, 5.4, 5.10):
// cuda::GaloreProjector vs cpu::GaloreProjector<float> (exact and randomized refresh, every
// projection side), cuda::DeviceOptimizer vs train::HostOptimizer<float> on synthetic tensors
// with identical gradients (GaLore steps, the three optimizer-state policies under layer
// sampling) and on the tiny decoder in full fine-tuning, and checkpoints of a GaLore + sampling
// run moving between the backends. Runs only where a GPU is present (cuda_main.cpp exits 77).
#include <doctest/doctest.h>

#include <Eigen/SVD>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "loralab/cpu/galore.hpp"
#include "loralab/cuda/bf16.hpp"
#include "loralab/cuda/device_buffer.hpp"
#include "loralab/cuda/galore.hpp"
#include "loralab/cuda/gpt.hpp"
#include "loralab/cuda/optimizer.hpp"
#include "loralab/data/batch.hpp"
#include "loralab/model/gpt.hpp"
#include "loralab/sampling/layer_sampler.hpp"
#include "loralab/train/host_optimizer.hpp"
#include "loralab/train/trainer.hpp"
#include "support/temp_dir.hpp"
#include "support/testing.hpp"

using namespace loralab;
using cuda::bf16;
using cuda::DeviceBuffer;

namespace {

using MatrixF = cpu::MatrixR<float>;
using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>;

// G = A diag(s) B with A [m x q], B [q x n] standard normal and s_i = decay^i: a spectrum with
// a gap after every singular value (relative gap about 1 - decay), like a gradient's, so the
// leading subspaces and vectors are well determined. decay = 1: a flat (noise) spectrum.
MatrixF make_gradient(std::int64_t m, std::int64_t n, double decay, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const std::int64_t q = std::min(m, n);
  MatrixD A(m, q), B(q, n);
  for (Eigen::Index i = 0; i < A.size(); ++i) A.data()[i] = normal(rng);
  for (Eigen::Index i = 0; i < B.size(); ++i) B.data()[i] = normal(rng);
  for (std::int64_t i = 0; i < q; ++i)
    A.col(i) *= std::pow(decay, double(i)) / std::sqrt(double(n));
  return (A * B).cast<float>();
}

// Singular values of G (double).
Eigen::VectorXd singular_values(const MatrixF& G) {
  return Eigen::JacobiSVD<MatrixD>(G.cast<double>()).singularValues();
}

// Projection matrix of a projector's kept vectors: left P [m x r] -> P P^T; right P [r x n] ->
// P^T P (sign-invariant, so it compares subspaces).
MatrixD projection(std::span<const float> p, std::int64_t rows, std::int64_t cols, bool left) {
  MatrixD P(rows, cols);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j) P(i, j) = p[std::size_t(i * cols + j)];
  return left ? MatrixD(P * P.transpose()) : MatrixD(P.transpose() * P);
}

// max |a - b| / max |b| over two equally long vectors (0 when b is all zeros and a == b).
double normwise(std::span<const float> a, std::span<const float> b) {
  REQUIRE(a.size() == b.size());
  double scale = 0, worst = 0;
  for (float x : b) scale = std::max(scale, double(std::abs(x)));
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(double(a[i]) - double(b[i])));
  if (std::isnan(worst)) return INFINITY;
  return scale > 0 ? worst / scale : worst;
}

std::vector<float> host_of(const MatrixF& G) {
  return {G.data(), G.data() + G.size()};
}

}  // namespace

// ---- the projector ---------------------------------------------------------------------------

namespace {

struct ProjectorCase {
  std::int64_t m, n;
  GaloreProjection type;
  GaloreRefresh refresh;
  double decay;
  int power_iterations;
  int oversample;
};

// Tolerances. Both backends compute the leading singular subspace of the same fp32 matrix with
// backward-stable fp32 factorizations (Householder QR, bidiagonalization SVD), so each result
// is the exact subspace of G + E with ||E|| <= c u ||G||_2, u = 2^-24 and c a modest multiple
// of sqrt(m n) (here below 100). By Wedin's theorem the subspace of the r leading vectors moves by
// at most ||E|| / gap_r, gap_r = s_r - s_{r+1}; a single vector i by ||E|| / min(s_{i-1} - s_i,
// s_i - s_{i+1}). The two backends' difference is at most the sum of both perturbations; we
// allow 2 * 100 u s_1 / gap (never below 1e-5), which a wrong side, transpose, sketch or sign
// misses by orders of magnitude.
double subspace_tolerance(const Eigen::VectorXd& s, std::int64_t r) {
  const double next = r < s.size() ? s(r) : 0.0;
  return std::max(1e-5, 200.0 * FLT_EPSILON * s(0) / (s(r - 1) - next));
}
double vector_gap(const Eigen::VectorXd& s, std::int64_t i) {
  double gap = i + 1 < s.size() ? s(i) - s(i + 1) : s(i);
  if (i > 0) gap = std::min(gap, s(i - 1) - s(i));
  return gap;
}

void compare_projectors(const ProjectorCase& pc) {
  CAPTURE(pc.m);
  CAPTURE(pc.n);
  CAPTURE(int(pc.type));
  CAPTURE(int(pc.refresh));
  CAPTURE(pc.decay);
  GaloreConfig cfg;
  cfg.rank = 5;
  cfg.type = pc.type;
  cfg.refresh = pc.refresh;
  cfg.power_iterations = pc.power_iterations;
  cfg.oversample = pc.oversample;
  cfg.seed = testing::kSeed;
  constexpr std::uint32_t kTensor = 3;

  cpu::GaloreProjector<float> cp(cfg, pc.m, pc.n);
  cuda::GaloreContext ctx;
  cuda::GaloreProjector gp(cfg, pc.m, pc.n);
  REQUIRE(gp.shapes().rank == cp.shapes().rank);
  REQUIRE(gp.shapes().side == cp.shapes().side);
  REQUIRE(gp.shapes().projector_size == cp.shapes().projector_size);
  CHECK_FALSE(gp.ready());
  CHECK(gp.values(nullptr).empty());
  CHECK(gp.bytes() == 0);
  const std::int64_t r = cp.shapes().rank;
  const GaloreSide side = cp.shapes().side;

  for (int refresh = 0; refresh < 2; ++refresh) {  // the second keys a new sketch
    CAPTURE(refresh);
    const MatrixF G = make_gradient(pc.m, pc.n, pc.decay, testing::kSeed + 17 * refresh);
    const Eigen::VectorXd s = singular_values(G);
    const double tol = subspace_tolerance(s, r);
    const std::vector<float> g_host = host_of(G);
    const auto dG = DeviceBuffer<float>::from_host(g_host);
    cp.refresh(G, kTensor);
    gp.refresh(dG.data(), kTensor, ctx);
    CHECK(gp.ready());
    CHECK(gp.refreshes() == cp.refreshes());
    CHECK(gp.bytes() == cp.shapes().projector_size * std::int64_t(sizeof(float)));

    const std::vector<float> pg = gp.values(nullptr), pcv = cp.values();
    REQUIRE(pg.size() == pcv.size());
    const std::size_t left_size = side == GaloreSide::right ? 0 : std::size_t(pc.m * r);
    const std::span<const float> gl(pg.data(), left_size), cl(pcv.data(), left_size);
    const std::span<const float> gr(pg.data() + left_size, pg.size() - left_size);
    const std::span<const float> cr(pcv.data() + left_size, pcv.size() - left_size);
    if (side != GaloreSide::right) {
      const MatrixD Pg = projection(gl, pc.m, r, true), Pc = projection(cl, pc.m, r, true);
      INFO("left subspace: |PP^T gpu - cpu| " << (Pg - Pc).cwiseAbs().maxCoeff() << ", tol "
                                              << tol);
      CHECK((Pg - Pc).cwiseAbs().maxCoeff() <= tol);
    }
    if (side != GaloreSide::left) {
      const MatrixD Pg = projection(gr, r, pc.n, false), Pc = projection(cr, r, pc.n, false);
      INFO("right subspace: |P^TP gpu - cpu| " << (Pg - Pc).cwiseAbs().maxCoeff() << ", tol "
                                               << tol);
      CHECK((Pg - Pc).cwiseAbs().maxCoeff() <= tol);
    }
    // Orthonormal kept vectors (methods.md 5.10 item 9).
    if (side != GaloreSide::right) {
      Eigen::Map<const MatrixF> P(gl.data(), pc.m, r);
      CHECK((P.transpose() * P - MatrixF::Identity(r, r)).cwiseAbs().maxCoeff() <= 1e-5);
    }
    if (side != GaloreSide::left) {
      Eigen::Map<const MatrixF> P(gr.data(), r, pc.n);
      CHECK((P * P.transpose() - MatrixF::Identity(r, r)).cwiseAbs().maxCoeff() <= 1e-5);
    }
    // The sign convention makes the vectors themselves agree, not only their span (where the
    // spectrum separates each vector and the largest entry is not a near-tie).
    if (pc.decay < 1 && pc.refresh == GaloreRefresh::exact_svd) {
      const bool on_u = side != GaloreSide::right;
      for (std::int64_t i = 0; i < r; ++i) {
        std::vector<float> kept;
        for (std::int64_t j = 0; j < (on_u ? pc.m : pc.n); ++j)
          kept.push_back(
              std::abs(on_u ? cl[std::size_t(j * r + i)] : cr[std::size_t(i * pc.n + j)]));
        std::sort(kept.rbegin(), kept.rend());
        if (kept.size() > 1 && kept[0] - kept[1] < 1e-3 * kept[0]) continue;
        const double vtol = std::max(1e-5, 200.0 * FLT_EPSILON * s(0) / vector_gap(s, i));
        double worst = 0;
        if (side != GaloreSide::right)
          for (std::int64_t j = 0; j < pc.m; ++j)
            worst = std::max(
                worst, double(std::abs(gl[std::size_t(j * r + i)] - cl[std::size_t(j * r + i)])));
        if (side != GaloreSide::left)
          for (std::int64_t j = 0; j < pc.n; ++j)
            worst = std::max(worst, double(std::abs(gr[std::size_t(i * pc.n + j)] -
                                                    cr[std::size_t(i * pc.n + j)])));
        INFO("vector " << i << ": worst entry difference " << worst << ", tol " << vtol);
        CHECK(worst <= vtol);
      }
    }
    // Projection and back-projection: the same products up to fp32 GEMM rounding and the
    // projector's own difference.
    MatrixF Rc, Dc;
    cp.project(G, Rc);
    DeviceBuffer<float> dR(std::size_t(Rc.size())), dD(g_host.size());
    gp.project(dG.data(), dR.data(), ctx);
    const std::vector<float> Rg = dR.to_host();
    CHECK(normwise(Rg, host_of(Rc)) <= 10 * tol);
    cp.back_project(Rc, Dc);
    const std::vector<float> rc_host = host_of(Rc);
    dR.upload(rc_host);
    gp.back_project(dR.data(), dD.data(), ctx);
    CHECK(normwise(dD.to_host(), host_of(Dc)) <= 10 * tol);
  }

  // Checkpoint path: values() round trip, clear().
  const std::vector<float> saved = gp.values(nullptr);
  cuda::GaloreProjector other(cfg, pc.m, pc.n);
  other.set_values(saved, gp.refreshes(), nullptr);
  CHECK(other.values(nullptr) == saved);
  CHECK(other.refreshes() == 2);
  other.clear();
  CHECK_FALSE(other.ready());
  CHECK(other.bytes() == 0);
  CHECK_THROWS_AS(other.set_values(std::vector<float>(3, 0.0f), 0, nullptr), Error);
}

}  // namespace

TEST_CASE("cuda::GaloreProjector matches cpu::GaloreProjector") {
  const auto exact = GaloreRefresh::exact_svd, rnd = GaloreRefresh::randomized;
  using GP = GaloreProjection;
  SUBCASE("exact SVD, every side") {
    compare_projectors({48, 32, GP::standard, exact, 0.6, 2, 8});  // right, m > n
    compare_projectors({32, 48, GP::standard, exact, 0.6, 2, 8});  // left, m < n
    compare_projectors({40, 40, GP::standard, exact, 0.6, 2, 8});  // square
    compare_projectors({48, 32, GP::reverse_standard, exact, 0.6, 2, 8});
    compare_projectors({32, 48, GP::right, exact, 0.6, 2, 8});
    compare_projectors({36, 28, GP::full, exact, 0.6, 2, 8});
    compare_projectors({28, 36, GP::full, exact, 0.6, 2, 8});
  }
  SUBCASE("randomized range finder") {
    compare_projectors({48, 32, GP::standard, rnd, 0.6, 2, 8});
    compare_projectors({32, 48, GP::standard, rnd, 0.6, 2, 8});
    compare_projectors({36, 28, GP::full, rnd, 0.6, 1, 3});
    compare_projectors({20, 7, GP::standard, rnd, 0.6, 2, 8});  // k clipped to min(m, n)
  }
  SUBCASE("randomized without power iterations on a flat spectrum: the same sketch") {
    // With k = r and no power iteration the subspace is range(G Omega) itself, a function of the
    // sketch: agreement means the device drew the CPU's Philox normals. A flat spectrum (decay
    // 1) gives no gap, so the tolerance is set by the conditioning of G Omega instead: a
    // Gaussian [32 x 5] sketch of a Gaussian matrix has condition number below 10, so rounding
    // moves the span by about 10 * 100 u.
    for (const GP type : {GP::left, GP::right}) {
      GaloreConfig cfg;
      cfg.rank = 5;
      cfg.type = type;
      cfg.refresh = rnd;
      cfg.power_iterations = 0;
      cfg.oversample = 0;
      cfg.seed = testing::kSeed;
      const MatrixF G = make_gradient(32, 40, 1.0, 99);
      const std::vector<float> g_host = host_of(G);
      const auto dG = DeviceBuffer<float>::from_host(g_host);
      cpu::GaloreProjector<float> cp(cfg, 32, 40);
      cuda::GaloreContext ctx;
      cuda::GaloreProjector gp(cfg, 32, 40);
      cp.refresh(G, 11);
      gp.refresh(dG.data(), 11, ctx);
      const bool left = type == GP::left;
      const MatrixD Pg = projection(gp.values(nullptr), left ? 32 : 5, left ? 5 : 40, left);
      const MatrixD Pc = projection(cp.values(), left ? 32 : 5, left ? 5 : 40, left);
      CHECK((Pg - Pc).cwiseAbs().maxCoeff() <= 1e-4);
    }
  }
  SUBCASE("misuse is reported") {
    GaloreConfig cfg;
    cfg.rank = 2;
    cuda::GaloreContext ctx;
    cuda::GaloreProjector gp(cfg, 4, 3);
    DeviceBuffer<float> buf(12);
    CHECK(testing::error_of([&] {
            gp.project(buf.data(), buf.data(), ctx);
          }).find("[loralab.state]") != std::string::npos);
    cfg.rank = 0;
    CHECK_THROWS_AS(cuda::GaloreProjector(cfg, 4, 3), Error);
  }
}

// ---- the optimizer on synthetic tensors --------------------------------------------------------

namespace {

// One tensor on both sides: host storage for HostOptimizer, device copies for DeviceOptimizer;
// gradients are drawn on the host and uploaded, so both optimizers see the same bits.
struct SynTensor {
  std::int64_t rows, cols;
  int block;
  bool projectable;
  bool shadowed;
  std::vector<float> value, grad;
  DeviceBuffer<float> d_value, d_grad;
  DeviceBuffer<bf16> d_shadow;

  SynTensor(std::int64_t r, std::int64_t c, int b, bool p, bool shadow, std::mt19937_64& rng)
      : rows(r), cols(c), block(b), projectable(p), shadowed(shadow) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    value.resize(std::size_t(r * c));
    for (float& x : value) x = u(rng);
    grad.assign(value.size(), 0.0f);
    d_value = DeviceBuffer<float>::from_host(value);
    d_grad = DeviceBuffer<float>(value.size());
    if (shadow) {
      std::vector<bf16> s(value.size());
      for (std::size_t i = 0; i < s.size(); ++i) s[i] = cuda::from_float<bf16>(value[i]);
      d_shadow = DeviceBuffer<bf16>::from_host(s);
    }
  }
  // A gradient with a decaying spectrum for matrices (see make_gradient), uniform otherwise.
  void draw_gradient(std::uint64_t seed) {
    if (projectable) {  // copied in place: the host optimizer holds a view of `grad`
      const MatrixF G = make_gradient(rows, cols, 0.6, seed);
      std::copy(G.data(), G.data() + G.size(), grad.begin());
    } else {
      std::mt19937_64 rng(seed);
      std::uniform_real_distribution<float> u(-1.0f, 1.0f);
      for (float& g : grad) g = u(rng);
    }
    d_grad.upload(grad);
  }
  ParamTensor<float> host_view() {
    return {value, grad, {}, block, projectable ? rows : 0, projectable ? cols : 0, projectable};
  }
  cuda::DeviceParamTensor device_view() {
    return {d_value.data(),
            d_grad.data(),
            nullptr,
            shadowed ? d_shadow.data() : nullptr,
            value.size(),
            block,
            projectable ? rows : 0,
            projectable ? cols : 0,
            projectable};
  }
};

// What HostOptimizer's constructor reads.
struct HostModel {
  std::vector<ParamTensor<float>> params;
  std::vector<ParamTensor<float>> parameters() { return params; }
};

// Two blocks with a right- and a left-projected weight and a bias each, a shadowed weight, and
// an always-on non-projectable matrix (like an embedding).
struct Synthetic {
  std::vector<std::unique_ptr<SynTensor>> tensors;
  HostModel host;
  std::vector<cuda::DeviceParamTensor> device;

  Synthetic() {
    std::mt19937_64 rng(testing::kSeed);
    auto add = [&](std::int64_t r, std::int64_t c, int b, bool p, bool s) {
      tensors.push_back(std::make_unique<SynTensor>(r, c, b, p, s, rng));
    };
    add(10, 6, -1, false, false);  // embedding-like: plain AdamW, always on
    add(24, 12, 0, true, true);    // right (m >= n), with a bf16 copy
    add(1, 24, 0, false, false);   // bias
    add(12, 20, 0, true, false);   // left (m < n)
    add(16, 16, 1, true, false);   // square: right
    add(1, 16, 1, false, true);    // bias with a bf16 copy
    add(8, 30, 1, true, false);    // left
    for (auto& t : tensors) {
      host.params.push_back(t->host_view());
      device.push_back(t->device_view());
    }
  }
  void draw(std::int64_t step) {
    for (std::size_t k = 0; k < tensors.size(); ++k)
      tensors[k]->draw_gradient(testing::kSeed + 1000 * std::uint64_t(step) + k);
  }
};

// Tolerance of device values against host values after a few steps, relative to the largest
// change of the tensor. The gradients are identical; the projectors differ by at most the
// subspace tolerance above (about 2.4e-4 for decay 0.6 and r <= 4: s_r / s_1 >= 0.2, relative
// gap 0.4), the projected gradients and back-projections by fp32 GEMM rounding; Adam's
// normalization R / (sqrt(V) + eps) keeps relative errors of that size. 2e-3 leaves a margin;
// a missed or extra step, a wrong counter, side, refresh step, sign or alpha is an O(1) error.
constexpr double kStepTol = 2e-3;

void compare_optimizers(train::HostOptimizer<float>& oc, cuda::DeviceOptimizer& og, Synthetic& syn,
                        const std::vector<std::vector<float>>& start, const std::string& when) {
  CAPTURE(when);
  REQUIRE(og.tensors() == oc.tensors());
  CHECK(og.steps() == oc.steps());
  CHECK(og.state_bytes() == oc.state_bytes());
  for (std::size_t k = 0; k < oc.tensors(); ++k) {
    CAPTURE(k);
    CHECK(og.projected(k) == oc.projected(k));
    CHECK(og.active(k) == oc.active(k));
    CHECK(og.tensor_steps(k) == oc.tensor_steps(k));
    CHECK(og.projector_refreshes(k) == oc.projector_refreshes(k));
    CHECK(og.projector_values(k).size() == oc.projector_values(k).size());
    CHECK(og.first_moment(k).size() == oc.first_moment(k).size());
    const std::vector<float> vg = og.values(k), vc = oc.values(k);
    std::vector<float> dg(vg.size()), dc(vc.size());
    for (std::size_t i = 0; i < vg.size(); ++i) {
      dg[i] = vg[i] - start[k][i];
      dc[i] = vc[i] - start[k][i];
    }
    CHECK(normwise(dg, dc) <= kStepTol);
    if (syn.tensors[k]->shadowed) {  // the bf16 copy follows the master
      const std::vector<bf16> sh = syn.tensors[k]->d_shadow.to_host();
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < sh.size(); ++i)
        wrong += cuda::to_float(sh[i]) != cuda::to_float(cuda::from_float<bf16>(vg[i]));
      CHECK(wrong == 0);
    }
  }
}

std::vector<std::vector<float>> snapshot(cuda::DeviceOptimizer& og) {
  std::vector<std::vector<float>> out;
  for (std::size_t k = 0; k < og.tensors(); ++k) out.push_back(og.values(k));
  return out;
}

}  // namespace

TEST_CASE("cuda::DeviceOptimizer's GaLore steps match HostOptimizer's") {
  using GP = GaloreProjection;
  for (const GaloreRefresh refresh : {GaloreRefresh::exact_svd, GaloreRefresh::randomized})
    for (const GP type : {GP::standard, GP::reverse_standard, GP::full}) {
      CAPTURE(int(refresh));
      CAPTURE(int(type));
      Synthetic syn;
      const AdamWConfig adam{.lr = 1e-2, .eps = 1e-6, .weight_decay = 0.05};
      OptimizerOptions opts;
      opts.galore = GaloreConfig{.rank = 4,
                                 .period = 2,
                                 .scale = 0.5,
                                 .type = type,
                                 .refresh = refresh,
                                 .power_iterations = 2,
                                 .oversample = 4,
                                 .seed = testing::kSeed};
      train::HostOptimizer<float> oc(syn.host, adam, opts);
      cuda::DeviceOptimizer og(syn.device, nullptr, adam, opts);
      std::size_t projected = 0;
      for (std::size_t k = 0; k < og.tensors(); ++k) projected += og.projected(k);
      CHECK(projected == 4);
      CHECK(og.state_bytes() == oc.state_bytes());  // moments only: no projector yet
      const auto start = snapshot(og);
      for (std::int64_t step = 0; step < 5; ++step) {
        syn.draw(step);
        const double scale = step == 3 ? 0.5 : 1.0;  // a clipped step scales the gradient
        if (step == 2) {
          oc.set_lr(5e-3);
          og.set_lr(5e-3);
        }
        CHECK(og.grad_norm() == doctest::Approx(oc.grad_norm()).epsilon(1e-6));
        oc.step(scale);
        og.step(scale);
        compare_optimizers(oc, og, syn, start, "after step " + std::to_string(step));
      }
      // Refreshes at the tensors' steps 0, 2 and 4 (counter before the increment, period 2).
      for (std::size_t k = 0; k < og.tensors(); ++k)
        if (og.projected(k)) CHECK(og.projector_refreshes(k) == 3);
    }
}

TEST_CASE("cuda::DeviceOptimizer under layer sampling: every state policy as HostOptimizer") {
  for (const StatePolicy policy : {StatePolicy::keep, StatePolicy::reset, StatePolicy::drop})
    for (const bool galore : {false, true}) {
      CAPTURE(state_policy_name(policy));
      CAPTURE(galore);
      Synthetic syn;
      const AdamWConfig adam{.lr = 1e-2, .eps = 1e-6, .weight_decay = 0.01};
      OptimizerOptions opts;
      opts.state = policy;
      if (galore) opts.galore = GaloreConfig{.rank = 3, .period = 3, .seed = testing::kSeed};
      train::HostOptimizer<float> oc(syn.host, adam, opts);
      cuda::DeviceOptimizer og(syn.device, nullptr, adam, opts);
      const auto start = snapshot(og);
      // Periods of two steps: block 0, block 1, block 0, both; the trainer calls
      // set_active_blocks before every step with new_period only at a draw.
      const std::vector<std::vector<bool>> periods = {
          {true, false}, {false, true}, {true, false}, {true, true}};
      std::int64_t step = 0;
      for (std::size_t p = 0; p < periods.size(); ++p) {
        const std::vector<bool>& on = periods[p];
        const auto before = snapshot(og);
        std::vector<std::vector<float>> before_c;
        for (std::size_t k = 0; k < oc.tensors(); ++k) before_c.push_back(oc.values(k));
        std::vector<std::vector<float>> moments_before;
        for (std::size_t k = 0; k < og.tensors(); ++k) moments_before.push_back(og.first_moment(k));
        for (int s = 0; s < 2; ++s, ++step) {
          oc.set_active_blocks(on, s == 0);
          og.set_active_blocks(on, s == 0);
          CHECK(og.state_bytes() == oc.state_bytes());  // drop frees, reset re-creates
          syn.draw(step);  // frozen blocks get a gradient too: the optimizer must ignore it
          oc.step(1.0);
          og.step(1.0);
          compare_optimizers(oc, og, syn, start,
                             "period " + std::to_string(p) + " step " + std::to_string(s));
          if (policy == StatePolicy::reset && s == 0)
            for (std::size_t k = 0; k < og.tensors(); ++k)
              if (syn.tensors[k]->block >= 0 && on[std::size_t(syn.tensors[k]->block)] && p > 0)
                CHECK(og.tensor_steps(k) == 1);  // a drawn block starts from zero state
        }
        for (std::size_t k = 0; k < og.tensors(); ++k) {
          const int b = syn.tensors[k]->block;
          if (b < 0 || on[std::size_t(b)]) continue;
          CAPTURE(k);
          CHECK(og.values(k) == before[k]);  // frozen: bitwise unchanged (methods.md 5.10 item 6)
          CHECK(oc.values(k) == before_c[k]);
          CHECK_FALSE(og.active(k));
          if (policy == StatePolicy::drop) {
            CHECK(og.first_moment(k).empty());
            CHECK(og.tensor_steps(k) == 0);
            CHECK(og.projector_values(k).empty());
          } else if (policy == StatePolicy::keep) {
            CHECK(og.first_moment(k) == moments_before[k]);  // state untouched while frozen
          }
        }
      }
    }
}

TEST_CASE("cuda::DeviceOptimizer restores dropped and projected state") {
  Synthetic syn;
  const AdamWConfig adam{.lr = 1e-2, .eps = 1e-6, .weight_decay = 0.0};
  OptimizerOptions opts;
  opts.state = StatePolicy::drop;
  opts.galore = GaloreConfig{.rank = 3, .period = 2, .seed = testing::kSeed};
  cuda::DeviceOptimizer a(syn.device, nullptr, adam, opts);
  a.set_active_blocks({true, false}, true);
  for (std::int64_t s = 0; s < 3; ++s) {
    syn.draw(s);
    a.step(1.0);
  }
  // A second optimizer over the same tensors takes a's state through the checkpoint members.
  cuda::DeviceOptimizer b(syn.device, nullptr, adam, opts);
  for (std::size_t k = 0; k < a.tensors(); ++k) {
    b.restore(a.steps(), k, a.first_moment(k), a.second_moment(k));
    b.set_tensor_steps(k, a.tensor_steps(k));
    b.set_projector_values(k, a.projector_values(k), a.projector_refreshes(k));
  }
  b.set_active_blocks({true, false}, false);
  CHECK(b.state_bytes() == a.state_bytes());
  for (std::size_t k = 0; k < a.tensors(); ++k) {
    CAPTURE(k);
    CHECK(b.first_moment(k) == a.first_moment(k));
    CHECK(b.second_moment(k) == a.second_moment(k));
    CHECK(b.tensor_steps(k) == a.tensor_steps(k));
    CHECK(b.projector_values(k) == a.projector_values(k));
    CHECK(b.projector_refreshes(k) == a.projector_refreshes(k));
  }
  // reset_state: a fresh optimizer for the held states (HostOptimizer::reset_state, ROSA).
  b.reset_state();
  for (std::size_t k = 0; k < b.tensors(); ++k) {
    CAPTURE(k);
    CHECK(b.tensor_steps(k) == 0);
    CHECK(b.projector_values(k).empty());
    CHECK(b.first_moment(k).size() == a.first_moment(k).size());  // dropped stay dropped
    for (float x : b.first_moment(k)) CHECK(x == 0.0f);
  }
  CHECK_THROWS_AS(b.restore(3, 1, std::vector<float>(5), std::vector<float>(5)), Error);
  CHECK_THROWS_AS(b.set_projector_values(0, std::vector<float>(4), 1), Error);  // not projected
  CHECK_THROWS_AS(b.set_active_blocks({true}, true), Error);  // block 1 outside the set
}

// ---- the decoder -------------------------------------------------------------------------------

namespace {

model::GptConfig tiny() {
  model::GptConfig c;
  c.vocab_size = 23;
  c.context = 12;
  c.layers = 2;
  c.heads = 2;
  c.d_model = 16;
  return c;
}

model::GptWeights<float> tiny_weights() {
  model::GptWeights<float> w(tiny());
  w.init_gpt2(testing::kSeed);
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  for (float& x : w.flat()) x += u(rng);
  return w;
}

model::GptOptions full_options() {
  model::GptOptions o;
  o.mode = model::TrainMode::full;
  return o;
}

using LoraSpec = Adapter<DynamicRank>;

// A learnable toy stream: every row counts up by a row-specific stride.
data::Batch toy_batch(std::int64_t step) {
  data::Batch b;
  b.batch = 4;
  b.length = 10;
  for (int r = 0; r < b.batch; ++r) {
    const int stride = 1 + int((step + r) % 3);
    for (int t = 0; t < b.length; ++t) {
      b.tokens.push_back((r + stride * t) % 23);
      b.targets.push_back(t + 1 < b.length ? (r + stride * (t + 1)) % 23 : -1);
    }
  }
  return b;
}

}  // namespace

TEST_CASE("GaLore fine-tuning of the decoder: CPU and CUDA agree step by step") {
  model::GptWeights<float> w = tiny_weights();
  model::GptWeights<float> wc = w;
  model::Gpt<LoraSpec, float> c(wc, full_options());
  cuda::Gpt<LoraSpec, float> g(w, full_options());
  const AdamWConfig adam{.lr = 1e-2, .eps = 1e-6, .weight_decay = 0.0};
  OptimizerOptions opts;
  opts.galore = GaloreConfig{.rank = 4, .period = 2, .seed = testing::kSeed};
  train::HostOptimizer<float> oc(c, adam, opts);
  cuda::DeviceOptimizer og(g, adam, opts);
  REQUIRE(og.tensors() == oc.tensors());
  std::size_t projected = 0;
  for (std::size_t k = 0; k < og.tensors(); ++k) {
    CHECK(og.projected(k) == oc.projected(k));
    projected += og.projected(k);
  }
  CHECK(projected == 8);  // four linears per block, two blocks
  const auto start = snapshot(og);
  // Per-tensor tolerance, adaptive: the gradients themselves differ between the backends by
  // about 1e-4 of their scale (gpt_cuda_test), which moves a GaLore subspace by up to
  // 1e-4 s_1 / (s_r - s_{r+1}) of the CPU's gradient; 20x that (plus kStepTol) covers the
  // propagation through Adam's normalization over four steps. Refresh steps set it.
  std::vector<double> tol(og.tensors(), kStepTol);
  for (std::int64_t step = 0; step < 4; ++step) {
    const data::Batch b = toy_batch(step);
    c.zero_grad();
    g.zero_grad();
    c.forward(b.tokens, b.targets, int(b.batch), int(b.length));
    g.forward(b.tokens, b.targets, int(b.batch), int(b.length));
    c.backward();
    g.backward();
    const auto params = c.parameters();
    for (std::size_t k = 0; k < oc.tensors(); ++k) {
      if (!oc.projected(k) || oc.tensor_steps(k) % 2 != 0) continue;
      const auto& p = params[k];
      const MatrixF G = Eigen::Map<const MatrixF>(p.grad.data(), p.rows, p.cols);
      const Eigen::VectorXd s = singular_values(G);
      const double next = 4 < s.size() ? s(4) : 0.0;
      tol[k] = std::max(tol[k], kStepTol + 20 * 1e-4 * s(0) / std::max(s(3) - next, 1e-30));
    }
    oc.step(1.0);
    og.step(1.0);
    CHECK(og.state_bytes() == oc.state_bytes());
    for (std::size_t k = 0; k < oc.tensors(); ++k) {
      CAPTURE(k);
      CHECK(og.tensor_steps(k) == oc.tensor_steps(k));
      const std::vector<float> vg = og.values(k), vc = oc.values(k);
      std::vector<float> dg(vg.size()), dc(vc.size());
      for (std::size_t i = 0; i < vg.size(); ++i) {
        dg[i] = vg[i] - start[k][i];
        dc[i] = vc[i] - start[k][i];
      }
      INFO("step " << step << ": update error " << normwise(dg, dc) << ", tol " << tol[k]);
      CHECK(normwise(dg, dc) <= tol[k]);
    }
  }
}

TEST_CASE("cuda::Gpt::linear_input_host is what model::Gpt saves") {
  model::GptWeights<float> w = tiny_weights();
  model::GptWeights<float> wc = w;
  model::Gpt<LoraSpec, float> c(wc, full_options());
  cuda::Gpt<LoraSpec, float> g(w, full_options());
  const data::Batch b = toy_batch(0);
  c.forward_logits(b.tokens, int(b.batch), int(b.length), Pass{false, 0});
  g.forward_logits(b.tokens, int(b.batch), int(b.length), Pass{false, 0});
  for (int l = 0; l < tiny().layers; ++l)
    for (int m = 0; m < model::kModulesPerBlock; ++m) {
      const auto& X = c.linear_input(l, model::Module(m));
      const std::vector<float> got = g.linear_input_host(l, model::Module(m));
      REQUIRE(got.size() == std::size_t(X.size()));
      CHECK(normwise(got, std::span<const float>(X.data(), std::size_t(X.size()))) <= 1e-4);
    }
}

TEST_CASE("checkpoints of a GaLore + layer-sampling run move between CPU and GPU bit for bit") {
  const model::GptWeights<float> w = tiny_weights();
  testing::TempDir dir;
  train::TrainConfig cfg;
  cfg.steps = 8;
  cfg.lr = 1e-2;
  cfg.warmup = 2;
  cfg.eval_every = 8;
  cfg.progress = false;
  cfg.stop_after = 5;  // mid-period, after a drop and a refresh
  cfg.optimizer.galore = GaloreConfig{.rank = 2, .period = 2, .seed = testing::kSeed};
  cfg.optimizer.state = StatePolicy::drop;
  cfg.sampler = sampling::LayerSampler({1.0, 1.0}, {.gamma = 1, .period = 2, .seed = 5}, "uniform");
  auto batches = [](std::int64_t s, int) { return toy_batch(s); };
  auto no_eval = [] { return train::EvalResult{}; };

  auto same_state = [](const auto& a, const auto& b) {
    REQUIRE(a.tensors() == b.tensors());
    CHECK(a.steps() == b.steps());
    CHECK(a.state_bytes() == b.state_bytes());
    std::size_t dropped = 0;
    for (std::size_t k = 0; k < a.tensors(); ++k) {
      CAPTURE(k);
      CHECK(a.values(k) == b.values(k));
      CHECK(a.first_moment(k) == b.first_moment(k));
      CHECK(a.second_moment(k) == b.second_moment(k));
      CHECK(a.tensor_steps(k) == b.tensor_steps(k));
      CHECK(a.projector_values(k) == b.projector_values(k));
      CHECK(a.projector_refreshes(k) == b.projector_refreshes(k));
      dropped += a.first_moment(k).empty() && !a.values(k).empty();
    }
    CHECK(dropped > 0);  // the frozen block's state was dropped when the checkpoint was written
  };

  SUBCASE("GPU writes, CPU resumes") {
    cfg.checkpoint = dir.path / "gpu.safetensors";
    cuda::Gpt<LoraSpec, float> g(w, full_options());
    train::Trainer<cuda::Gpt<LoraSpec, float>> tg(g, cfg, batches, no_eval);
    tg.run();
    model::GptWeights<float> wc = w;
    model::Gpt<LoraSpec, float> c(wc, full_options());
    train::Trainer<model::Gpt<LoraSpec, float>> tc(c, cfg, batches, no_eval);
    CHECK(tc.load_checkpoint(cfg.checkpoint) == 5);
    same_state(tc.optimizer(), tg.optimizer());
    cfg.stop_after = -1;
    train::Trainer<model::Gpt<LoraSpec, float>> resume(c, cfg, batches, no_eval);
    CHECK(resume.run().resumed_from == 5);
  }
  SUBCASE("CPU writes, GPU resumes") {
    cfg.checkpoint = dir.path / "cpu.safetensors";
    model::GptWeights<float> wc = w;
    model::Gpt<LoraSpec, float> c(wc, full_options());
    train::Trainer<model::Gpt<LoraSpec, float>> tc(c, cfg, batches, no_eval);
    tc.run();
    cuda::Gpt<LoraSpec, bf16> g(w, full_options());  // a bf16 run may resume an fp32 one
    train::Trainer<cuda::Gpt<LoraSpec, bf16>> tg(g, cfg, batches, no_eval);
    CHECK(tg.load_checkpoint(cfg.checkpoint) == 5);
    same_state(tg.optimizer(), tc.optimizer());
    cfg.stop_after = -1;
    train::Trainer<cuda::Gpt<LoraSpec, bf16>> resume(g, cfg, batches, no_eval);
    CHECK(resume.run().resumed_from == 5);
  }
}
