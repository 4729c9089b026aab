/// \file
/// \brief The tied language-model head (logits = X wte^T) and softmax cross-entropy with ignored
/// targets: forward and backward.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>

#include "loralab/cpu/eigen_types.hpp"
#include "loralab/model/detail/checks.hpp"

namespace loralab::model {

/// \ingroup model
/// \brief The target value that marks a position without a loss (PyTorch's ignore_index = -100
/// plays this role there; here it is -1).
inline constexpr std::int32_t kIgnoreTarget = -1;

/// \ingroup model
/// \brief What cross_entropy_forward returns.
struct CrossEntropyResult {
  double loss = 0;         ///< mean over the non-ignored positions; 0 when there are none
  Eigen::Index count = 0;  ///< the number of non-ignored positions (cross_entropy_backward's)
};

namespace detail {

/// Throws `[loralab.data]` on a target outside [0, vocab) other than kIgnoreTarget; returns the
/// number of non-ignored targets.
inline Eigen::Index check_targets(std::span<const std::int32_t> targets, Eigen::Index vocab,
                                  const char* fn) {
  Eigen::Index count = 0;
  for (std::size_t i = 0; i < targets.size(); ++i) {
    if (targets[i] == kIgnoreTarget) continue;
    LORALAB_CHECK(targets[i] >= 0 && targets[i] < vocab, "[loralab.data] ", fn, ": target ",
                  targets[i], " at position ", i, " is outside [0, vocab=", vocab,
                  ") and is not the ignore value ", kIgnoreTarget);
    ++count;
  }
  return count;
}

}  // namespace detail

/// \ingroup model
/// \brief The tied head: logits = X wte^T. WRITES logits [n x V]. Call as
/// `lm_head_forward<T>(...)`.
/// \throws Error `[loralab.shape]` when the widths of X and wte differ or logits is not [n x V].
template <class T>
void lm_head_forward(cpu::ConstMatrixRef<T> X,    // [n x d]
                     cpu::ConstMatrixRef<T> wte,  // [V x d]
                     cpu::MatrixRef<T> logits) {  // [n x V], written
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  detail::check_shape(X, X.rows(), wte.cols(), "lm_head_forward", "X");
  detail::check_shape(logits, X.rows(), wte.rows(), "lm_head_forward", "logits");
  logits.noalias() = X * wte.transpose();
}

/// \ingroup model
/// \brief Backward of lm_head_forward from dlogits [n x V]: WRITES dX = dlogits wte [n x d]
/// (the final LayerNorm's output feeds only the head) and ACCUMULATES dwte += dlogits^T X
/// (the same dwte embedding_backward adds into). Call as `lm_head_backward<T>(...)`.
/// \throws Error `[loralab.shape]` on mismatched shapes.
template <class T>
void lm_head_backward(cpu::ConstMatrixRef<T> dlogits,  // [n x V]
                      cpu::ConstMatrixRef<T> X,        // [n x d], the forward input
                      cpu::ConstMatrixRef<T> wte,      // [V x d]
                      cpu::MatrixRef<T> dX,            // [n x d], written
                      cpu::MatrixRef<T> dwte) {        // [V x d], +=
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  constexpr const char* fn = "lm_head_backward";
  detail::check_shape(X, X.rows(), wte.cols(), fn, "X");
  detail::check_shape(dlogits, X.rows(), wte.rows(), fn, "dlogits");
  detail::check_shape(dX, X.rows(), wte.cols(), fn, "dX");
  detail::check_shape(dwte, wte.rows(), wte.cols(), fn, "dwte");
  dX.noalias() = dlogits * wte;
  dwte.noalias() += dlogits.transpose() * X;
}

/// \ingroup model
/// \brief Softmax cross-entropy per row, averaged over the non-ignored rows:
/// \f[ \ell_i = \log \textstyle\sum_v e^{z_{iv}} - z_{i, y_i}, \quad
///     L = \frac{1}{|\{i : y_i \ne -1\}|} \sum_{i : y_i \ne -1} \ell_i \f]
/// computed with the row maximum subtracted; the loss is summed in double.
/// WRITES probs [n x V] = softmax of every row (ignored rows too). probs may be logits itself
/// (in place, saving the largest activation). Call as `cross_entropy_forward<T>(...)`.
/// \returns the mean loss (0 when every target is ignored) and the count of non-ignored rows.
/// \throws Error `[loralab.data]` on a target outside [0, V) other than -1; `[loralab.shape]`
/// when targets does not hold n entries or probs is not [n x V].
template <class T>
CrossEntropyResult cross_entropy_forward(cpu::ConstMatrixRef<T> logits,          // [n x V]
                                         std::span<const std::int32_t> targets,  // [n]
                                         cpu::MatrixRef<T> probs) {              // [n x V], written
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  constexpr const char* fn = "cross_entropy_forward";
  const Eigen::Index n = logits.rows(), vocab = logits.cols();
  detail::check_positive(vocab, fn, "V");
  detail::check_size(targets.size(), n, fn, "targets");
  detail::check_shape(probs, n, vocab, fn, "probs");
  CrossEntropyResult result;
  result.count = detail::check_targets(targets, vocab, fn);
  double total = 0;
  for (Eigen::Index i = 0; i < n; ++i) {
    const std::int32_t y = targets[static_cast<std::size_t>(i)];
    const T z_y = y == kIgnoreTarget ? T(0) : logits(i, y);  // read before probs overwrites it
    const T mx = logits.row(i).maxCoeff();
    T sum(0);
    for (Eigen::Index j = 0; j < vocab; ++j) {  // scalar std::exp: Eigen's AVX-512 exp trips
      const T e = std::exp(logits(i, j) - mx);  // GCC 12's -Wuninitialized in every consumer
      probs(i, j) = e;
      sum += e;
    }
    probs.row(i) /= sum;
    if (y != kIgnoreTarget) total += double(mx) + std::log(double(sum)) - double(z_y);
  }
  result.loss = result.count > 0 ? total / double(result.count) : 0.0;
  return result;
}

/// \ingroup model
/// \brief Backward of cross_entropy_forward for L = the mean loss: WRITES
/// dlogits[i] = (probs[i] - onehot(y_i)) / count, and 0 for ignored rows. count is usually
/// CrossEntropyResult::count; pass a larger one (the total over micro-batches) to average over
/// several calls. count 0 is allowed only when every target is ignored (dlogits = 0).
/// dlogits may be probs itself (in place). Call as `cross_entropy_backward<T>(...)`.
/// \throws Error `[loralab.data]` on a bad target or a count below 1 with non-ignored targets;
/// `[loralab.shape]` on mismatched shapes.
template <class T>
void cross_entropy_backward(cpu::ConstMatrixRef<T> probs,           // [n x V], from forward
                            std::span<const std::int32_t> targets,  // [n]
                            Eigen::Index count,
                            cpu::MatrixRef<T> dlogits) {  // [n x V], written
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  constexpr const char* fn = "cross_entropy_backward";
  const Eigen::Index n = probs.rows(), vocab = probs.cols();
  detail::check_size(targets.size(), n, fn, "targets");
  detail::check_shape(dlogits, n, vocab, fn, "dlogits");
  const Eigen::Index present = detail::check_targets(targets, vocab, fn);
  LORALAB_CHECK(count >= 1 || (count == 0 && present == 0), "[loralab.data] ", fn,
                ": count=", count, " with ", present, " non-ignored targets (count must be >= 1)");
  const T inv = count > 0 ? T(1) / static_cast<T>(count) : T(0);
  for (Eigen::Index i = 0; i < n; ++i) {
    const std::int32_t y = targets[static_cast<std::size_t>(i)];
    if (y == kIgnoreTarget) {
      dlogits.row(i).setZero();
      continue;
    }
    dlogits.row(i) = probs.row(i) * inv;
    dlogits(i, y) -= inv;
  }
}

}  // namespace loralab::model
