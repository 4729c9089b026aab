/// \file
/// \brief GaLore (methods.md 5.4, jiaweizzhao/GaLore galore_torch) pieces shared by every
/// backend: the configuration, which side a weight is projected on, the state shapes, the
/// refresh clock, and the Adam update in the projected space (element-wise, host and device).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "loralab/core/config.hpp"
#include "loralab/core/error.hpp"

namespace loralab {

/// \ingroup optim
/// \brief GaLore's projection types (galore_projector.py).
enum class GaloreProjection {
  standard,          ///< `std`: right (P = Vh[:r]) when m >= n, else left (P = U[:, :r])
  reverse_standard,  ///< `reverse_std`: the opposite side of `std`
  right,             ///< always right
  left,              ///< always left
  full,              ///< two-sided: R = U_r^T G Vh_r^T [r x r]
};

/// \ingroup optim
/// \brief How a projector is refreshed from the gradient.
enum class GaloreRefresh {
  exact_svd,   ///< thin SVD of G (GaLore's torch.linalg.svd)
  randomized,  ///< randomized range finder with power iterations (Halko et al.), then a small SVD
};

/// \ingroup optim
/// \brief Run-time knobs of GaLore; defaults are galore_torch's (T = 200, alpha = 1, `std`).
struct GaloreConfig {
  int rank = 128;                                      ///< r
  std::int64_t period = 200;                           ///< T: refresh every T of a weight's steps
  double scale = 1.0;                                  ///< alpha on the back-projected update
  GaloreProjection type = GaloreProjection::standard;  ///< projection side rule
  GaloreRefresh refresh = GaloreRefresh::exact_svd;    ///< exact or randomized
  int power_iterations = 2;                            ///< randomized: subspace iterations
  int oversample = 8;                                  ///< randomized: extra sketch columns
  std::uint64_t seed = 0;                              ///< randomized: Philox key of the sketch
};

/// \ingroup optim
/// \brief Checks a GaloreConfig. \throws Error naming the bad value.
inline void validate(const GaloreConfig& c) {
  LORALAB_CHECK(
      c.rank >= 1 && c.period >= 1 && c.scale > 0 && c.power_iterations >= 0 && c.oversample >= 0,
      "[loralab.config] GaLore needs rank >= 1, period >= 1, scale > 0, "
      "power_iterations >= 0, oversample >= 0; got rank=",
      c.rank, " period=", c.period, " scale=", c.scale, " power_iterations=", c.power_iterations,
      " oversample=", c.oversample);
}

/// \ingroup optim
/// \brief The side a weight [m x n] is projected on.
enum class GaloreSide {
  right,  ///< P [r x n], R = G P^T [m x r], back N P
  left,   ///< P [m x r], R = P^T G [r x n], back P N
  both,   ///< `full`: U_r [m x r], Vh_r [r x n], R [r x r]
};

/// \ingroup optim
/// \brief The side GaLore uses for a weight of m rows and n columns under `type`.
inline GaloreSide galore_side(GaloreProjection type, std::int64_t m, std::int64_t n) {
  switch (type) {
    case GaloreProjection::standard:
      return m >= n ? GaloreSide::right : GaloreSide::left;
    case GaloreProjection::reverse_standard:
      return m >= n ? GaloreSide::left : GaloreSide::right;
    case GaloreProjection::right:
      return GaloreSide::right;
    case GaloreProjection::left:
      return GaloreSide::left;
    case GaloreProjection::full:
      return GaloreSide::both;
  }
  return GaloreSide::right;
}

/// \ingroup optim
/// \brief Shapes of a weight's GaLore state: the projected gradient (= each moment) and the
/// projector(s). r is clipped to min(m, n) (the SVD slice returns at most that many vectors).
struct GaloreShapes {
  std::int64_t rank = 0;                ///< effective rank min(r, m, n)
  std::int64_t moment_rows = 0;         ///< rows of R, Mo, Ve
  std::int64_t moment_cols = 0;         ///< columns of R, Mo, Ve
  std::int64_t projector_size = 0;      ///< entries of P (both projectors for `full`)
  GaloreSide side = GaloreSide::right;  ///< the side

