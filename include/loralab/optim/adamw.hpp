/// \file
/// \brief AdamW hyper-parameters and the per-element update shared by every backend.
#pragma once

#include <cmath>
#include <cstdint>

#include "loralab/core/config.hpp"
#include "loralab/core/error.hpp"

namespace loralab {

/// \ingroup optim
/// \brief AdamW hyper-parameters; defaults are torch.optim.AdamW's.
struct AdamWConfig {
  double lr = 1e-3;            ///< learning rate
  double beta1 = 0.9;          ///< first-moment decay
  double beta2 = 0.999;        ///< second-moment decay
  double eps = 1e-8;           ///< added to sqrt(v_hat)
  double weight_decay = 1e-2;  ///< decoupled decay, applied as p *= 1 - lr * weight_decay
};

/// \ingroup optim
/// \brief Checks an AdamW configuration (shared by the CPU and CUDA optimizers).
/// \throws Error naming every value when lr < 0, eps <= 0, a beta outside [0, 1) or a negative
/// weight decay.
inline void validate(const AdamWConfig& cfg) {
  LORALAB_CHECK(
      cfg.lr >= 0 && cfg.eps > 0 && cfg.beta1 >= 0 && cfg.beta1 < 1 && cfg.beta2 >= 0 &&
          cfg.beta2 < 1 && cfg.weight_decay >= 0,
      "[loralab.config] AdamW needs lr >= 0, eps > 0, 0 <= beta < 1, weight_decay >= 0; got lr=",
      cfg.lr, " eps=", cfg.eps, " beta1=", cfg.beta1, " beta2=", cfg.beta2,
      " weight_decay=", cfg.weight_decay);
}

/// \ingroup optim
/// \brief Per-step scalars of AdamW, computed once on the host for step t (1-based).
struct AdamWStepCoefficients {
  double lr = 0;         ///< learning rate of this step
  double decay = 1;      ///< 1 - lr * weight_decay
  double beta1 = 0;      ///< first-moment decay
  double beta2 = 0;      ///< second-moment decay
  double step_size = 0;  ///< lr / (1 - beta1^t)
  double sqrt_bc2 = 1;   ///< sqrt(1 - beta2^t)
  double eps = 0;        ///< epsilon

  /// \brief Coefficients of step t >= 1 under `cfg` with learning rate `lr`.
  static AdamWStepCoefficients make(const AdamWConfig& cfg, double lr, std::int64_t t) {
    AdamWStepCoefficients c;
    c.lr = lr;
    c.decay = 1.0 - lr * cfg.weight_decay;
    c.beta1 = cfg.beta1;
    c.beta2 = cfg.beta2;
    c.step_size = lr / (1.0 - std::pow(cfg.beta1, double(t)));
    c.sqrt_bc2 = std::sqrt(1.0 - std::pow(cfg.beta2, double(t)));
    c.eps = cfg.eps;
    return c;
  }
};

/// \ingroup optim
/// \brief One AdamW element update, in the order and rounding torch.optim.AdamW (single-tensor
/// path) uses (m via lerp, denominator sqrt(v)/sqrt(1-beta2^t) + eps):
/// \f[ p \leftarrow p(1-\eta\lambda);\; m \leftarrow m + (1-\beta_1)(g - m);\;
///     v \leftarrow \beta_2 v + (1-\beta_2) g^2;\;
///     p \leftarrow p - \frac{\eta}{1-\beta_1^t} \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}
///     \f]
/// Called only for trainable entries; a frozen entry is never touched (not even by decay).
template <class T>
LORALAB_HOST_DEVICE void adamw_update(T& p, T g, T& m, T& v, const AdamWStepCoefficients& c) {
  using std::sqrt;
  p *= static_cast<T>(c.decay);
  m += static_cast<T>(1.0 - c.beta1) * (g - m);
  v = v * static_cast<T>(c.beta2) + g * g * static_cast<T>(1.0 - c.beta2);
  const T denom = sqrt(v) / static_cast<T>(c.sqrt_bc2) + static_cast<T>(c.eps);
  p -= static_cast<T>(c.step_size) * m / denom;
}

}  // namespace loralab
