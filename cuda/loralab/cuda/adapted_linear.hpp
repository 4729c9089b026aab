/// \file
/// \brief `cuda::AdaptedLinear`: the CUDA mirror of cpu::AdaptedLinear (same member names and
/// argument order), fp32 or bf16 storage with fp32 accumulation. Host code, readable by g++;
/// kernels and member definitions are in adapted_linear.cuh, compiled once per element type
/// (cuda/instances/*.cu, or `#include <loralab/cuda/adapted_linear.cuh>` plus an explicit
/// instantiation in one .cu of your own).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/adapter_init.hpp"
#include "loralab/core/memory.hpp"
#include "loralab/cuda/adamw.hpp"
#include "loralab/cuda/bf16.hpp"
#include "loralab/cuda/blas.hpp"
#include "loralab/cuda/device_buffer.hpp"
#include "loralab/dropout/masks.hpp"
#include "loralab/rosa/subspace.hpp"

namespace loralab::cuda {

/// \ingroup cuda
/// \brief Behaviour switches of an adapter, derived from its policy types; the device code is
/// compiled once per element type and branches on these (STYLE.md L7: runtime to compile time
/// inside the launchers).
struct LinearFlags {
  bool has_mask = false;       ///< RandomMask: zero frozen gradients
  bool freeze_a = false;       ///< FreezeA: no dA, X not needed for it
  bool input_dropout = false;  ///< InputDropout: H = X .* D / (1-p) in train mode
};

/// \ingroup cuda
/// \brief A model-level mask on an adapter's branch input: the dropout framework's adapter_input
/// site (any pattern), the device mirror of cpu::AdaptedLinear::set_input_multiplier. The branch
/// sees X .* M with M = 0 where dropout::hidden_dropped(key, pattern, rate, seq, in, row, col)
/// and dropout::hidden_keep_scale(pattern, rate, seq) elsewhere, drawn on the device.
struct BranchInputMask {
  dropout::MaskKey key{};  ///< position adapter_input, module id, pass
  dropout::Pattern pattern = dropout::Pattern::element;  ///< how entries are grouped
  double rate = 0;                                       ///< p; 0 = no mask
  int seq = 1;                                           ///< tokens per example (rows are b*T + t)
};

/// \ingroup cuda
/// \brief The device state and launchers of one adapted linear layer, independent of the policy
/// types (which only set LinearFlags and the host-side init). Row-major device matrices; W
/// [out x in] and bias [out] belong to the caller.
template <DeviceScalar T>
class LinearCore {
 public:
  /// \brief Allocates adapter storage for the given shape. No initialization of A and B.
  LinearCore(T* weight, const T* bias, std::int64_t in, std::int64_t out, int rank, float scale,
             const AdapterConfig& cfg, LinearFlags flags, cudaStream_t stream);
  /// \brief Uploads A then B (fp32 master values, r*in + out*r entries) and refreshes the T copy.
  void set_parameters(std::span<const float> a_then_b);
  /// \brief Uploads the mask (same layout as the parameters; 1 = trainable).
  void set_mask(std::span<const std::uint8_t> mask);
  /// \brief Master parameters (A then B), copied to the host.
  std::vector<float> parameters_host() const { return params_.to_host(stream_); }
  /// \brief Gradients (A then B), copied to the host.
  std::vector<float> gradients_host() const { return grads_.to_host(stream_); }
  /// \brief Mask (A then B), copied to the host; empty without a mask.
  std::vector<std::uint8_t> mask_host() const { return mask_.to_host(stream_); }
  /// \brief Recomputes the T copy of A and B from the fp32 master (no-op for fp32).
  void refresh_compute_copy();
  /// \brief Sets (rate > 0) or clears (rate 0) the branch-input mask of the following forwards;
  /// in a training pass it replaces the InputDropout policy's mask, and the backward of that
  /// forward regenerates it (nothing of size [n x in] is stored).
  void set_input_mask(const BranchInputMask& mask) { input_mask_ = mask; }
  /// \brief Y = X W^T + b + s drop(X) A^T B^T; keeps U for backward.
  void forward(const T* X, T* Y, std::int64_t n, Pass pass);
  /// \brief Accumulates dA, dB (fp32; frozen entries exactly 0) unless `param_grads` is false
  /// (a frozen block: only dX); writes dX when non-null.
  void backward(const T* X, const T* GY, T* dX, std::int64_t n, bool param_grads = true);
  /// \brief Zeroes the gradients.
  void zero_grad() { grads_.zero(stream_); }
  /// \brief W <- W + s B A (safe: computed into a copy, checked finite, then written).
  void merge();
  /// \brief W <- W - s B A.
  void unmerge();
  /// \brief True between merge() and unmerge().
  bool merged() const { return merged_; }
  /// \brief ROSA / PiSSA re-factorization at the (ascending, distinct) component indices `I`
  /// (methods.md 6.3, svd_equal; the device mirror of cpu::svd_slice): merged = W + s B A in
  /// double, thin SVD by cusolverDnDgesvd in double (as the CPU's BDCSVD), the sign rule (the
  /// largest-magnitude entry of each U column positive; U and V columns flip together), then
  /// B = U_I, A = diag(S_I) V_I^T / s in the fp32 masters (and the bf16 copy) and
  /// W = merged - U_I diag(S_I) V_I^T (= the complement U_~I diag(S_~I) V_~I^T) rounded to T;
  /// gradients zeroed. The r selected columns of U and V go through the host for the sign rule
  /// (r * (in + out) doubles); the m x n matrix and its factors stay on the device.
  /// \throws Error when merged, on an index outside [0, min(in, out)), on a non-finite merged
  /// weight, or when the SVD does not converge.
  void refactorize(std::span<const int> I);
  /// \brief The optimizer's view: fp32 master, gradient, mask, bf16 copy to refresh.
  std::vector<DeviceParamTensor> parameter_tensors();
  /// \brief Bytes held on the device, in MemoryReport's categories (optimizer state excluded).
  MemoryReport memory(std::int64_t tokens) const;
  /// \brief d_in.
  std::int64_t in_features() const { return in_; }
  /// \brief d_out.
  std::int64_t out_features() const { return out_; }
  /// \brief The stream every launch goes to.
  cudaStream_t stream() const { return stream_; }
  /// \brief The rank r.
  int rank() const { return rank_; }
  /// \brief Device fp32 master of A then B, r*in + out*r entries (DropConnect and sharing write
  /// it in place; keep the compute copy in step, see factor_copy()).
  float* factor_values() { return params_.data(); }
  /// \brief Device bf16 copy of factor_values() that the GEMMs read, or null for fp32.
  bf16* factor_copy() {
    if constexpr (std::is_same_v<T, bf16>) {
      return compute_.data();
    } else {
      return nullptr;
    }
  }
  /// \brief Device fp32 gradients dA then dB (the layout of factor_values()).
  float* factor_grads() { return grads_.data(); }

