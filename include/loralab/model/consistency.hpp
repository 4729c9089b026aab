/// \file
/// \brief The compensation losses of the dropout framework (methods.md 4.3, 4.5): bidirectional
/// KL between two stochastic passes (R-Drop, HiddenKey) and JS against the deterministic pass
/// (HiddenCut), per target token and averaged over the non-ignored ones, with their gradients
/// with respect to the logits of the back-propagated branch (the other branch is constant).
#pragma once

#include <cmath>
#include <cstdint>
#include <span>

#include "loralab/cpu/eigen_types.hpp"
#include "loralab/model/detail/checks.hpp"
#include "loralab/model/loss.hpp"

namespace loralab::model {

/// \ingroup model
/// \brief Which consistency loss.
enum class Consistency {
  symmetric_kl,  ///< 0.5 * (KL(P1 || P2) + KL(P2 || P1)), P2 from a second stochastic pass
  js,  ///< JS(P1, P) = 0.5 KL(P1 || M) + 0.5 KL(P || M), M = (P1 + P) / 2, P deterministic
};

namespace detail {

// Row softmax in double with its log (log-sum-exp with the max subtracted).
template <class Row>
void log_softmax_row(const Row& z, Eigen::VectorXd& p, Eigen::VectorXd& logp) {
  const Eigen::Index V = z.size();
  double mx = -INFINITY;
  for (Eigen::Index v = 0; v < V; ++v) mx = std::max(mx, double(z(v)));
  double sum = 0;
  for (Eigen::Index v = 0; v < V; ++v) sum += std::exp(double(z(v)) - mx);
  const double lse = mx + std::log(sum);
  p.resize(V);
  logp.resize(V);
  for (Eigen::Index v = 0; v < V; ++v) {
    logp(v) = double(z(v)) - lse;
    p(v) = std::exp(logp(v));
  }
}

}  // namespace detail

/// \ingroup model
/// \brief The consistency loss between branch-1 logits and reference logits (the second pass for
/// symmetric_kl, the deterministic pass for js), averaged over rows whose target is not -1, and
/// ACCUMULATES `weight` times its gradient with respect to logits1 into dlogits1 (the reference
/// is a constant: the detached branch). Pass an empty dlogits1 (0 x 0) for the loss alone.
/// Computed in double. Call as `consistency_loss<T>(...)`.
/// \returns the mean loss (0 without non-ignored rows), unweighted.
/// \throws Error `[loralab.shape]` when the shapes differ or targets does not hold n entries.
template <class T>
double consistency_loss(Consistency kind, cpu::ConstMatrixRef<T> logits1,
                        cpu::ConstMatrixRef<T> reference, std::span<const std::int32_t> targets,
                        double weight, cpu::MatrixRef<T> dlogits1) {
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  constexpr const char* fn = "consistency_loss";
  const Eigen::Index n = logits1.rows(), V = logits1.cols();
  detail::check_shape(reference, n, V, fn, "reference");
  detail::check_size(targets.size(), n, fn, "targets");
  const bool grad = dlogits1.size() > 0;
  if (grad) detail::check_shape(dlogits1, n, V, fn, "dlogits1");
  Eigen::Index count = 0;
  for (auto y : targets) count += y != kIgnoreTarget;
  if (count == 0) return 0.0;
  Eigen::VectorXd p1, lp1, p2, lp2, g(V);
  double total = 0;
  for (Eigen::Index i = 0; i < n; ++i) {
    if (targets[std::size_t(i)] == kIgnoreTarget) continue;
    detail::log_softmax_row(logits1.row(i), p1, lp1);
    detail::log_softmax_row(reference.row(i), p2, lp2);
    if (kind == Consistency::symmetric_kl) {
      const double kl12 = (p1.array() * (lp1 - lp2).array()).sum();
      const double kl21 = (p2.array() * (lp2 - lp1).array()).sum();
      total += 0.5 * (kl12 + kl21);
      // d/dz1: 0.5 * ((P1 - P2) + P1 .* (log P1 - log P2 - KL(P1||P2)))  (methods.md 4.5)
      if (grad) g = 0.5 * ((p1 - p2).array() + p1.array() * ((lp1 - lp2).array() - kl12)).matrix();
    } else {
      const Eigen::VectorXd m = 0.5 * (p1 + p2);
      const Eigen::VectorXd lm = m.array().log().matrix();
      total += 0.5 * (p1.array() * (lp1 - lm).array()).sum() +
               0.5 * (p2.array() * (lp2 - lm).array()).sum();
      // dJS/dP1 = 0.5 log(P1 / M); through the softmax: P1 .* (a - <P1, a>)
      if (grad) {
        const Eigen::VectorXd a = 0.5 * (lp1 - lm);
        g = (p1.array() * (a.array() - p1.dot(a))).matrix();
      }
    }
    if (grad)
      for (Eigen::Index v = 0; v < V; ++v) dlogits1(i, v) += T(weight * g(v) / double(count));
  }
  return total / double(count);
}

}  // namespace loralab::model
