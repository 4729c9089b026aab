/// \file
/// \brief GaLore on the device (methods.md 5.4): cuda::GaloreProjector (refresh by cuSOLVER SVD
/// or a randomized range finder, project and back-project with cuBLAS) and cuda::GaloreAdamW
/// (Adam in the projected space for the projectable tensors of an optimizer). The mirror of
/// include/loralab/cpu/galore.hpp and of HostOptimizer's GaLore step; the element-wise update
/// is the shared galore_moment_update / galore_apply. Host declarations (g++ can read them);
/// definitions in galore.cuh, compiled once in cuda/instances/galore.cu.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "loralab/cuda/adamw.hpp"
#include "loralab/cuda/blas.hpp"
#include "loralab/cuda/device_buffer.hpp"
#include "loralab/cuda/solver.hpp"
#include "loralab/optim/adamw.hpp"
#include "loralab/optim/galore.hpp"

namespace loralab::cuda {

/// \ingroup cuda
/// \brief What the projectors of one optimizer share: the stream, a cuBLAS and a cuSOLVER handle
/// bound to it, and scratch buffers that only grow (every call is stream-ordered, so one set
/// serves every tensor in turn).
class GaloreContext {
 public:
  /// \brief Number of scratch slots (see galore.cuh for their use).
  static constexpr int kSlots = 24;

  /// \brief Handles bound to `stream`.
  explicit GaloreContext(cudaStream_t stream = nullptr)
      : stream_(stream), blas_(stream), solver_(stream) {}
  /// \brief The stream of every call.
  cudaStream_t stream() const { return stream_; }
  /// \brief The cuBLAS handle.
  cublasHandle_t blas() const { return blas_.get(); }
  /// \brief The cuSOLVER handle.
  cusolverDnHandle_t solver() const { return solver_.get(); }
  /// \brief Scratch slot `slot` with room for at least n floats (contents kept only while it
  /// does not grow). \throws Error on a slot outside [0, kSlots).
  float* scratch(int slot, std::size_t n) {
    LORALAB_CHECK(slot >= 0 && slot < kSlots, "[loralab.cuda] GaloreContext scratch slot ", slot,
                  " outside [0, ", kSlots, ")");
    scratch_[std::size_t(slot)].reserve_discard(std::max<std::size_t>(n, 1));
    return scratch_[std::size_t(slot)].data();
  }
  /// \brief Device ints for the cuSOLVER status words: [0] the call's, [1] and [2] the first
  /// failure seen since the last check (its value and the call number).
  int* info() {
    info_.reserve_discard(4);
    return info_.data();
  }
  /// \brief Bytes of scratch held now (workspace, not optimizer state).
  std::int64_t scratch_bytes() const {
    std::int64_t b = 0;
    for (const auto& s : scratch_) b += std::int64_t(s.bytes());
    return b;
  }

 private:
  cudaStream_t stream_;
  BlasHandle blas_;
  SolverHandle solver_;
  std::array<DeviceBuffer<float>, kSlots> scratch_;
  DeviceBuffer<int> info_;
};

/// \ingroup cuda
/// \brief The projector of one weight [m x n] on the device; the mirror of
/// cpu::GaloreProjector (same shapes, storage layout and sign convention: the entry of largest
/// magnitude of every kept singular vector is positive, the first one on ties).
///
/// Exact refresh: cusolverDnSgesvd of the fp32 gradient (cuSOLVER's gesvd needs at least as many
/// rows as columns, so G^T, which is G's row-major storage read column-major, is decomposed when
/// n >= m, and a transposed copy of G otherwise). Randomized refresh: Omega [n x k], k = min(r +
/// oversample, min(m, n)), from the same Philox normals as the CPU (generated on the device),
/// Y = G Omega, power iterations with Householder re-orthonormalization (geqrf + orgqr), then
/// B^T = G^T Q is factored by QR (B^T = Q2 R2) and the small R2 [k x k] by a Jacobi SVD
/// (gesvdj), which gives B's singular vectors exactly as an SVD of B would (U_B = right vectors
/// of R2, V_B = Q2 times its left vectors).
class GaloreProjector {
 public:
  /// \brief An empty projector for a weight of `rows` x `cols` under `cfg` (validated).
  GaloreProjector(const GaloreConfig& cfg, std::int64_t rows, std::int64_t cols);

