/// \file
/// \brief `train::HostOptimizer`: what train::Trainer needs of an optimizer (step, clipping norm,
/// checkpoint state), for models whose parameters live in host memory (cpu::AdamW underneath).
/// Device models bring their own (cuda::DeviceOptimizer) with the same members.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cpu/adamw.hpp"
#include "loralab/optim/adamw.hpp"
#include "loralab/optim/param_tensor.hpp"

namespace loralab::train {

/// \ingroup train
/// \brief Mask-aware AdamW over a host model's parameters(), with the members the trainer's
/// clipping and checkpoints use. \tparam T float or double, the parameters' element type.
template <class T>
class HostOptimizer {
 public:
  using value_type = T;  ///< element type of values and moments in checkpoints

  /// \brief Optimizes `model.parameters()` (views that must outlive the optimizer).
  template <class Model>
  HostOptimizer(Model& model, const AdamWConfig& cfg)
      : params_(model.parameters()), opt_(params_, cfg) {}

  /// \brief Sets the learning rate of the next steps.
  void set_lr(double lr) { opt_.set_lr(lr); }
  /// \brief One AdamW step on grad_scale times the gradients.
  void step(double grad_scale) { opt_.step(grad_scale); }
  /// \brief Steps taken so far.
  std::int64_t steps() const { return opt_.steps(); }
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
  /// \brief Packed first moments of tensor k.
  std::vector<T> first_moment(std::size_t k) const {
    const auto m = opt_.first_moment(k);
    return {m.begin(), m.end()};
  }
  /// \brief Packed second moments of tensor k.
  std::vector<T> second_moment(std::size_t k) const {
    const auto v = opt_.second_moment(k);
    return {v.begin(), v.end()};
  }
  /// \brief Restores the step count and the moments of tensor k.
  void restore(std::int64_t steps, std::size_t k, std::span<const T> m, std::span<const T> v) {
    opt_.restore(steps, k, m, v);
  }
  /// \brief Bytes of optimizer state held.
  std::int64_t state_bytes() const { return opt_.state_bytes(); }

 private:
  std::vector<ParamTensor<T>> params_;
  cpu::AdamW<T> opt_;
};

}  // namespace loralab::train
