/// \file
/// \brief `cuda::DeviceOptimizer`: the members train::Trainer needs (step, clipping norm,
/// checkpoint state, layer sampling) over cuda::AdamW and cuda::GaloreAdamW, for models whose
/// parameters live on the device. The mirror of train::HostOptimizer: per-tensor step counters,
/// inactive blocks untouched, the three optimizer-state policies, GaLore on projectable tensors;
/// checkpoints hold the same fp32 values, moments, counters and projectors, so they move between
/// CPU and GPU runs. Host code, readable by g++.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cuda/adamw.hpp"
#include "loralab/cuda/device_buffer.hpp"
#include "loralab/cuda/galore.hpp"
#include "loralab/cuda/model/layers.hpp"
#include "loralab/optim/adamw.hpp"
#include "loralab/optim/optimizer_options.hpp"

namespace loralab::cuda {

/// \ingroup cuda
/// \brief Fused mask-aware AdamW (or GaLore-AdamW on projectable tensors) over a device model's
/// parameters(), with host access to values, moments, counters and projectors for checkpoints.
class DeviceOptimizer {
 public:
  using value_type = float;  ///< master weights and moments are fp32 on the device

  /// \brief Optimizes `model.parameters()` on `model.stream()`.
  /// \throws Error on a bad config or a projectable tensor whose shape does not match its size.
  template <class Model>
  DeviceOptimizer(Model& model, const AdamWConfig& cfg, const OptimizerOptions& opts = {})
      : DeviceOptimizer(model.parameters(), model.stream(), cfg, opts) {}

  /// \brief Optimizes `params` (device views that must outlive the optimizer) on `stream`.
  /// With `opts.galore`, every unmasked projectable tensor gets GaLore, the rest AdamW.
  /// \throws Error as the templated constructor.
  DeviceOptimizer(std::vector<DeviceParamTensor> params, cudaStream_t stream,
                  const AdamWConfig& cfg, const OptimizerOptions& opts = {})
      : params_(std::move(params)), stream_(stream), opts_(opts) {
    loralab::validate(cfg);
    if (opts_.galore) loralab::validate(*opts_.galore);
    std::vector<DeviceParamTensor> plain, galore_tensors;
    std::vector<std::uint32_t> ids;
    where_.resize(params_.size());
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const DeviceParamTensor& p = params_[k];
      if (opts_.galore && p.projectable && p.mask == nullptr) {
        LORALAB_CHECK(p.rows * p.cols == std::int64_t(p.size), "[loralab.shape] ",
                      "projectable tensor ", k, " is [", p.rows, " x ", p.cols, "] but has ",
                      p.size, " entries");
        where_[k] = {true, galore_tensors.size()};
        galore_tensors.push_back(p);
        ids.push_back(std::uint32_t(k));  // keys the sketch as HostOptimizer does
      } else {
        where_[k] = {false, plain.size()};
        plain.push_back(p);
      }
    }
    adam_ = std::make_unique<AdamW>(std::move(plain), cfg, stream_);
    if (!galore_tensors.empty())
      galore_ = std::make_unique<GaloreAdamW>(std::move(galore_tensors), std::move(ids), cfg,
                                              *opts_.galore, stream_);
  }

  /// \brief Sets the learning rate of the next steps.
  void set_lr(double lr) {
    adam_->set_lr(lr);
    if (galore_) galore_->set_lr(lr);
  }
  /// \brief One step of every active tensor on grad_scale times the gradients (asynchronous
  /// except for GaLore refreshes).
  void step(double grad_scale) {
    ++steps_;
    adam_->step(grad_scale);
    if (galore_) galore_->step(grad_scale);
  }

