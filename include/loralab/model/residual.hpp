/// \file
/// \brief The residual add of a transformer block: forward and backward.
#pragma once

#include "loralab/cpu/eigen_types.hpp"
#include "loralab/model/detail/checks.hpp"

namespace loralab::model {

/// \ingroup model
/// \brief Y = A + B. WRITES Y [n x d]; Y may be A or B itself (in place). Call as
/// `residual_forward<T>(...)`.
/// \throws Error `[loralab.shape]` when the shapes differ.
template <class T>
void residual_forward(cpu::ConstMatrixRef<T> A,  // [n x d]
                      cpu::ConstMatrixRef<T> B,  // [n x d]
                      cpu::MatrixRef<T> Y) {     // [n x d], written
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  detail::check_shape(B, A.rows(), A.cols(), "residual_forward", "B");
  detail::check_shape(Y, A.rows(), A.cols(), "residual_forward", "Y");
  Y = A + B;
}

/// \ingroup model
/// \brief Backward of residual_forward: ACCUMULATES dA += dY and dB += dY (each branch may
/// already hold gradient from elsewhere, as llm.c's residual_backward). Call as
/// `residual_backward<T>(...)`.
/// \throws Error `[loralab.shape]` when the shapes differ.
template <class T>
void residual_backward(cpu::ConstMatrixRef<T> dY,  // [n x d]
                       cpu::MatrixRef<T> dA,       // [n x d], +=
                       cpu::MatrixRef<T> dB) {     // [n x d], +=
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  detail::check_shape(dA, dY.rows(), dY.cols(), "residual_backward", "dA");
  detail::check_shape(dB, dY.rows(), dY.cols(), "residual_backward", "dB");
  dA += dY;
  dB += dY;
}

}  // namespace loralab::model