  /// \brief Whether a projector has been computed.
  bool ready() const { return ready_; }
  /// \brief Shapes of the state.
  const GaloreShapes& shapes() const { return shapes_; }
  /// \brief Refreshes done so far.
  std::int64_t refreshes() const { return refreshes_; }
  /// \brief Forgets the projector and frees its device memory (state reset or drop).
  void clear();
  /// \brief Recomputes the projector from the device gradient `G` [m x n] (row-major fp32);
  /// `tensor` and the refresh count key the randomized sketch. Waits for the stream (it checks
  /// cuSOLVER's status words). \throws Error when a factorization fails.
  void refresh(const float* G, std::uint32_t tensor, GaloreContext& ctx);
  /// \brief R = project(G) on the device: right G P^T [m x r]; left P^T G [r x n]; both
  /// U^T G Vh^T [r x r].
  void project(const float* G, float* R, GaloreContext& ctx) const;
  /// \brief D = back_project(N) [m x n] on the device (without alpha).
  void back_project(const float* N, float* D, GaloreContext& ctx) const;
  /// \brief The projector entries on the host (left P then right P, as cpu::GaloreProjector::
  /// values()); empty when none yet.
  std::vector<float> values(cudaStream_t stream) const;
  /// \brief Restores values() and the refresh count (an empty span clears).
  /// \throws Error on a length mismatch.
  void set_values(std::span<const float> v, std::int64_t refreshes, cudaStream_t stream);
  /// \brief Left projector U_r [m x r] row-major on the device (left and both sides), or null.
  const float* left() const { return left_.empty() ? nullptr : left_.data(); }
  /// \brief Right projector Vh_r [r x n] row-major on the device (right and both sides), or null.
  const float* right() const { return right_.empty() ? nullptr : right_.data(); }
  /// \brief Bytes of projector held (0 before the first refresh).
  std::int64_t bytes() const {
    return ready_ ? shapes_.projector_size * std::int64_t(sizeof(float)) : 0;
  }

 private:
  void check_ready(const char* what) const;
  void exact(const float* G, GaloreContext& ctx);
  void randomized(const float* G, std::uint32_t tensor, GaloreContext& ctx);
  // Writes the sign-fixed projector(s) from singular vectors U(j, i) = u[j*u_es + i*u_vs] (m
  // entries) and V(j, i) = v[j*v_es + i*v_vs] (n entries); either may be null when the side
  // does not use it.
  void finalize(const float* u, std::int64_t u_es, std::int64_t u_vs, const float* v,
                std::int64_t v_es, std::int64_t v_vs, GaloreContext& ctx);

