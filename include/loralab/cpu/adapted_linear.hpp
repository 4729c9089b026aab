/// \file
/// \brief `cpu::AdaptedLinear`: a frozen linear layer the caller owns, plus a composed low-rank
/// adapter, in Eigen (float or double).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/adapter_init.hpp"
#include "loralab/core/error.hpp"
#include "loralab/core/memory.hpp"
#include "loralab/core/philox.hpp"
#include "loralab/cpu/eigen_types.hpp"
#include "loralab/cpu/rosa.hpp"
#include "loralab/optim/param_tensor.hpp"
#include "loralab/rosa/subspace.hpp"

namespace loralab::cpu {

/// \ingroup cpu
/// \brief The backend-neutral loralab::Pass, under the CPU namespace for brevity.
using Pass = loralab::Pass;

/// \ingroup cpu
/// \brief A frozen linear layer \f$ Y = X W^T + b \f$ with a low-rank adapter:
/// \f[ Y = X W^T + b + s \, \mathrm{drop}(X) A^T B^T, \quad A \in R^{r \times d_{in}},
///     B \in R^{d_{out} \times r}. \f]
///
/// The weight W [out x in] (and bias b [out]) belong to the caller and are referenced, not copied;
/// merge() and unmerge() write into W. A and B live in one flat buffer (A first, row-major), as do
/// their gradients, so an optimizer sees one tensor. Gradients accumulate across backward calls
/// until zero_grad(), as in PyTorch.
///
/// backward needs the same X that forward saw (the caller keeps it, as llm.c's
/// matmul_backward does); the adapter itself keeps only U = drop(X) A^T [n x r]. The dropout mask
/// is regenerated from Philox in backward rather than stored.
/// \tparam Spec an `Adapter<...>` type. \tparam T float or double.
/// \sa methods.md sections 1 and 2.
template <AdapterSpec Spec, class T>
class AdaptedLinear {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "loralab: cpu::AdaptedLinear supports float and double");
  using freeze_policy = typename Spec::freeze;
  static constexpr bool kHasMask = freeze_policy::has_mask;
  static constexpr bool kFreezeA = freeze_policy::freezes_a;
  static constexpr bool kHasDropout = Spec::dropout::has_input_dropout;

 public:
  using spec = Spec;           ///< the composed adapter type
  using scalar = T;            ///< element type
  using Index = Eigen::Index;  ///< Eigen's index type

  /// \brief Wraps `weight` [out x in] and optional `bias` [out]; draws A, B (and masks) from the
  /// seed. \throws Error on a rank outside [1, min(in, out)], a bias of the wrong length, a
  /// dropout rate outside [0, 1), or alpha that is not finite.
  AdaptedLinear(MatrixRef<T> weight, std::span<const T> bias = {}, const AdapterConfig& cfg = {})
      : weight_(weight.data(), weight.rows(), weight.cols(),
                Eigen::OuterStride<>(weight.outerStride())),
        bias_(bias),
        cfg_(cfg),
        rank_(validate_adapter<Spec>(cfg, weight.cols(), weight.rows(), bias.size())) {
    scale_ = static_cast<T>(Spec::scaling::scale(cfg.alpha, rank_));
    params_.resize(static_cast<std::size_t>(a_size() + b_size()));
    grads_.assign(params_.size(), T(0));
    if constexpr (kHasMask) mask_.resize(params_.size());
    reset();
  }

  /// \brief SVD-slice inits (RosaSubspace, PrincipalSubspace): merges s B A into W, takes the
  /// thin SVD of W, and makes the components of re-factorization `count` (drawn by the init's
  /// law from the seed and module id) the new factors, B = U_I and A = diag(S_I) V_I^T / s, while
  /// W keeps the complement. The layer's function is unchanged (methods.md 6.3, svd_equal);
  /// gradients are zeroed. The constructor does it with count 0.
  /// \throws Error when merged, or unless rank < min(in, out).
  void refactorize(std::uint32_t count) requires(Spec::init::svd_slice) {
    LORALAB_CHECK(!merged_, "[loralab.state] refactorize on a merged adapter; unmerge first");
    MatrixR<T> merged = weight_;
    merged.noalias() += scale_ * (B() * A());
    const std::vector<int> I =
        rosa::choose_subspace(Spec::init::law, int(std::min(in_features(), out_features())), rank_,
                              cfg_.seed, cfg_.module_id, count);
    const SvdSlice<T> slice = svd_slice<T>(merged, I, double(scale_));
    weight_ = slice.fixed;
    A() = slice.A;
    B() = slice.B;
    zero_grad();
  }

