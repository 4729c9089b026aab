/// \file
/// \brief `train::HostOptimizer`: what train::Trainer needs of an optimizer (step, clipping norm,
/// checkpoint state), for models whose parameters live in host memory. Device models bring their
/// own (cuda::DeviceOptimizer) with the same members.
///
/// Beyond cpu::AdamW it keeps one step counter per tensor (torch's per-parameter `state["step"]`),
/// skips the tensors of inactive blocks under layer sampling (they are not touched at all: no
/// decay, no moment update, no step), applies the optimizer-state policy when the active blocks
/// change, and runs GaLore (methods.md 5.4) on projectable tensors when asked. Without sampling
/// and GaLore every tensor's counter equals the global step, so the arithmetic is cpu::AdamW's.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cpu/eigen_types.hpp"
#include "loralab/cpu/galore.hpp"
#include "loralab/optim/adamw.hpp"
#include "loralab/optim/galore.hpp"
#include "loralab/optim/optimizer_options.hpp"
#include "loralab/optim/param_tensor.hpp"

namespace loralab::train {

/// \ingroup train
/// \brief Mask-aware AdamW (or GaLore-AdamW) over a host model's parameters().
/// \tparam T float or double, the parameters' element type.
template <class T>
class HostOptimizer {
 public:
  using value_type = T;  ///< element type of values and moments in checkpoints

  /// \brief Optimizes `model.parameters()` (views that must outlive the optimizer).
  /// \throws Error on a bad config or a gradient/mask length that differs from its tensor.
  template <class Model>
  HostOptimizer(Model& model, const AdamWConfig& cfg, const OptimizerOptions& opts = {})
      : params_(model.parameters()), cfg_(cfg), opts_(opts), lr_(cfg.lr) {
    loralab::validate(cfg);
    if (opts_.galore) loralab::validate(*opts_.galore);
    states_.resize(params_.size());
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const auto& p = params_[k];
      LORALAB_CHECK(p.grad.size() == p.value.size(), "[loralab.shape] optimizer tensor ", k,
                    ": gradient has ", p.grad.size(), " entries, values have ", p.value.size());
      LORALAB_CHECK(p.mask.empty() || p.mask.size() == p.value.size(),
                    "[loralab.shape] optimizer tensor ", k, ": mask has ", p.mask.size(),
                    " entries, values have ", p.value.size());
      State& s = states_[k];
      s.moments = p.value.size();
      if (!p.mask.empty())
        s.moments = std::size_t(
            std::count_if(p.mask.begin(), p.mask.end(), [](std::uint8_t b) { return b; }));
      if (opts_.galore && p.projectable && p.mask.empty()) {
        LORALAB_CHECK(p.rows * p.cols == std::int64_t(p.value.size()), "[loralab.shape] ",
                      "projectable tensor ", k, " is [", p.rows, " x ", p.cols, "] but has ",
                      p.value.size(), " entries");
        s.projector.emplace(*opts_.galore, p.rows, p.cols);
        s.moments = std::size_t(s.projector->shapes().moment_size());
      }
      allocate(s);
    }
  }

  /// \brief Sets the learning rate of the next steps.
  void set_lr(double lr) { lr_ = lr; }
  /// \brief One step of every active tensor on grad_scale times the gradients.
  void step(double grad_scale) {
    ++steps_;
    for (std::size_t k = 0; k < params_.size(); ++k) {
      if (!states_[k].active) continue;
      State& s = states_[k];
      if (!s.held) allocate(s);  // dropped earlier and drawn again: fresh state
      if (s.projector)
        galore_step(k, grad_scale);
      else
        adamw_step(k, grad_scale);
    }
  }

