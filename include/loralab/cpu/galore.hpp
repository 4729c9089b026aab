/// \file
/// \brief `cpu::GaloreProjector`: GaLore's per-weight projector on the CPU (Eigen): refresh from
/// the gradient by exact thin SVD or a randomized range finder, project, back-project.
///
/// Singular vectors are defined up to sign; we fix it (the entry of largest magnitude of each
/// projector vector is positive, the first such entry on ties) so that every backend and every
/// SVD routine gives the same projector and moments carried across a refresh mean the same.
#pragma once

#include <Eigen/Dense>
#include <Eigen/SVD>
#include <cstdint>
#include <span>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/core/philox.hpp"
#include "loralab/core/random_fill.hpp"
#include "loralab/cpu/eigen_types.hpp"
#include "loralab/optim/galore.hpp"

namespace loralab::cpu {

/// \ingroup optim
/// \brief The projector of one weight [m x n] (methods.md 5.4).
/// \tparam T float or double (the SVD runs in T).
template <class T>
class GaloreProjector {
 public:
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;  ///< column-major work matrix

  /// \brief An empty projector for a weight of `rows` x `cols` under `cfg` (validated).
  GaloreProjector(const GaloreConfig& cfg, std::int64_t rows, std::int64_t cols)
      : cfg_(cfg), rows_(rows), cols_(cols), shapes_(GaloreShapes::make(cfg, rows, cols)) {
    validate(cfg);
  }

  /// \brief Whether a projector has been computed.
  bool ready() const { return ready_; }
  /// \brief Shapes of the state.
  const GaloreShapes& shapes() const { return shapes_; }
  /// \brief Refreshes done so far.
  std::int64_t refreshes() const { return refreshes_; }
  /// \brief Forgets the projector (state reset or drop).
  void clear() {
    ready_ = false;
    left_.resize(0, 0);
    right_.resize(0, 0);
  }

  /// \brief Recomputes the projector from the gradient `G` [m x n]. `tensor` and the refresh
  /// count key the randomized sketch.
  void refresh(const Eigen::Ref<const MatrixR<T>>& G, std::uint32_t tensor) {
    LORALAB_CHECK(G.rows() == rows_ && G.cols() == cols_,
                  "[loralab.shape] GaLore refresh: ", "gradient [", G.rows(), " x ", G.cols(),
                  "], projector for [", rows_, " x ", cols_, "]");
    const Eigen::Index r = shapes_.rank;
    Matrix U, V;  // [m x r], [n x r]: leading singular vectors
    if (cfg_.refresh == GaloreRefresh::exact_svd) {
      Eigen::BDCSVD<Matrix> svd(Matrix(G), Eigen::ComputeThinU | Eigen::ComputeThinV);
      U = svd.matrixU().leftCols(r);
      V = svd.matrixV().leftCols(r);
    } else {
      randomized(G, tensor, U, V);
    }
    // Sign convention on the vectors the projector keeps (U for left and both, V for right).
    for (Eigen::Index i = 0; i < r; ++i) {
      const bool on_u = shapes_.side != GaloreSide::right;
      Eigen::Index k = 0;
      (on_u ? U.col(i) : V.col(i)).cwiseAbs().maxCoeff(&k);
      if ((on_u ? U(k, i) : V(k, i)) < T(0)) {
        U.col(i) *= T(-1);
        V.col(i) *= T(-1);
      }
    }
    left_ = U;               // P = U_r [m x r] (left, both)
    right_ = V.transpose();  // P = Vh_r [r x n] (right, both)
    ready_ = true;
    ++refreshes_;
  }

  /// \brief R = project(G): right G P^T [m x r]; left P^T G [r x n]; both U^T G Vh^T [r x r].
  void project(const Eigen::Ref<const MatrixR<T>>& G, MatrixR<T>& R) const {
    check_ready("project");
    switch (shapes_.side) {
      case GaloreSide::right:
        R.noalias() = G * right_.transpose();
        break;
      case GaloreSide::left:
        R.noalias() = left_.transpose() * G;
        break;
      case GaloreSide::both:
        R.noalias() = left_.transpose() * G * right_.transpose();
        break;
    }
  }

  /// \brief D = back_project(N) [m x n] (without GaLore's alpha, which the update applies).
  void back_project(const Eigen::Ref<const MatrixR<T>>& N, MatrixR<T>& D) const {
    check_ready("back_project");
    switch (shapes_.side) {
      case GaloreSide::right:
        D.noalias() = N * right_;
        break;
      case GaloreSide::left:
        D.noalias() = left_ * N;
        break;
      case GaloreSide::both:
        D.noalias() = left_ * N * right_;
        break;
    }
  }