  /// \brief Shapes for a weight [m x n].
  static GaloreShapes make(const GaloreConfig& c, std::int64_t m, std::int64_t n) {
    GaloreShapes s;
    s.side = galore_side(c.type, m, n);
    s.rank = std::min<std::int64_t>(c.rank, std::min(m, n));
    switch (s.side) {
      case GaloreSide::right:
        s.moment_rows = m, s.moment_cols = s.rank, s.projector_size = s.rank * n;
        break;
      case GaloreSide::left:
        s.moment_rows = s.rank, s.moment_cols = n, s.projector_size = m * s.rank;
        break;
      case GaloreSide::both:
        s.moment_rows = s.rank, s.moment_cols = s.rank, s.projector_size = s.rank * (m + n);
        break;
    }
    return s;
  }
  /// \brief Entries of one moment.
  std::int64_t moment_size() const { return moment_rows * moment_cols; }
};

/// \ingroup optim
/// \brief Whether the projector is (re)computed at a step whose counter, BEFORE its increment, is
/// `t` (galore_torch: `state["step"] % update_proj_gap == 0`, or no projector yet).
LORALAB_HOST_DEVICE bool galore_refresh_due(std::int64_t t, std::int64_t period,
                                            bool has_projector) {
  return !has_projector || t % period == 0;
}

/// \ingroup optim
/// \brief Per-step scalars of GaLore's AdamW (HF form, as galore_torch/adamw.py) for a tensor
/// whose own step counter is t (1-based, after the increment).
struct GaloreStepCoefficients {
  double beta1 = 0.9;    ///< first-moment decay
  double beta2 = 0.999;  ///< second-moment decay
  double eps = 1e-6;     ///< added to the un-corrected sqrt(Ve)
  double step_size = 0;  ///< lr * sqrt(1 - beta2^t) / (1 - beta1^t)
  double decay = 0;      ///< lr * weight_decay, applied after the update
  double scale = 1;      ///< alpha on the back-projected update

  /// \brief Coefficients of step t >= 1.
  static GaloreStepCoefficients make(double lr, double beta1, double beta2, double eps,
                                     double weight_decay, double scale, std::int64_t t) {
    GaloreStepCoefficients c;
    c.beta1 = beta1, c.beta2 = beta2, c.eps = eps, c.scale = scale;
    c.step_size =
        lr * std::sqrt(1.0 - std::pow(beta2, double(t))) / (1.0 - std::pow(beta1, double(t)));
    c.decay = lr * weight_decay;
    return c;
  }
};

/// \ingroup optim
/// \brief One projected-space Adam element: updates the moments from the projected gradient r and
/// returns the normalized update N = Mo / (sqrt(Ve) + eps) (galore_torch/adamw.py order).
template <class T>
LORALAB_HOST_DEVICE T galore_moment_update(T r, T& m, T& v, const GaloreStepCoefficients& c) {
  using std::sqrt;
  m = m * static_cast<T>(c.beta1) + r * static_cast<T>(1.0 - c.beta1);
  v = v * static_cast<T>(c.beta2) + r * r * static_cast<T>(1.0 - c.beta2);
  return m / (sqrt(v) + static_cast<T>(c.eps));
}

/// \ingroup optim
/// \brief Applies a back-projected normalized update d to one weight entry:
/// W -= step_size * alpha * d, then W -= lr * wd * W (decoupled decay after the update).
template <class T>
LORALAB_HOST_DEVICE void galore_apply(T& w, T d, const GaloreStepCoefficients& c) {
  w -= static_cast<T>(c.step_size * c.scale) * d;
  if (c.decay != 0) w -= static_cast<T>(c.decay) * w;
}

}  // namespace loralab