  GaloreConfig cfg_;
  std::int64_t rows_, cols_;
  GaloreShapes shapes_;
  DeviceBuffer<float> left_;   // [m x r] row-major
  DeviceBuffer<float> right_;  // [r x n] row-major
  bool ready_ = false;
  std::int64_t refreshes_ = 0;
};

/// \ingroup cuda
/// \brief GaLore-AdamW (galore_torch/adamw.py, as train::HostOptimizer's GaLore step) over
/// projectable device tensors: per tensor a projector, projected moments [r x max(m, n)] and its
/// own step counter; at a step the projector is refreshed when due (counter before the
/// increment), the gradient projected (cuBLAS), the moments updated by galore_moment_update (one
/// kernel), the normalized update back-projected (cuBLAS) and applied by galore_apply (one
/// kernel, which also refreshes the bf16 copy). Active flags and state reset/release as AdamW.
class GaloreAdamW {
 public:
  /// \brief State for `params` (unmasked, rows * cols == size each); `ids[k]` keys tensor k's
  /// randomized sketch (its index in the optimizer, as the CPU's). \throws Error on a bad config
  /// or shape.
  GaloreAdamW(std::vector<DeviceParamTensor> params, std::vector<std::uint32_t> ids,
              const AdamWConfig& cfg, const GaloreConfig& galore, cudaStream_t stream = nullptr);
  /// \brief Sets the learning rate of the next steps.
  void set_lr(double lr) { lr_ = lr; }
  /// \brief One step of every active tensor on `grad_scale` times its gradient (a released
  /// active tensor first gets fresh zero state). Asynchronous except for refreshes.
  void step(double grad_scale = 1.0);
  /// \brief Sum of squared gradients over every tensor (fixed-order reduction); waits.
  double grad_squared_norm();
  /// \brief Number of tensors.
  std::size_t tensors() const { return slots_.size(); }
  /// \brief Whether tensor k is updated by step().
  bool active(std::size_t k) const { return slots_.at(k).active; }
  /// \brief Makes tensor k take part in the next steps or not.
  void set_active(std::size_t k, bool active) { slots_.at(k).active = active; }
  /// \brief Tensor k's own step counter.
  std::int64_t tensor_steps(std::size_t k) const { return slots_.at(k).t; }
  /// \brief Sets tensor k's own step counter (checkpoints).
  void set_tensor_steps(std::size_t k, std::int64_t t) { slots_.at(k).t = t; }
  /// \brief Whether tensor k holds its moments.
  bool held(std::size_t k) const { return slots_.at(k).held; }
  /// \brief Zero moments, counter 0, no projector (allocated again when released).
  void reset_state(std::size_t k);
  /// \brief Frees tensor k's moments and projector, counter 0 (StatePolicy::drop).
  void release_state(std::size_t k);
  /// \brief Restores tensor k's projected moments (empty = a dropped state); its counter
  /// becomes `steps` and its projector is cleared (set_projector_values restores it).
  /// \throws Error on a length mismatch.
  void restore(std::int64_t steps, std::size_t k, std::span<const float> m,
               std::span<const float> v);
  /// \brief Projected first moments of tensor k on the host (empty while released).
  std::vector<float> first_moment(std::size_t k) const;
  /// \brief Projected second moments of tensor k on the host.
  std::vector<float> second_moment(std::size_t k) const;
  /// \brief Tensor k's projector.
  const GaloreProjector& projector(std::size_t k) const { return slots_.at(k).proj; }
  /// \brief Tensor k's projector entries on the host (empty when none yet).
  std::vector<float> projector_values(std::size_t k) const {
    return slots_.at(k).proj.values(stream_);
  }
  /// \brief Restores tensor k's projector and its refresh count.
  void set_projector_values(std::size_t k, std::span<const float> v, std::int64_t refreshes) {
    slots_.at(k).proj.set_values(v, refreshes, stream_);
  }
  /// \brief Bytes of optimizer state held (moments and projectors; scratch not included).
  std::int64_t state_bytes() const;
  /// \brief The shared handles and scratch.
  GaloreContext& context() { return *ctx_; }

 private:
  struct Slot {
    DeviceParamTensor tensor;
    std::uint32_t id = 0;
    GaloreProjector proj;
    DeviceBuffer<float> m, v;  // [moment_rows x moment_cols]
    std::int64_t t = 0;
    bool active = true, held = true;
  };
  void step_tensor(Slot& s, double grad_scale);

  std::vector<Slot> slots_;
  AdamWConfig cfg_;
  GaloreConfig galore_;
  double lr_;
  cudaStream_t stream_;
  std::unique_ptr<GaloreContext> ctx_;
  DeviceBuffer<double> partial_;  // grad_squared_norm: one sum per chunk
};

}  // namespace loralab::cuda
