// The framework's masks and the attention/consistency pieces of HiddenKey (methods.md 4.4, 4.5,
// invariants 4.9.2 to 4.9.4, 4.9.7 and 4.9.8): mask determinism and independence, DropKey rows,
// DropKey vs DropAttention forward and gradients against finite differences, the KL/JS losses
// and their gradients against finite differences.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "loralab/dropout/masks.hpp"
#include "loralab/model/attention.hpp"
#include "loralab/model/consistency.hpp"
#include "support/testing.hpp"

using namespace loralab;
using dropout::MaskKey;
using dropout::Pattern;
using dropout::Position;
using MatD = cpu::MatrixR<double>;

namespace {

constexpr int B = 2, H = 2, T = 6, D = 8;

MatD random_qkv(double scale) {
  MatD qkv(B * T, 3 * D);
  for (Eigen::Index i = 0; i < qkv.size(); ++i)
    qkv.data()[i] = scale * std::sin(1.7 * double(i) + 0.3);
  return qkv;
}

std::vector<std::uint8_t> attention_keep(const MaskKey& k, Pattern pat, double p) {
  std::vector<std::uint8_t> keep(std::size_t(B) * H * T * T);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < T; ++i)
        for (int j = 0; j < T; ++j)
          keep[((std::size_t(b) * H + h) * T + i) * T + j] =
              dropout::attention_dropped(k, pat, p, H, T, b, h, i, j) ? 0 : 1;
  return keep;
}

// L = sum(out .* G) for a fixed G: dL/dout = G.
double attention_loss(const MatD& qkv, const model::AttentionHooks& hooks, const MatD& g) {
  MatD out(B * T, D), probs(B * H * T, T);
  model::attention_forward<double>(qkv, B, T, H, out, probs, hooks);
  return (out.array() * g.array()).sum();
}

MatD attention_grad(const MatD& qkv, const model::AttentionHooks& hooks, const MatD& g) {
  MatD out(B * T, D), probs(B * H * T, T), dqkv(B * T, 3 * D);
  model::attention_forward<double>(qkv, B, T, H, out, probs, hooks);
  model::attention_backward<double>(g, qkv, probs, B, T, H, dqkv, hooks);
  return dqkv;
}

MatD fd_grad(MatD qkv, const model::AttentionHooks& hooks, const MatD& g) {
  MatD fd(qkv.rows(), qkv.cols());
  for (Eigen::Index i = 0; i < qkv.size(); ++i) {
    const double saved = qkv.data()[i], h = 1e-6;
    qkv.data()[i] = saved + h;
    const double up = attention_loss(qkv, hooks, g);
    qkv.data()[i] = saved - h;
    const double down = attention_loss(qkv, hooks, g);
    qkv.data()[i] = saved;
    fd.data()[i] = (up - down) / (2 * h);
  }
  return fd;
}

}  // namespace

TEST_CASE("masks: deterministic, independent across branches, steps and layers; rate p") {
  MaskKey k{testing::kSeed, Position::ffn_hidden, 3, 0, 17};
  int dropped = 0, same_branch = 0;
  const int n = 20000;
  MaskKey k2 = k;
  k2.branch = 1;
  for (int i = 0; i < n; ++i) {
    const bool a = dropout::hidden_dropped(k, Pattern::element, 0.2, 10, 100, i / 100, i % 100);
    CHECK(a == dropout::hidden_dropped(k, Pattern::element, 0.2, 10, 100, i / 100, i % 100));
    dropped += a;
    same_branch +=
        a == dropout::hidden_dropped(k2, Pattern::element, 0.2, 10, 100, i / 100, i % 100);
  }
  CHECK(std::abs(dropped / double(n) - 0.2) < 0.015);
  // independent branches agree on a fraction 0.8^2 + 0.2^2 = 0.68 of entries, not all
  CHECK(std::abs(same_branch / double(n) - 0.68) < 0.02);
  // p = 0 never drops
  for (int i = 0; i < 1000; ++i)
    CHECK(!dropout::hidden_dropped(k, Pattern::column, 0.0, 10, 100, i / 100, i % 100));
  // column: one decision per (example, feature), shared by its tokens
  for (int c = 0; c < 100; ++c)
    for (int t = 1; t < 10; ++t)
      CHECK(dropout::hidden_dropped(k, Pattern::column, 0.3, 10, 100, t, c) ==
            dropout::hidden_dropped(k, Pattern::column, 0.3, 10, 100, 0, c));
  // span: exactly round(p*T) consecutive tokens of each example
  for (int b = 0; b < 5; ++b) {
    int count = 0, first = -1, last = -1;
    for (int t = 0; t < 10; ++t)
      if (dropout::hidden_dropped(k, Pattern::span, 0.3, 10, 4, b * 10 + t, 2)) {
        ++count;
        if (first < 0) first = t;
        last = t;
      }
    CHECK(count == 3);
    CHECK(last - first == 2);
  }
}