  /// \brief Layer sampling: `active[l]` says whether block l trains from now on; `new_period`
  /// marks a fresh draw (StatePolicy::reset zeroes the drawn blocks' state then). Tensors of no
  /// block are always active. \throws Error when a tensor's block is outside `active`.
  void set_active_blocks(const std::vector<bool>& active, bool new_period) {
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const int b = params_[k].block;
      if (b < 0) continue;
      LORALAB_CHECK(std::size_t(b) < active.size(), "[loralab.shape] optimizer tensor ", k,
                    " belongs to block ", b, ", the active set has ", active.size(), " blocks");
      State& s = states_[k];
      s.active = active[std::size_t(b)];
      if (opts_.state == StatePolicy::reset && s.active && new_period) allocate(s);
      if (opts_.state == StatePolicy::drop && !s.active) release(s);
    }
  }

  /// \brief Zeroes every held state (moments, step counters, projectors): a fresh optimizer, as
  /// ROSA builds after each re-factorization. The learning rate is the caller's to keep.
  void reset_state() {
    for (State& s : states_)
      if (s.held) allocate(s);
  }

  /// \brief Optimizer steps taken so far.
  std::int64_t steps() const { return steps_; }
  /// \brief Global L2 norm of the gradients (summed in double; frozen entries hold 0).
  double grad_norm() const {
    double sum = 0;
    for (const auto& p : params_)
      for (T g : p.grad) sum += double(g) * double(g);
    return std::sqrt(sum);
  }
  /// \brief Number of tensors.
  std::size_t tensors() const { return params_.size(); }
  /// \brief Values of tensor k (a copy).
  std::vector<T> values(std::size_t k) const {
    return {params_.at(k).value.begin(), params_.at(k).value.end()};
  }
  /// \brief Overwrites tensor k. \throws Error on a length mismatch.
  void set_values(std::size_t k, std::span<const T> v) {
    LORALAB_CHECK(k < params_.size() && v.size() == params_[k].value.size(),
                  "[loralab.state] set_values: tensor ", k, " has ",
                  k < params_.size() ? params_[k].value.size() : 0, " entries, got ", v.size());
    std::copy(v.begin(), v.end(), params_[k].value.begin());
  }
  /// \brief First moments of tensor k (packed trainable entries, or the projected [r x .]
  /// moments under GaLore; empty while dropped).
  std::vector<T> first_moment(std::size_t k) const { return states_.at(k).m; }
  /// \brief Second moments of tensor k.
  std::vector<T> second_moment(std::size_t k) const { return states_.at(k).v; }
  /// \brief Restores the global step count and the moments of tensor k (empty moments = a
  /// dropped state). Its own counter is set to `steps` (see set_tensor_steps).
  /// \throws Error when a moment vector has the wrong length.
  void restore(std::int64_t steps, std::size_t k, std::span<const T> m, std::span<const T> v) {
    State& s = states_.at(k);
    steps_ = steps;
    if (m.empty() && v.empty() && s.moments > 0) {
      release(s);
      return;
    }
    LORALAB_CHECK(m.size() == s.moments && v.size() == s.moments, "[loralab.state] optimizer ",
                  "restore: tensor ", k, " expects ", s.moments, " moments, got ", m.size(),
                  " and ", v.size());
    allocate(s);
    s.t = steps;
    std::copy(m.begin(), m.end(), s.m.begin());
    std::copy(v.begin(), v.end(), s.v.begin());
  }
  /// \brief Tensor k's own step counter (differs from steps() under layer sampling).
  std::int64_t tensor_steps(std::size_t k) const { return states_.at(k).t; }
  /// \brief Sets tensor k's own step counter (checkpoints).
  void set_tensor_steps(std::size_t k, std::int64_t t) { states_.at(k).t = t; }
  /// \brief Whether tensor k is GaLore-projected.
  bool projected(std::size_t k) const { return states_.at(k).projector.has_value(); }
  /// \brief Tensor k's GaLore projector (null when not projected).
  const cpu::GaloreProjector<T>* projector(std::size_t k) const {
    return states_.at(k).projector ? &*states_[k].projector : nullptr;
  }
  /// \brief Projector entries of tensor k (empty when none yet), for checkpoints.
  std::vector<T> projector_values(std::size_t k) const {
    return states_.at(k).projector ? states_[k].projector->values() : std::vector<T>{};
  }
  /// \brief GaLore refreshes of tensor k's projector so far (keys the randomized sketch).
  std::int64_t projector_refreshes(std::size_t k) const {
    return states_.at(k).projector ? states_[k].projector->refreshes() : 0;
  }
  /// \brief Restores tensor k's projector and its refresh count.
  void set_projector_values(std::size_t k, std::span<const T> v, std::int64_t refreshes) {
    LORALAB_CHECK(states_.at(k).projector || v.empty(), "[loralab.state] tensor ", k,
                  " is not GaLore-projected but the checkpoint holds a projector");
    if (states_[k].projector) states_[k].projector->set_values(v, refreshes);
  }
  /// \brief Whether tensor k is updated by the next step.
  bool active(std::size_t k) const { return states_.at(k).active; }
  /// \brief Bytes of optimizer state held now (moments and projectors).
  std::int64_t state_bytes() const {
    std::int64_t b = 0;
    for (const State& s : states_) {
      b += std::int64_t(s.m.size() + s.v.size()) * std::int64_t(sizeof(T));
      if (s.projector && s.projector->ready())
        b += s.projector->shapes().projector_size * std::int64_t(sizeof(T));
    }
    return b;
  }

 private:
  struct State {
    std::size_t moments = 0;  // entries of each moment when held
    std::vector<T> m, v;
    std::int64_t t = 0;  // this tensor's own steps
    bool held = false, active = true;
    std::optional<cpu::GaloreProjector<T>> projector;
  };

  static void allocate(State& s) {
    s.m.assign(s.moments, T(0));
    s.v.assign(s.moments, T(0));
    s.t = 0;
    if (s.projector) s.projector->clear();
    s.held = true;
  }
  static void release(State& s) {
    std::vector<T>().swap(s.m);
    std::vector<T>().swap(s.v);
    s.t = 0;
    if (s.projector) s.projector->clear();
    s.held = false;
  }

  void adamw_step(std::size_t k, double grad_scale) {
    auto& p = params_[k];
    State& s = states_[k];
    const auto c = AdamWStepCoefficients::make(cfg_, lr_, ++s.t);
    const T gs = static_cast<T>(grad_scale);
    const std::size_t n = p.value.size();
    if (p.mask.empty()) {
      for (std::size_t i = 0; i < n; ++i)
        adamw_update(p.value[i], grad_scale == 1.0 ? p.grad[i] : p.grad[i] * gs, s.m[i], s.v[i], c);
      return;
    }
    std::size_t j = 0;  // index into the packed moments
    for (std::size_t i = 0; i < n; ++i)
      if (p.mask[i]) {
        adamw_update(p.value[i], grad_scale == 1.0 ? p.grad[i] : p.grad[i] * gs, s.m[j], s.v[j], c);
        ++j;
      }
  }

  // galore_torch/adamw.py: refresh P when due (counter before the increment), project, Adam in
  // the projected space, back-project with alpha, then decoupled decay.
  void galore_step(std::size_t k, double grad_scale) {
    auto& p = params_[k];
    State& s = states_[k];
    auto& proj = *s.projector;
    const cpu::MatrixR<T> G =
        cpu::ConstMatrixMap<T>(p.grad.data(), p.rows, p.cols) * static_cast<T>(grad_scale);
    if (galore_refresh_due(s.t, opts_.galore->period, proj.ready()))
      proj.refresh(G, std::uint32_t(k));
    cpu::MatrixR<T> R, D;
    proj.project(G, R);
    const auto c = GaloreStepCoefficients::make(lr_, cfg_.beta1, cfg_.beta2, cfg_.eps,
                                                cfg_.weight_decay, opts_.galore->scale, ++s.t);
    for (Eigen::Index i = 0; i < R.size(); ++i)
      R.data()[i] = galore_moment_update(R.data()[i], s.m[std::size_t(i)], s.v[std::size_t(i)], c);
    proj.back_project(R, D);
    for (std::size_t i = 0; i < p.value.size(); ++i) galore_apply(p.value[i], D.data()[i], c);
  }

  std::vector<ParamTensor<T>> params_;
  AdamWConfig cfg_;
  OptimizerOptions opts_;
  double lr_;
  std::int64_t steps_ = 0;
  std::vector<State> states_;
};

}  // namespace loralab::train