  AdaptedLinear(const AdaptedLinear&) = delete;  // holds views into itself and the caller's W
  AdaptedLinear& operator=(const AdaptedLinear&) = delete;
  /// \brief Moves the adapter; the caller's W stays referenced.
  AdaptedLinear(AdaptedLinear&&) noexcept = default;

  /// \brief d_in, the columns of W.
  Index in_features() const { return weight_.cols(); }
  /// \brief d_out, the rows of W.
  Index out_features() const { return weight_.rows(); }
  /// \brief The adapter rank r.
  int rank() const { return rank_; }
  /// \brief The branch scale s (alpha/r, or alpha/sqrt(r) with RsLoraScale).
  T scale() const { return scale_; }
  /// \brief The run-time configuration the adapter was built with.
  const AdapterConfig& config() const { return cfg_; }
  /// \brief True between merge() and unmerge().
  bool merged() const { return merged_; }

  /// \brief A [r x in], writable (tests and loaders set it).
  MatrixMap<T> A() { return {params_.data(), rank_, in_features()}; }
  /// \brief B [out x r], writable.
  MatrixMap<T> B() { return {params_.data() + a_size(), out_features(), rank_}; }
  /// \brief A [r x in].
  ConstMatrixMap<T> A() const { return {params_.data(), rank_, in_features()}; }
  /// \brief B [out x r].
  ConstMatrixMap<T> B() const { return {params_.data() + a_size(), out_features(), rank_}; }
  /// \brief Accumulated dL/dA [r x in]; exactly 0 on frozen entries.
  ConstMatrixMap<T> grad_A() const { return {grads_.data(), rank_, in_features()}; }
  /// \brief Accumulated dL/dB [out x r]; exactly 0 on frozen entries.
  ConstMatrixMap<T> grad_B() const { return {grads_.data() + a_size(), out_features(), rank_}; }
  /// \brief 1 = trainable, 0 = frozen, A's entries then B's (row-major). Empty without a mask.
  std::span<const std::uint8_t> mask() const { return mask_; }
  /// \brief The mask of A [r x in], row-major; empty without a mask.
  std::span<const std::uint8_t> mask_A() const {
    return kHasMask ? std::span<const std::uint8_t>(mask_).first(a_size())
                    : std::span<const std::uint8_t>{};
  }
  /// \brief The mask of B [out x r], row-major; empty without a mask.
  std::span<const std::uint8_t> mask_B() const {
    return kHasMask ? std::span<const std::uint8_t>(mask_).subspan(a_size())
                    : std::span<const std::uint8_t>{};
  }
  /// \brief Replaces the freeze mask (A's entries then B's; 1 = trainable), e.g. from a saved
  /// adapter. Build optimizers after this: their packed state follows the mask they saw.
  /// \throws Error without a RandomMask policy, on a wrong length or a value other than 0/1.
  void set_mask(std::span<const std::uint8_t> mask) {
    LORALAB_CHECK(kHasMask, "[loralab.state] set_mask on an adapter without a freeze mask policy");
    LORALAB_CHECK(mask.size() == mask_.size(), "[loralab.shape] set_mask: ", mask.size(),
                  " entries, the adapter has ", mask_.size());
    for (std::size_t i = 0; i < mask.size(); ++i)
      LORALAB_CHECK(mask[i] <= 1, "[loralab.state] set_mask: entry ", i, " is ", int(mask[i]),
                    ", expected 0 or 1");
    std::copy(mask.begin(), mask.end(), mask_.begin());
    for (std::size_t i = 0; i < grads_.size(); ++i)
      if (!mask_[i]) grads_[i] = T(0);
  }

