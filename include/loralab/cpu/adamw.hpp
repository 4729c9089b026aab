/// \file
/// \brief Mask-aware AdamW on the CPU: state only for trainable entries, frozen entries never move.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/optim/adamw.hpp"
#include "loralab/optim/param_tensor.hpp"

namespace loralab::cpu {

/// \ingroup optim
/// \brief AdamW (decoupled weight decay, bias correction) over a list of ParamTensor.
///
/// Moments are packed: a tensor with a mask gets exactly one (m, v) pair per trainable entry,
/// found by walking the mask in order, so state bytes = 2 * trainable * sizeof(T). A frozen entry
/// is skipped entirely: no decay, no moment update, bit-identical forever (methods.md 2.2 (b)).
/// \tparam T float or double.
template <class T>
class AdamW {
 public:
  /// \brief Takes views of the tensors to update (they must outlive the optimizer).
  /// \throws Error when a gradient or mask length differs from its tensor, or on a bad config.
  explicit AdamW(std::vector<ParamTensor<T>> params, const AdamWConfig& cfg = {})
      : params_(std::move(params)), cfg_(cfg), lr_(cfg.lr) {
    loralab::validate(cfg);
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const auto& p = params_[k];
      LORALAB_CHECK(p.grad.size() == p.value.size(), "[loralab.shape] AdamW tensor ", k,
                    ": gradient has ", p.grad.size(), " entries, values have ", p.value.size());
      LORALAB_CHECK(p.mask.empty() || p.mask.size() == p.value.size(),
                    "[loralab.shape] AdamW tensor ", k, ": mask has ", p.mask.size(),
                    " entries, values have ", p.value.size());
      std::size_t trainable = p.value.size();
      if (!p.mask.empty()) {
        trainable = 0;
        for (std::uint8_t b : p.mask) trainable += (b != 0);
      }
      m_.emplace_back(trainable, T(0));
      v_.emplace_back(trainable, T(0));
    }
  }

  /// \brief One optimizer step over every tensor, on `grad_scale` times the stored gradients
  /// (gradient clipping and accumulation scale there, so the gradient buffers stay untouched).
  void step(double grad_scale = 1.0) {
    ++t_;
    const auto c = AdamWStepCoefficients::make(cfg_, lr_, t_);
    const T gs = static_cast<T>(grad_scale);
    for (std::size_t k = 0; k < params_.size(); ++k) {
      auto& p = params_[k];
      T* m = m_[k].data();
      T* v = v_[k].data();
      const std::size_t n = p.value.size();
      if (p.mask.empty()) {
        for (std::size_t i = 0; i < n; ++i)
          adamw_update(p.value[i], grad_scale == 1.0 ? p.grad[i] : p.grad[i] * gs, m[i], v[i], c);
      } else {
        std::size_t j = 0;  // index into the packed moments
        for (std::size_t i = 0; i < n; ++i)
          if (p.mask[i]) {
            adamw_update(p.value[i], grad_scale == 1.0 ? p.grad[i] : p.grad[i] * gs, m[j], v[j], c);
            ++j;
          }
      }
    }
  }

  /// \brief Sets the learning rate of the next steps (schedules call this).
  void set_lr(double lr) { lr_ = lr; }
  /// \brief The current learning rate.
  double lr() const { return lr_; }
  /// \brief Steps taken so far (the t of bias correction).
  std::int64_t steps() const { return t_; }
  /// \brief Bytes of moment storage actually held.
  std::int64_t state_bytes() const {
    std::int64_t b = 0;
    for (const auto& m : m_) b += 2 * std::int64_t(m.size()) * std::int64_t(sizeof(T));
    return b;
  }
  /// \brief Number of tensors.
  std::size_t tensors() const { return params_.size(); }
  /// \brief Restores the state of a checkpoint: step count and the packed moments of tensor k.
  /// \throws Error when a moment vector has the wrong length.
  void restore(std::int64_t steps, std::size_t k, std::span<const T> m, std::span<const T> v) {
    LORALAB_CHECK(k < m_.size() && m.size() == m_[k].size() && v.size() == v_[k].size(),
                  "[loralab.state] AdamW restore: tensor ", k, " expects ",
                  k < m_.size() ? m_[k].size() : 0, " moments, got ", m.size(), " and ", v.size());
    t_ = steps;
    std::copy(m.begin(), m.end(), m_[k].begin());
    std::copy(v.begin(), v.end(), v_[k].begin());
  }
  /// \brief Packed first moments of tensor k (trainable entries in order).
  std::span<const T> first_moment(std::size_t k) const { return m_.at(k); }
  /// \brief Packed second moments of tensor k.
  std::span<const T> second_moment(std::size_t k) const { return v_.at(k); }

 private:
  std::vector<ParamTensor<T>> params_;
  AdamWConfig cfg_;
  double lr_;
  std::int64_t t_ = 0;
  std::vector<std::vector<T>> m_, v_;
};

}  // namespace loralab::cpu
