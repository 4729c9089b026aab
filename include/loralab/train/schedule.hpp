/// \file
/// \brief Learning-rate schedule: linear warmup then cosine decay to a floor.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace loralab::train {

/// \ingroup train
/// \brief lr(step) for 0-based steps: peak * (step+1)/warmup during warmup, then cosine from peak
/// to min_ratio * peak at `total` steps (and the floor after).
struct WarmupCosine {
  double peak = 1e-3;       ///< learning rate at the end of warmup
  std::int64_t warmup = 0;  ///< warmup steps
  std::int64_t total = 1;   ///< steps until the floor is reached
  double min_ratio = 0.1;   ///< floor as a fraction of peak

  /// \brief The learning rate of 0-based step `step`.
  double operator()(std::int64_t step) const {
    if (warmup > 0 && step < warmup) return peak * double(step + 1) / double(warmup);
    const double span = double(std::max<std::int64_t>(1, total - warmup));
    const double progress = std::clamp(double(step - warmup) / span, 0.0, 1.0);
    constexpr double kPi = 3.14159265358979323846;
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + std::cos(kPi * progress)));
  }
};

}  // namespace loralab::train