 private:
  std::int64_t a_size() const { return std::int64_t(rank_) * in_; }
  void require_finite(const T* x, std::int64_t rows, std::int64_t cols, const char* what);
  void input_dropout(const T* X, T* H, std::int64_t n, const Pass& pass);

  T* weight_;
  const T* bias_;
  std::int64_t in_, out_;
  int rank_;
  float scale_;
  AdapterConfig cfg_;
  LinearFlags flags_;
  cudaStream_t stream_;
  BlasHandle blas_;
  bool merged_ = false;
  DeviceBuffer<float> params_;                  // fp32 master: A [r x in] then B [out x r]
  DeviceBuffer<float> grads_;                   // same layout
  DeviceBuffer<std::uint8_t> mask_;             // same layout, or empty
  DeviceBuffer<T> compute_;                     // T copy of params_ (bf16 only; fp32 reads params_)
  DeviceBuffer<T> U_, GU_;                      // [n x r]: saved drop(X) A^T, and s dY B
  DeviceBuffer<T> H_;                           // [n x in] dropout workspace
  DeviceBuffer<unsigned long long> first_bad_;  // finiteness check: first non-finite index
  std::int64_t trainable_ = 0;                  // entries the optimizer may move (from the mask)
  Pass last_pass_{};
  std::int64_t saved_rows_ = -1;
  BranchInputMask input_mask_{};  // set by the model per forward (adapter_input site)
  BranchInputMask last_mask_{};   // the mask the last forward applied (rate 0: none)
};

#ifndef LORALAB_CUDA_COMPILING_INSTANCES
extern template class LinearCore<float>;
extern template class LinearCore<bf16>;
#endif

/// \ingroup cuda
/// \brief A frozen linear layer on the device with a composed low-rank adapter; the CUDA mirror
/// of cpu::AdaptedLinear (methods.md sections 1, 2).
///
/// Matrices are row-major device pointers: W [out x in] and bias [out] are the caller's; X
/// [n x in], Y [n x out]. A and B are kept as fp32 master weights (the optimizer's), with a bf16
/// copy for the GEMMs when T is bf16; gradients are fp32. Init values and LoRA-SP masks come from
/// the same host code as the CPU adapter (bit-identical); dropout masks are drawn in-kernel from
/// the shared Philox functions (bit-identical to the CPU's).
/// \tparam Spec an Adapter<...> type. \tparam T float or bf16.
template <AdapterSpec Spec, DeviceScalar T>
class AdaptedLinear {
 public:
  using spec = Spec;  ///< the composed adapter type
  using scalar = T;   ///< element type of activations and W