TEST_CASE("column DropKey: dropped keys get weight exactly 0, rows sum to 1, no NaN (4.9.2)") {
  const MatD qkv = random_qkv(1.0);
  const auto keep =
      attention_keep({testing::kSeed, Position::attention_logits, 0, 0, 1}, Pattern::column, 0.4);
  MatD out(B * T, D), probs(B * H * T, T);
  model::AttentionHooks hooks;
  hooks.logit_keep = keep.data();
  model::attention_forward<double>(qkv, B, T, H, out, probs, hooks);
  CHECK(out.allFinite());
  int all_dropped = 0;
  for (Eigen::Index r = 0; r < probs.rows(); ++r) {
    const Eigen::Index i = r % T;
    bool any_kept = false;
    for (Eigen::Index j = 0; j <= i; ++j) {
      if (!keep[r * T + j]) CHECK(probs(r, j) == 0.0);
      any_kept |= keep[r * T + j] != 0;
    }
    // column pattern: the same keys for every query of the (example, head)
    for (Eigen::Index j = 0; j < T; ++j) CHECK(keep[r * T + j] == keep[(r - i) * T + j]);
    if (any_kept) {
      CHECK(std::abs(probs.row(r).sum() - 1.0) <= 1e-12);
    } else {
      ++all_dropped;
      CHECK(probs.row(r).sum() == 0.0);  // all-dropped: zero weights, not NaN
    }
  }
  CHECK(all_dropped > 0);  // the seed and rate give some, so the branch is exercised
}

TEST_CASE("DropKey and DropAttention: same forward, gradients as the spec says (4.9.3, 4.9.4)") {
  const MatD qkv = random_qkv(2.0);
  MatD g(B * T, D);
  for (Eigen::Index i = 0; i < g.size(); ++i) g.data()[i] = std::cos(0.9 * double(i));
  const auto keep =
      attention_keep({testing::kSeed, Position::attention_logits, 1, 0, 2}, Pattern::element, 0.3);
  model::AttentionHooks dropkey, dropatt, dropatt_grad;
  dropkey.logit_keep = keep.data();
  dropatt.weight_keep = keep.data();
  dropatt_grad.weight_keep = keep.data();
  dropatt_grad.normalizer_stop_gradient = false;

  MatD o1(B * T, D), o2(B * T, D), p1(B * H * T, T), p2(B * H * T, T), p0(B * H * T, T);
  model::attention_forward<double>(qkv, B, T, H, o1, p1, dropkey);
  model::attention_forward<double>(qkv, B, T, H, o2, p2, dropatt);
  CHECK(testing::max_scaled_error(o1, o2, 1e-12, 1e-12) <= 1.0);  // identical forwards

  // DropKey's and no-stop-gradient DropAttention's backward are the true gradient ...
  const MatD fd = fd_grad(qkv, dropkey, g);
  CHECK(testing::max_scaled_error(attention_grad(qkv, dropkey, g), fd, 1e-6, 1e-8) <= 1.0);
  CHECK(testing::max_scaled_error(attention_grad(qkv, dropatt_grad, g), fd, 1e-6, 1e-8) <= 1.0);
  // ... while the stop-gradient on the normalizer makes DropAttention's differ from it.
  const MatD noisy = attention_grad(qkv, dropatt, g);
  CHECK((noisy - fd).cwiseAbs().maxCoeff() > 1e-3);

  // k = (1 - W'_u) / (1 - W_u) in [0, 1] for every kept, allowed u (W' with the drop, W without)
  MatD o0(B * T, D);
  model::attention_forward<double>(qkv, B, T, H, o0, p0, {});
  for (Eigen::Index r = 0; r < p0.rows(); ++r)
    for (Eigen::Index j = 0; j <= r % T; ++j)
      if (keep[r * T + j] && p1(r, j) < 1.0) {
        const double k = (1 - p1(r, j)) / (1 - p0(r, j));
        CHECK(k >= 0.0);
        CHECK(k <= 1.0 + 1e-12);
      }
}