  /// \brief Model-level dropout on the branch input (the framework's adapter_input position,
  /// any pattern): while `multiplier` is non-null, a training pass feeds the branch X .* M, with
  /// M [n x in] row-major (0 = dropped, else the keep scale), owned by the caller and alive until
  /// the matching backward. Replaces the InputDropout policy's element mask for that pass.
  void set_input_multiplier(const T* multiplier) { input_multiplier_ = multiplier; }

  /// \brief Every entry of A then B, writable (for model-level transforms such as DropConnect).
  std::span<T> factor_values() { return params_; }
  /// \brief The gradients of factor_values(), writable.
  std::span<T> factor_grads() { return grads_; }

  /// \brief The tensors an optimizer updates: A and B with their mask, or B alone under FreezeA.
  std::vector<ParamTensor<T>> parameters() {
    if constexpr (kFreezeA) {
      return {ParamTensor<T>{std::span<T>(params_).subspan(a_size()),
                             std::span<const T>(grads_).subspan(a_size()),
                             {}}};
    } else {
      return {ParamTensor<T>{params_, grads_, mask_}};
    }
  }

  /// \brief Redraws A (and the masks) from the seed, sets B = 0 and the gradients to 0. Unmerges
  /// first if merged, so W returns to its base value.
  void reset() {
    if (merged_) unmerge();
    if constexpr (Spec::init::svd_slice) {  // W holds the complement: fold the slice back, re-slice
      refactorize(0);
      return;
    }
    std::span<T> all(params_);
    fill_initial_adapter<Spec, T>(cfg_, rank_, in_features(), all.first(a_size()),
                                  all.subspan(a_size()), mask_);
    zero_grad();
  }

  /// \brief Sets the accumulated gradients to zero.
  void zero_grad() { std::fill(grads_.begin(), grads_.end(), T(0)); }

  /// \brief Y [n x out] = X W^T + b + s drop(X) A^T B^T for X [n x in]; saves U for backward.
  /// When merged, the plain base layer (W already holds the update).
  void forward(ConstMatrixRef<T> X, MatrixRef<T> Y, Pass pass = {}) {
    LORALAB_CHECK(X.cols() == in_features(), "[loralab.shape] forward: X has ", X.cols(),
                  " columns, the layer expects in=", in_features());
    LORALAB_CHECK(Y.rows() == X.rows() && Y.cols() == out_features(),
                  "[loralab.shape] forward: Y is [", Y.rows(), " x ", Y.cols(), "], expected [",
                  X.rows(), " x ", out_features(), "]");
    if (cfg_.check_finite) require_finite(X, "forward input X");
    Y.noalias() = X * weight_.transpose();
    if (!bias_.empty())
      Y.rowwise() +=
          Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(bias_.data(), out_features());
    last_pass_ = pass;
    saved_rows_ = -1;
    if (merged_) return;
    U_.resize(X.rows(), rank_);
    if (dropout_active(pass)) {
      apply_input_dropout(X, pass, H_);
      U_.noalias() = H_ * A().transpose();
    } else {
      U_.noalias() = X * A().transpose();
    }
    Y.noalias() += scale_ * (U_ * B().transpose());
    saved_rows_ = X.rows();
  }

  /// \brief Convenience overload that allocates Y.
  MatrixR<T> forward(ConstMatrixRef<T> X, Pass pass = {}) {
    MatrixR<T> Y(X.rows(), out_features());
    forward(X, Y, pass);
    return Y;
  }

  /// \brief Accumulates dA, dB from dL/dY [n x out] (frozen entries stay exactly 0), without dX.
  void backward(ConstMatrixRef<T> X, ConstMatrixRef<T> GY) { backward_impl(X, GY, nullptr, true); }

  /// \brief Accumulates dA, dB and writes dX [n x in] = dL/dX.
  void backward(ConstMatrixRef<T> X, ConstMatrixRef<T> GY, MatrixRef<T> dX) {
    LORALAB_CHECK(dX.rows() == X.rows() && dX.cols() == in_features(),
                  "[loralab.shape] backward: dX is [", dX.rows(), " x ", dX.cols(), "], expected [",
                  X.rows(), " x ", in_features(), "]");
    backward_impl(X, GY, &dX, true);
  }

