/// \file
/// \brief ROSA's factorization on the CPU (methods.md 6.3): the thin SVD of a weight, the
/// trainable slice B = U_I, A = diag(S_I) V_I^T / s, and the frozen complement
/// W_fixed = U_~I diag(S_~I) V_~I^T (svd_equal: W_fixed + s B A = W).
#pragma once

#include <Eigen/SVD>
#include <algorithm>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cpu/eigen_types.hpp"

namespace loralab::cpu {

/// \ingroup cpu
/// \brief The result of slicing one weight [out x in] at component indices I.
template <class T>
struct SvdSlice {
  MatrixR<T> A;                  ///< diag(S_I) V_I^T / scale [r x in]
  MatrixR<T> B;                  ///< U_I [out x r], orthonormal columns
  MatrixR<T> fixed;              ///< the complement U_~I diag(S_~I) V_~I^T [out x in]
  std::vector<double> singular;  ///< every singular value, descending
};

/// \ingroup cpu
/// \brief Slices `W` at the (ascending, distinct) component indices `I`, for a branch scale
/// `scale` (A is divided by it, so s B A is the slice at any scale). The SVD runs in double.
/// Singular vectors get a fixed sign: the largest-magnitude entry of each U column is positive.
/// \throws Error on an index outside [0, min(out, in)) or a non-finite W.
template <class T>
SvdSlice<T> svd_slice(const Eigen::Ref<const MatrixR<T>>& W, const std::vector<int>& I,
                      double scale) {
  using Md = Eigen::MatrixXd;
  const Eigen::Index k = std::min(W.rows(), W.cols());
  const Md Wd = W.template cast<double>();
  LORALAB_CHECK(Wd.allFinite(), "[loralab.numeric] ROSA factorization of a non-finite weight");
  Eigen::BDCSVD<Md> svd(Wd, Eigen::ComputeThinU | Eigen::ComputeThinV);
  Md U = svd.matrixU(), V = svd.matrixV();
  const Eigen::VectorXd S = svd.singularValues();
  for (Eigen::Index j = 0; j < k; ++j) {
    Eigen::Index at = 0;
    U.col(j).cwiseAbs().maxCoeff(&at);
    if (U(at, j) < 0) {
      U.col(j) *= -1.0;
      V.col(j) *= -1.0;
    }
  }
  std::vector<bool> in_slice(std::size_t(k), false);
  for (int i : I) {
    LORALAB_CHECK(i >= 0 && i < k, "[loralab.shape] ROSA component ", i, " outside [0, ", k, ")");
    in_slice[std::size_t(i)] = true;
  }
  const Eigen::Index r = Eigen::Index(I.size());
  SvdSlice<T> out;
  Md A(r, W.cols()), B(W.rows(), r);
  for (Eigen::Index j = 0; j < r; ++j) {
    const int c = I[std::size_t(j)];
    B.col(j) = U.col(c);
    A.row(j) = (S(c) / scale) * V.col(c).transpose();
  }
  Md Uc(W.rows(), k - r), Vc(W.cols(), k - r);  // the complement, scaled by its S
  for (Eigen::Index c = 0, j = 0; c < k; ++c)
    if (!in_slice[std::size_t(c)]) {
      Uc.col(j) = S(c) * U.col(c);
      Vc.col(j++) = V.col(c);
    }
  const Md fixed = Uc * Vc.transpose();
  out.A = A.cast<T>();
  out.B = B.cast<T>();
  out.fixed = fixed.cast<T>();
  out.singular.assign(S.data(), S.data() + k);
  return out;
}

}  // namespace loralab::cpu