  /// \brief Wraps device W [out x in] and optional device bias [out] (`has_bias` = false: none).
  /// \throws Error on the same bad configurations as the CPU adapter.
  AdaptedLinear(T* weight, std::int64_t out, std::int64_t in, const T* bias = nullptr,
                const AdapterConfig& cfg = {}, cudaStream_t stream = nullptr)
      : cfg_(cfg),
        rank_(validate_adapter<Spec>(cfg, in, out, bias ? std::size_t(out) : 0)),
        core_(weight, bias, in, out, rank_,
              static_cast<float>(Spec::scaling::scale(cfg.alpha, rank_)), cfg,
              LinearFlags{Spec::freeze::has_mask, Spec::freeze::freezes_a,
                          Spec::dropout::has_input_dropout},
              stream) {
    if constexpr (Spec::init::svd_slice)  // the CPU's factors start at 0: W is sliced as is
      core_.set_parameters(std::vector<float>(std::size_t(rank_) * (in + out), 0.0f));
    reset();
  }

  /// \brief d_in.
  std::int64_t in_features() const { return core_.in_features(); }
  /// \brief d_out.
  std::int64_t out_features() const { return core_.out_features(); }
  /// \brief The rank r.
  int rank() const { return rank_; }
  /// \brief The branch scale s.
  float scale() const { return static_cast<float>(Spec::scaling::scale(cfg_.alpha, rank_)); }
  /// \brief The run-time configuration.
  const AdapterConfig& config() const { return cfg_; }
  /// \brief True between merge() and unmerge().
  bool merged() const { return core_.merged(); }