  /// \brief Writes dX [n x in] only; dA and dB are left as they are. For a layer whose adapter
  /// is switched frozen (layer sampling) while the gradient still flows to earlier layers.
  void backward_input(ConstMatrixRef<T> X, ConstMatrixRef<T> GY, MatrixRef<T> dX) {
    LORALAB_CHECK(dX.rows() == X.rows() && dX.cols() == in_features(),
                  "[loralab.shape] backward_input: dX is [", dX.rows(), " x ", dX.cols(),
                  "], expected [", X.rows(), " x ", in_features(), "]");
    backward_impl(X, GY, &dX, false);
  }

  /// \brief W <- W + s B A. Computed into a copy first: a non-finite result throws and leaves W
  /// untouched ("safe merge"). No-op when already merged.
  void merge() {
    if (merged_) return;
    MatrixR<T> updated = weight_;
    updated.noalias() += scale_ * (B() * A());
    LORALAB_CHECK(all_finite(updated),
                  "[loralab.numeric] merge would write non-finite values into W");
    weight_ = updated;
    merged_ = true;
  }

  /// \brief W <- W - s B A (recovers W up to rounding, not bit for bit). No-op when not merged.
  void unmerge() {
    if (!merged_) return;
    weight_.noalias() -= scale_ * (B() * A());
    merged_ = false;
  }

  /// \brief Memory this adapter holds or requires for a batch of `tokens` rows (methods.md 1.9,
  /// 2.5). Optimizer state assumes the mask-aware AdamW (two moments per trainable entry).
  MemoryReport memory(Index tokens) const {
    MemoryReport m;
    const std::int64_t total = a_size() + b_size();
    std::int64_t trainable = total;
    if constexpr (kHasMask) trainable = std::count(mask_.begin(), mask_.end(), std::uint8_t{1});
    if constexpr (kFreezeA) trainable = b_size();
    m.trainable_params = trainable;
    m.frozen_adapter_params = total - trainable;
    m.parameter_bytes = total * std::int64_t(sizeof(T));
    m.gradient_bytes = std::int64_t(grads_.size()) * std::int64_t(sizeof(T));
    m.optimizer_state_bytes = 2 * trainable * std::int64_t(sizeof(T));
    m.mask_bytes = std::int64_t(mask_.size());
    m.saved_input_bytes =
        kFreezeA ? 0 : std::int64_t(tokens) * in_features() * std::int64_t(sizeof(T));
    m.activation_bytes =
        std::int64_t(tokens) * rank_ * std::int64_t(sizeof(T)) + m.saved_input_bytes;
    return m;
  }

 private:
  Index a_size() const { return Index(rank_) * in_features(); }
  Index b_size() const { return out_features() * Index(rank_); }
  bool dropout_active(const Pass& pass) const {
    return pass.training && ((kHasDropout && cfg_.dropout > 0.0) || input_multiplier_);
  }

  template <class M>
  static void require_finite(const M& mat, const char* what) {
    if (all_finite(mat)) return;
    for (Index i = 0; i < mat.rows(); ++i)
      for (Index j = 0; j < mat.cols(); ++j)
        LORALAB_CHECK(std::isfinite(mat(i, j)), "[loralab.numeric] non-finite value ", mat(i, j),
                      " in ", what, " at (", i, ", ", j,
                      "); set AdapterConfig::check_finite=false to propagate");
  }

