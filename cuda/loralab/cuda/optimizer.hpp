/// \file
/// \brief `cuda::DeviceOptimizer`: the members train::Trainer needs (step, clipping norm,
/// checkpoint state) over cuda::AdamW, for models whose parameters live on the device. The
/// mirror of train::HostOptimizer; checkpoints hold the same fp32 values and packed moments, so
/// they move between CPU and GPU runs. Host code, readable by g++.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cuda/adamw.hpp"
#include "loralab/cuda/device_buffer.hpp"
#include "loralab/cuda/model/layers.hpp"
#include "loralab/optim/adamw.hpp"
#include "loralab/optim/optimizer_options.hpp"

namespace loralab::cuda {

/// \ingroup cuda
/// \brief Fused mask-aware AdamW over a device model's parameters(), with host access to values
/// and moments for checkpoints.
class DeviceOptimizer {
 public:
  using value_type = float;  ///< master weights and moments are fp32 on the device

  /// \brief Optimizes `model.parameters()` on `model.stream()`.
  /// \throws Error when `opts` asks for GaLore (not on the device yet).
  template <class Model>
  DeviceOptimizer(Model& model, const AdamWConfig& cfg, const OptimizerOptions& opts = {})
      : params_(model.parameters()), stream_(model.stream()), opt_(params_, cfg, stream_) {
    LORALAB_CHECK(!opts.galore, "[loralab.config] GaLore is not implemented on the device yet");
  }
  /// \brief Layer sampling on the device. \throws Error: not implemented on the device yet.
  void set_active_blocks(const std::vector<bool>&, bool) {
    throw Error("[loralab.config] layer sampling is not implemented on the device yet");
  }

  /// \brief Sets the learning rate of the next steps.
  void set_lr(double lr) { opt_.set_lr(lr); }
  /// \brief One AdamW step on grad_scale times the gradients (asynchronous).
  void step(double grad_scale) { opt_.step(grad_scale); }
  /// \brief Steps taken so far.
  std::int64_t steps() const { return opt_.steps(); }
  /// \brief Global L2 norm of the gradients (device reduction in a fixed order).
  double grad_norm() { return std::sqrt(opt_.grad_squared_norm()); }
  /// \brief Number of tensors.
  std::size_t tensors() const { return params_.size(); }
  /// \brief fp32 master values of tensor k, on the host.
  std::vector<float> values(std::size_t k) const {
    const DeviceParamTensor& p = params_.at(k);
    std::vector<float> host(p.size);
    if (p.size == 0) return host;
    LORALAB_CUDA_CHECK(cudaMemcpyAsync(host.data(), p.value, p.size * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream_));
    LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return host;
  }
  /// \brief Overwrites tensor k's master (and its bf16 copy). \throws Error on a length mismatch.
  void set_values(std::size_t k, std::span<const float> v) {
    LORALAB_CHECK(k < params_.size() && v.size() == params_[k].size,
                  "[loralab.state] set_values: tensor ", k, " has ",
                  k < params_.size() ? params_[k].size : 0, " entries, got ", v.size());
    const DeviceParamTensor& p = params_[k];
    if (p.size == 0) return;
    LORALAB_CUDA_CHECK(cudaMemcpyAsync(p.value, v.data(), p.size * sizeof(float),
                                       cudaMemcpyHostToDevice, stream_));
    if (p.shadow) layers::convert<bf16>(p.value, p.shadow, std::int64_t(p.size), stream_);
    LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));  // `v` may go away on return
  }
  /// \brief Packed first moments of tensor k, on the host.
  std::vector<float> first_moment(std::size_t k) const { return opt_.first_moment(k); }
  /// \brief Packed second moments of tensor k, on the host.
  std::vector<float> second_moment(std::size_t k) const { return opt_.second_moment(k); }
  /// \brief Restores the step count and the moments of tensor k.
  void restore(std::int64_t steps, std::size_t k, std::span<const float> m,
               std::span<const float> v) {
    opt_.restore(steps, k, m, v);
  }
  /// \brief Bytes of optimizer state on the device.
  std::int64_t state_bytes() const { return opt_.state_bytes(); }

 private:
  std::vector<DeviceParamTensor> params_;
  cudaStream_t stream_;
  AdamW opt_;
};

}  // namespace loralab::cuda