  /// \brief Redraws A and the masks from the seed (same values as the CPU adapter), B = 0,
  /// gradients 0; unmerges first.
  void reset() {
    if (merged()) unmerge();
    if constexpr (Spec::init::svd_slice) {  // W holds the complement: fold the slice back, re-slice
      refactorize(0);
      return;
    }
    std::vector<float> values(std::size_t(rank_) * (in_features() + out_features()));
    std::vector<std::uint8_t> mask(Spec::freeze::has_mask ? values.size() : 0);
    std::span<float> all(values);
    fill_initial_adapter<Spec, float>(cfg_, rank_, in_features(),
                                      all.first(std::size_t(rank_) * in_features()),
                                      all.subspan(std::size_t(rank_) * in_features()), mask);
    core_.set_parameters(values);
    if (!mask.empty()) core_.set_mask(mask);
    core_.zero_grad();
  }
  /// \brief SVD-slice inits (RosaSubspace, PrincipalSubspace): merges s B A into W, takes the
  /// thin SVD of W on the device, and makes the components of re-factorization `count` (drawn by
  /// the init's law from the seed and module id, rosa::choose_subspace, as on the CPU) the new
  /// factors, B = U_I and A = diag(S_I) V_I^T / s, while W keeps the complement; gradients are
  /// zeroed. The mirror of cpu::AdaptedLinear::refactorize (the constructor does it with count
  /// 0); see LinearCore::refactorize for the numerics.
  /// \throws Error when merged, or unless rank < min(in, out).
  void refactorize(std::uint32_t count) requires(Spec::init::svd_slice) {
    LORALAB_CHECK(!merged(), "[loralab.state] refactorize on a merged adapter; unmerge first");
    const std::vector<int> I =
        rosa::choose_subspace(Spec::init::law, int(std::min(in_features(), out_features())), rank_,
                              cfg_.seed, cfg_.module_id, count);
    core_.refactorize(I);
  }
  /// \brief Sets A [r x in] and B [out x r] (row-major host values), e.g. from a checkpoint.
  void set_parameters(std::span<const float> A, std::span<const float> B) {
    LORALAB_CHECK(A.size() == std::size_t(rank_) * in_features() &&
                      B.size() == std::size_t(rank_) * out_features(),
                  "[loralab.shape] set_parameters: A has ", A.size(), " entries (want ",
                  rank_ * in_features(), "), B has ", B.size(), " (want ", rank_ * out_features(),
                  ")");
    std::vector<float> values(A.begin(), A.end());
    values.insert(values.end(), B.begin(), B.end());
    core_.set_parameters(values);
  }
  /// \brief A then B (fp32 master), on the host.
  std::vector<float> parameters_host() const { return core_.parameters_host(); }
  /// \brief dA then dB (fp32), on the host.
  std::vector<float> gradients_host() const { return core_.gradients_host(); }
  /// \brief The mask (A then B), on the host; empty without a mask.
  std::vector<std::uint8_t> mask_host() const { return core_.mask_host(); }

  /// \brief Y [n x out] = X W^T + b + s drop(X) A^T B^T (device pointers); keeps U for backward.
  void forward(const T* X, T* Y, std::int64_t n, Pass pass = {}) { core_.forward(X, Y, n, pass); }
  /// \brief Accumulates dA, dB from dL/dY [n x out], without dX.
  void backward(const T* X, const T* GY, std::int64_t n) { core_.backward(X, GY, nullptr, n); }
  /// \brief Accumulates dA, dB and writes dX [n x in].
  void backward(const T* X, const T* GY, T* dX, std::int64_t n) { core_.backward(X, GY, dX, n); }
  /// \brief Writes dX [n x in] only, leaving dA, dB untouched (the layer's block is frozen; the
  /// gradient still flows through), as cpu::AdaptedLinear::backward_input.
  void backward_input(const T* X, const T* GY, T* dX, std::int64_t n) {
    core_.backward(X, GY, dX, n, false);
  }
  /// \brief Sets the gradients to zero.
  void zero_grad() { core_.zero_grad(); }
  /// \brief The type-independent device state (what cuda::Gpt's compiled core drives).
  LinearCore<T>& core() { return core_; }
  /// \brief W <- W + s B A on the device (safe merge).
  void merge() { core_.merge(); }
  /// \brief W <- W - s B A on the device.
  void unmerge() { core_.unmerge(); }
  /// \brief The tensors a cuda::AdamW updates.
  std::vector<DeviceParamTensor> parameters() { return core_.parameter_tensors(); }
  /// \brief Device memory by category; optimizer state as cuda::AdamW will hold it.
  MemoryReport memory(std::int64_t tokens) const { return core_.memory(tokens); }
  /// \brief The stream every launch goes to.
  cudaStream_t stream() const { return core_.stream(); }

 private:
  AdapterConfig cfg_;
  int rank_;
  LinearCore<T> core_;
};

}  // namespace loralab::cuda