  /// \brief Layer sampling, as HostOptimizer::set_active_blocks: `active[l]` says whether block
  /// l trains from now on; `new_period` marks a fresh draw (StatePolicy::reset zeroes the drawn
  /// blocks' state then; StatePolicy::drop frees the inactive blocks' state). Tensors of no block
  /// are always active. \throws Error when a tensor's block is outside `active`.
  void set_active_blocks(const std::vector<bool>& active, bool new_period) {
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const int b = params_[k].block;
      if (b < 0) continue;
      LORALAB_CHECK(std::size_t(b) < active.size(), "[loralab.shape] optimizer tensor ", k,
                    " belongs to block ", b, ", the active set has ", active.size(), " blocks");
      const bool on = active[std::size_t(b)];
      const auto [in_galore, j] = where_[k];
      if (in_galore) {
        galore_->set_active(j, on);
        if (opts_.state == StatePolicy::reset && on && new_period) galore_->reset_state(j);
        if (opts_.state == StatePolicy::drop && !on) galore_->release_state(j);
      } else {
        adam_->set_active(j, on);
        if (opts_.state == StatePolicy::reset && on && new_period) adam_->reset_state(j);
        if (opts_.state == StatePolicy::drop && !on) adam_->release_state(j);
      }
    }
  }

  /// \brief Zeroes every held state (moments, step counters, projectors): a fresh optimizer, as
  /// HostOptimizer::reset_state (ROSA after a re-factorization). Dropped states stay dropped;
  /// the learning rate is the caller's to keep.
  void reset_state() {
    for (const Where& w : where_) {
      if (w.projected && galore_->held(w.index)) galore_->reset_state(w.index);
      if (!w.projected && adam_->held(w.index)) adam_->reset_state(w.index);
    }
  }

  /// \brief Steps taken so far.
  std::int64_t steps() const { return steps_; }
  /// \brief Global L2 norm of the gradients (device reductions in a fixed order).
  double grad_norm() {
    double sum = adam_->grad_squared_norm();
    if (galore_) sum += galore_->grad_squared_norm();
    return std::sqrt(sum);
  }
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
  /// \brief First moments of tensor k on the host (packed trainable entries, or the projected
  /// moments under GaLore; empty while dropped).
  std::vector<float> first_moment(std::size_t k) const {
    const auto [in_galore, j] = where_.at(k);
    return in_galore ? galore_->first_moment(j) : adam_->first_moment(j);
  }
  /// \brief Second moments of tensor k on the host.
  std::vector<float> second_moment(std::size_t k) const {
    const auto [in_galore, j] = where_.at(k);
    return in_galore ? galore_->second_moment(j) : adam_->second_moment(j);
  }
  /// \brief Restores the global step count and the moments of tensor k (empty moments = a
  /// dropped state); its own counter is set to `steps` (see set_tensor_steps).
  /// \throws Error when a moment vector has the wrong length.
  void restore(std::int64_t steps, std::size_t k, std::span<const float> m,
               std::span<const float> v) {
    const auto [in_galore, j] = where_.at(k);
    steps_ = steps;
    if (in_galore)
      galore_->restore(steps, j, m, v);
    else
      adam_->restore(steps, j, m, v);
  }
  /// \brief Tensor k's own step counter (differs from steps() under layer sampling).
  std::int64_t tensor_steps(std::size_t k) const {
    const auto [in_galore, j] = where_.at(k);
    return in_galore ? galore_->tensor_steps(j) : adam_->tensor_steps(j);
  }
  /// \brief Sets tensor k's own step counter (checkpoints).
  void set_tensor_steps(std::size_t k, std::int64_t t) {
    const auto [in_galore, j] = where_.at(k);
    if (in_galore)
      galore_->set_tensor_steps(j, t);
    else
      adam_->set_tensor_steps(j, t);
  }
  /// \brief Whether tensor k is GaLore-projected.
  bool projected(std::size_t k) const { return where_.at(k).projected; }
  /// \brief Tensor k's GaLore projector (null when not projected).
  const GaloreProjector* projector(std::size_t k) const {
    const auto [in_galore, j] = where_.at(k);
    return in_galore ? &galore_->projector(j) : nullptr;
  }
  /// \brief Projector entries of tensor k on the host (empty when none yet), for checkpoints.
  std::vector<float> projector_values(std::size_t k) const {
    const auto [in_galore, j] = where_.at(k);
    return in_galore ? galore_->projector_values(j) : std::vector<float>{};
  }
  /// \brief GaLore refreshes of tensor k's projector so far (keys the randomized sketch).
  std::int64_t projector_refreshes(std::size_t k) const {
    const auto [in_galore, j] = where_.at(k);
    return in_galore ? galore_->projector(j).refreshes() : 0;
  }
  /// \brief Restores tensor k's projector and its refresh count.
  /// \throws Error when tensor k is not projected but `v` is not empty.
  void set_projector_values(std::size_t k, std::span<const float> v, std::int64_t refreshes) {
    const auto [in_galore, j] = where_.at(k);
    LORALAB_CHECK(in_galore || v.empty(), "[loralab.state] tensor ", k,
                  " is not GaLore-projected but the checkpoint holds a projector");
    if (in_galore) galore_->set_projector_values(j, v, refreshes);
  }
  /// \brief Whether tensor k is updated by the next step.
  bool active(std::size_t k) const {
    const auto [in_galore, j] = where_.at(k);
    return in_galore ? galore_->active(j) : adam_->active(j);
  }
  /// \brief Bytes of optimizer state on the device (moments held now, masked tensors' index
  /// lists and projectors; GaLore's scratch is workspace and not counted).
  std::int64_t state_bytes() const {
    return adam_->state_bytes() + (galore_ ? galore_->state_bytes() : 0);
  }

 private:
  struct Where {
    bool projected = false;  // in galore_ rather than adam_
    std::size_t index = 0;   // position there
  };
  std::vector<DeviceParamTensor> params_;
  cudaStream_t stream_;
  OptimizerOptions opts_;
  std::vector<Where> where_;
  std::unique_ptr<AdamW> adam_;
  std::unique_ptr<GaloreAdamW> galore_;
  std::int64_t steps_ = 0;
};

}  // namespace loralab::cuda