  // out = X .* D / (1-p), with D regenerated from (seed, module, branch, step): no mask is stored.
  void apply_input_dropout(ConstMatrixRef<T> X, const Pass& pass, MatrixR<T>& out) const {
    out.resize(X.rows(), X.cols());
    if (input_multiplier_) {
      out = X.cwiseProduct(ConstMatrixMap<T>(input_multiplier_, X.rows(), X.cols()));
      return;
    }
    const std::uint64_t stream = input_dropout_stream(cfg_.module_id, pass);
    const std::uint32_t threshold = drop_threshold(cfg_.dropout);
    const T keep_scale = static_cast<T>(1.0 / (1.0 - cfg_.dropout));
    const Index cols = X.cols();
    for (Index r = 0; r < X.rows(); ++r) {
      const T* x = X.row(r).data();
      T* o = out.row(r).data();
      const std::uint64_t base = static_cast<std::uint64_t>(r) * static_cast<std::uint64_t>(cols);
      Index c = 0;
      while (c < cols) {  // one Philox block serves four consecutive elements
        const std::uint64_t e = base + static_cast<std::uint64_t>(c);
        const Philox4x32Block blk = philox_block(cfg_.seed, stream, e >> 2);
        for (unsigned lane = static_cast<unsigned>(e & 3); lane < 4 && c < cols; ++lane, ++c)
          o[c] = blk.v[lane] < threshold ? T(0) : x[c] * keep_scale;
      }
    }
  }

  void backward_impl(ConstMatrixRef<T> X, ConstMatrixRef<T> GY, MatrixRef<T>* dX, bool accumulate) {
    LORALAB_CHECK(!merged_,
                  "[loralab.state] backward on a merged adapter: unmerge() before training");
    LORALAB_CHECK(saved_rows_ >= 0, "[loralab.state] backward without a preceding forward");
    LORALAB_CHECK(X.rows() == saved_rows_ && X.cols() == in_features(),
                  "[loralab.shape] backward: X is [", X.rows(), " x ", X.cols(), "], forward saw [",
                  saved_rows_, " x ", in_features(), "]");
    LORALAB_CHECK(GY.rows() == X.rows() && GY.cols() == out_features(),
                  "[loralab.shape] backward: dY is [", GY.rows(), " x ", GY.cols(), "], expected [",
                  X.rows(), " x ", out_features(), "]");
    if (cfg_.check_finite) require_finite(GY, "backward input dL/dY");
    const bool dropout = dropout_active(last_pass_);
    GU_.resize(X.rows(), rank_);
    GU_.noalias() = scale_ * (GY * B());  // [n x r]
    MatrixMap<T> dA(grads_.data(), rank_, in_features());
    MatrixMap<T> dB(grads_.data() + a_size(), out_features(), rank_);
    if (accumulate) {  // skipped by backward_input: the parameters are frozen for this pass
      dB.noalias() += scale_ * (GY.transpose() * U_);  // [out x r]
      if constexpr (!kFreezeA) {
        if (dropout) {
          apply_input_dropout(X, last_pass_, H_);
          dA.noalias() += GU_.transpose() * H_;  // [r x in]
        } else {
          dA.noalias() += GU_.transpose() * X;
        }
      }
      if constexpr (kHasMask) {  // frozen gradients were 0 and stay exactly 0
        for (std::size_t i = 0; i < grads_.size(); ++i)
          if (!mask_[i]) grads_[i] = T(0);
      }
    }
    if (dX == nullptr) return;
    dX->noalias() = GY * weight_;
    if (dropout) {
      // (G_U A) .* D / (1-p): reuse H_ as the scratch buffer for G_U A, then mask it the same way.
      MatrixR<T> branch = GU_ * A();
      apply_input_dropout(branch, last_pass_, H_);
      *dX += H_;
    } else {
      dX->noalias() += GU_ * A();
    }
  }

  Eigen::Map<MatrixR<T>, 0, Eigen::OuterStride<>> weight_;  // [out x in], caller-owned
  std::span<const T> bias_;                                 // [out] or empty, caller-owned
  AdapterConfig cfg_;
  int rank_;
  T scale_{};
  bool merged_ = false;
  std::vector<T> params_;           // A [r x in] then B [out x r]
  std::vector<T> grads_;            // same layout
  std::vector<std::uint8_t> mask_;  // same layout; 1 = trainable
  MatrixR<T> U_;                    // [n x r] saved drop(X) A^T
  MatrixR<T> GU_;                   // [n x r] workspace
  MatrixR<T> H_;                    // [n x in] workspace for dropout
  Pass last_pass_{};
  Index saved_rows_ = -1;
  const T* input_multiplier_ = nullptr;  // model-level branch-input dropout, caller-owned
};

}  // namespace loralab::cpu
