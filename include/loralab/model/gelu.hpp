/// \file
/// \brief GELU, GPT-2's tanh approximation (HF "gelu_new"): forward and backward.
#pragma once

#include <cmath>

#include "loralab/cpu/eigen_types.hpp"
#include "loralab/model/detail/checks.hpp"

namespace loralab::model {

namespace detail {

inline constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2 / pi)
inline constexpr double kGeluCubic = 0.044715;

/// gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <class T>
T gelu(T x) {
  const T u = T(kSqrt2OverPi) * (x + T(kGeluCubic) * x * x * x);
  return T(0.5) * x * (T(1) + std::tanh(u));
}

/// d gelu / dx; sech^2 as 1 - tanh^2 (cosh would overflow for large |x|).
template <class T>
T gelu_grad(T x) {
  const T u = T(kSqrt2OverPi) * (x + T(kGeluCubic) * x * x * x);
  const T t = std::tanh(u);
  const T du = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluCubic) * x * x);
  return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
}

}  // namespace detail

/// \ingroup model
/// \brief Y = gelu(X) element-wise, with GPT-2's tanh approximation
/// \f[ \mathrm{gelu}(x) = \tfrac12 x \left(1 + \tanh\!\left(\sqrt{2/\pi}\,(x + 0.044715 x^3)
///     \right)\right). \f]
/// WRITES Y [n x m] (same shape as X). Y may be X itself (in place), but then
/// gelu_backward needs a copy of X. Call as `gelu_forward<T>(...)`.
/// \throws Error `[loralab.shape]` when Y's shape differs from X's.
template <class T>
void gelu_forward(cpu::ConstMatrixRef<T> X,  // [n x m]
                  cpu::MatrixRef<T> Y) {     // [n x m], written
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  detail::check_shape(Y, X.rows(), X.cols(), "gelu_forward", "Y");
  for (Eigen::Index i = 0; i < X.rows(); ++i)
    for (Eigen::Index j = 0; j < X.cols(); ++j) Y(i, j) = detail::gelu(X(i, j));
}

/// \ingroup model
/// \brief dX = gelu'(X) .* dY from the forward input X and dY = dL/dY.
/// WRITES dX (it does not accumulate: GELU's input feeds nothing else in a GPT-2 MLP).
/// dX may be dY itself (in place). Call as `gelu_backward<T>(...)`.
/// \throws Error `[loralab.shape]` when dY or dX differ in shape from X.
template <class T>
void gelu_backward(cpu::ConstMatrixRef<T> X,   // [n x m], the forward input
                   cpu::ConstMatrixRef<T> dY,  // [n x m]
                   cpu::MatrixRef<T> dX) {     // [n x m], written
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  detail::check_shape(dY, X.rows(), X.cols(), "gelu_backward", "dY");
  detail::check_shape(dX, X.rows(), X.cols(), "gelu_backward", "dX");
  for (Eigen::Index i = 0; i < X.rows(); ++i)
    for (Eigen::Index j = 0; j < X.cols(); ++j) dX(i, j) = detail::gelu_grad(X(i, j)) * dY(i, j);
}

}  // namespace loralab::model