  /// \brief The projector entries in one vector (left P then right P, as the side uses them),
  /// for checkpoints.
  std::vector<T> values() const {
    std::vector<T> out;
    if (!ready_) return out;
    if (shapes_.side != GaloreSide::right)
      for (Eigen::Index i = 0; i < left_.rows(); ++i)
        for (Eigen::Index j = 0; j < left_.cols(); ++j) out.push_back(left_(i, j));
    if (shapes_.side != GaloreSide::left)
      for (Eigen::Index i = 0; i < right_.rows(); ++i)
        for (Eigen::Index j = 0; j < right_.cols(); ++j) out.push_back(right_(i, j));
    return out;
  }
  /// \brief Restores values() (an empty span clears). \throws Error on a length mismatch.
  void set_values(std::span<const T> v, std::int64_t refreshes) {
    refreshes_ = refreshes;
    if (v.empty()) {
      clear();
      return;
    }
    LORALAB_CHECK(std::int64_t(v.size()) == shapes_.projector_size, "[loralab.state] GaLore ",
                  "projector of ", v.size(), " entries, expected ", shapes_.projector_size);
    const Eigen::Index r = shapes_.rank;
    std::size_t k = 0;
    if (shapes_.side != GaloreSide::right) {
      left_.resize(rows_, r);
      for (Eigen::Index i = 0; i < rows_; ++i)
        for (Eigen::Index j = 0; j < r; ++j) left_(i, j) = v[k++];
    }
    if (shapes_.side != GaloreSide::left) {
      right_.resize(r, cols_);
      for (Eigen::Index i = 0; i < r; ++i)
        for (Eigen::Index j = 0; j < cols_; ++j) right_(i, j) = v[k++];
    }
    ready_ = true;
  }
  /// \brief Left projector U_r [m x r] (left and both sides).
  const MatrixR<T>& left() const { return left_; }
  /// \brief Right projector Vh_r [r x n] (right and both sides).
  const MatrixR<T>& right() const { return right_; }

 private:
  void check_ready(const char* what) const {
    LORALAB_CHECK(ready_, "[loralab.state] GaloreProjector::", what, " before the first refresh");
  }

  // Halko, Martinsson & Tropp: Y = G Omega, power iterations with re-orthonormalization, then
  // the SVD of the small Q^T G. Omega is N(0, 1) from Philox keyed by (tensor, refresh).
  void randomized(const Eigen::Ref<const MatrixR<T>>& G, std::uint32_t tensor, Matrix& U,
                  Matrix& V) const {
    const Eigen::Index m = rows_, n = cols_, r = shapes_.rank;
    const Eigen::Index k = std::min<Eigen::Index>(r + cfg_.oversample, std::min(m, n));
    const std::uint64_t stream =
        make_stream(RngPurpose::galore_sketch, tensor, std::uint32_t(refreshes_));
    Matrix omega(n, k);
    for (Eigen::Index i = 0; i < n; ++i)
      for (Eigen::Index j = 0; j < k; ++j)
        omega(i, j) = normal_element<T>(cfg_.seed, stream, std::uint64_t(i * k + j), 1.0);
    const Matrix Gc = G;
    auto orth = [](const Matrix& Y) {
      Eigen::HouseholderQR<Matrix> qr(Y);
      return Matrix(qr.householderQ() * Matrix::Identity(Y.rows(), Y.cols()));
    };
    Matrix Q = orth(Gc * omega);
    for (int q = 0; q < cfg_.power_iterations; ++q) {
      const Matrix Z = orth(Gc.transpose() * Q);
      Q = orth(Gc * Z);
    }
    const Matrix B = Q.transpose() * Gc;  // [k x n]
    Eigen::BDCSVD<Matrix> svd(B, Eigen::ComputeThinU | Eigen::ComputeThinV);
    U = (Q * svd.matrixU()).leftCols(r);
    V = svd.matrixV().leftCols(r);
  }

  GaloreConfig cfg_;
  std::int64_t rows_, cols_;
  GaloreShapes shapes_;
  MatrixR<T> left_, right_;
  bool ready_ = false;
  std::int64_t refreshes_ = 0;
};

}  // namespace loralab::cpu