TEST_CASE("consistency losses: values and gradients against finite differences (4.9.7)") {
  const int n = 5, V = 7;
  MatD z1(n, V), z2(n, V), none(0, 0);
  for (Eigen::Index i = 0; i < z1.size(); ++i) {
    z1.data()[i] = std::sin(1.3 * double(i));
    z2.data()[i] = std::cos(0.7 * double(i));
  }
  const std::vector<std::int32_t> targets = {1, -1, 3, 0, 6};  // one ignored row
  using model::Consistency;
  for (Consistency kind : {Consistency::symmetric_kl, Consistency::js}) {
    const double l = model::consistency_loss<double>(kind, z1, z2, targets, 1.0, none);
    CHECK(l > 0);
    CHECK(model::consistency_loss<double>(kind, z2, z1, targets, 1.0, none) ==
          doctest::Approx(l).epsilon(1e-12));  // symmetric
    CHECK(model::consistency_loss<double>(kind, z1, z1, targets, 1.0, none) ==
          doctest::Approx(0.0).epsilon(1e-15));
    MatD grad = MatD::Zero(n, V);
    model::consistency_loss<double>(kind, z1, z2, targets, 2.5, grad);  // weight 2.5
    for (Eigen::Index i = 0; i < z1.size(); ++i) {
      const double saved = z1.data()[i], h = 1e-6;
      z1.data()[i] = saved + h;
      const double up = model::consistency_loss<double>(kind, z1, z2, targets, 1.0, none);
      z1.data()[i] = saved - h;
      const double down = model::consistency_loss<double>(kind, z1, z2, targets, 1.0, none);
      z1.data()[i] = saved;
      const double fd = 2.5 * (up - down) / (2 * h);
      CHECK(std::abs(grad.data()[i] - fd) <= 1e-8 + 1e-6 * std::abs(fd));
    }
    CHECK(grad.row(1).cwiseAbs().maxCoeff() == 0.0);  // the ignored row gets nothing
  }
}

TEST_CASE("DropAttention's backward stays finite when a row's kept weights are denormal (float)") {
  // Each row's own key holds almost all the weight and is dropped; the kept keys hold 1e-41
  // each, so S is denormal. Dividing the gradient by S overflowed to inf and then NaN (seen in
  // training); written in terms of W' = P keep / S it stays finite.
  const cpu::MatrixR<float> qkv = random_qkv(1.0).cast<float>();
  cpu::MatrixR<float> g(B * T, D), probs = cpu::MatrixR<float>::Zero(B * H * T, T),
                                   dqkv(B * T, 3 * D);
  for (Eigen::Index i = 0; i < g.size(); ++i) g.data()[i] = float(30 * std::cos(0.9 * double(i)));
  std::vector<std::uint8_t> keep(std::size_t(B) * H * T * T, 1);
  for (Eigen::Index r = 0; r < probs.rows(); ++r) {
    const Eigen::Index i = r % T;
    for (Eigen::Index j = 0; j < i; ++j) probs(r, j) = 1e-41f;
    probs(r, i) = 1.0f;
    keep[std::size_t(r * T + i)] = 0;
  }
  for (bool stop : {true, false}) {
    model::AttentionHooks hooks;
    hooks.weight_keep = keep.data();
    hooks.normalizer_stop_gradient = stop;
    model::attention_backward<float>(g, qkv, probs, B, T, H, dqkv, hooks);
    CHECK(dqkv.allFinite());
  }
}
