/// \file
/// \brief LayerNorm over the feature dimension of a token matrix: forward and backward.
#pragma once

#include <cmath>
#include <span>

#include "loralab/cpu/eigen_types.hpp"
#include "loralab/model/detail/checks.hpp"

namespace loralab::model {

/// \ingroup model
/// \brief LayerNorm per row:
/// \f[ Y_{i:} = \gamma \odot (X_{i:} - \mu_i)\, \rho_i + \beta, \quad
///     \rho_i = 1 / \sqrt{\mathrm{var}(X_{i:}) + \epsilon} \f]
/// (biased variance, as PyTorch). Call as `layernorm_forward<T>(...)`.
///
/// Writes Y [n x d], mean [n] and rstd [n] (= rho); layernorm_backward needs X, mean and rstd.
/// \throws Error `[loralab.shape]` when gamma, beta, Y, mean or rstd do not match X [n x d].
template <class T>
void layernorm_forward(cpu::ConstMatrixRef<T> X,  // [n x d]
                       std::span<const T> gamma,  // [d]
                       std::span<const T> beta,   // [d]
                       double eps,                // added to the variance
                       cpu::MatrixRef<T> Y,       // [n x d], written
                       std::span<T> mean,         // [n], written
                       std::span<T> rstd) {       // [n], written
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  const Eigen::Index n = X.rows(), d = X.cols();
  constexpr const char* fn = "layernorm_forward";
  detail::check_positive(d, fn, "d");
  detail::check_size(gamma.size(), d, fn, "gamma");
  detail::check_size(beta.size(), d, fn, "beta");
  detail::check_shape(Y, n, d, fn, "Y");
  detail::check_size(mean.size(), n, fn, "mean");
  detail::check_size(rstd.size(), n, fn, "rstd");
  using Row = Eigen::Array<T, 1, Eigen::Dynamic>;
  const Eigen::Map<const Row> g(gamma.data(), d), b(beta.data(), d);  // [d]
  Row xc(d);                                                          // [d] centred row
  for (Eigen::Index i = 0; i < n; ++i) {
    const T mu = X.row(i).mean();
    xc = X.row(i).array() - mu;
    const T rs = T(1) / std::sqrt(xc.square().mean() + static_cast<T>(eps));
    Y.row(i) = (xc * rs * g + b).matrix();
    mean[static_cast<std::size_t>(i)] = mu;
    rstd[static_cast<std::size_t>(i)] = rs;
  }
}

/// \ingroup model
/// \brief Backward of layernorm_forward, from dY = dL/dY [n x d] and the saved mean and rstd.
/// Call as `layernorm_backward<T>(...)`.
///
/// ACCUMULATES into all three outputs (dX += dL/dX, dgamma += dL/dgamma, dbeta += dL/dbeta):
/// LayerNorm sits on the residual stream, so dX adds to the gradient already there, and the
/// parameter gradients add up over calls as in PyTorch. Zero them first for a fresh gradient.
/// \throws Error `[loralab.shape]` when a shape does not match X [n x d].
template <class T>
void layernorm_backward(cpu::ConstMatrixRef<T> dY,  // [n x d]
                        cpu::ConstMatrixRef<T> X,   // [n x d], the forward input
                        std::span<const T> gamma,   // [d]
                        std::span<const T> mean,    // [n], from forward
                        std::span<const T> rstd,    // [n], from forward
                        cpu::MatrixRef<T> dX,       // [n x d], +=
                        std::span<T> dgamma,        // [d], +=
                        std::span<T> dbeta) {       // [d], +=
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  const Eigen::Index n = X.rows(), d = X.cols();
  constexpr const char* fn = "layernorm_backward";
  detail::check_shape(dY, n, d, fn, "dY");
  detail::check_size(gamma.size(), d, fn, "gamma");
  detail::check_size(mean.size(), n, fn, "mean");
  detail::check_size(rstd.size(), n, fn, "rstd");
  detail::check_shape(dX, n, d, fn, "dX");
  detail::check_size(dgamma.size(), d, fn, "dgamma");
  detail::check_size(dbeta.size(), d, fn, "dbeta");
  using Row = Eigen::Array<T, 1, Eigen::Dynamic>;
  const Eigen::Map<const Row> g(gamma.data(), d);  // [d]
  Eigen::Map<Row> dg(dgamma.data(), d), db(dbeta.data(), d);
  Row norm(d), dnorm(d);  // [d] normalized input and dL/dnorm of one row
  for (Eigen::Index i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    norm = (X.row(i).array() - mean[k]) * rstd[k];
    dnorm = dY.row(i).array() * g;
    db += dY.row(i).array();
    dg += norm * dY.row(i).array();
    const T dnorm_mean = dnorm.mean();
    const T dnorm_norm_mean = (dnorm * norm).mean();
    dX.row(i).array() += rstd[k] * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
  }
}

}  // namespace loralab::model
