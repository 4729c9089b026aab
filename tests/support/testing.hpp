// Shared test helpers: the suite's seed, per-type tolerances, and comparison with a report.
#pragma once

#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "loralab/core/error.hpp"

namespace loralab::testing {

inline constexpr std::uint64_t kSeed = 20261125;  ///< base seed of every randomized test

/// Tolerances per scalar type, never magic numbers in test bodies (ensmallen's Tolerances<>).
template <class T>
struct Tolerance;
template <>
struct Tolerance<float> {
  static constexpr double rel = 1e-5;  ///< forward/merge comparisons in float
  static constexpr double abs = 1e-6;
};
template <>
struct Tolerance<double> {
  static constexpr double rel = 1e-12;
  static constexpr double abs = 1e-13;
};

/// The message of the loralab::Error that `f` throws, or a marker when it throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const loralab::Error& e) {
    return e.what();
  }
  return "(no loralab::Error thrown)";
}

/// Max over entries of |a - b| / (abs + |b|): <= 1 means every entry is within abs + rel |b|.
/// Reports the first offending entry in `where`.
template <class A, class B>
double max_scaled_error(const A& a, const B& b, double rel, double abs,
                        std::string* where = nullptr) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  double worst = 0;
  for (Eigen::Index i = 0; i < a.rows(); ++i)
    for (Eigen::Index j = 0; j < a.cols(); ++j) {
      const double x = double(a(i, j)), y = double(b(i, j));
      const double e = std::abs(x - y) / (abs + rel * std::abs(y));
      if (!(e <= worst)) {  // also catches NaN
        worst = std::isnan(e) ? INFINITY : e;
        if (where) {
          std::ostringstream os;
          os << "(" << i << ", " << j << "): got " << x << ", want " << y;
          *where = os.str();
        }
      }
    }
  return worst;
}

/// CHECKs that a and b agree within abs + rel |b| entry-wise, printing the worst entry if not.
#define LORALAB_CHECK_CLOSE(a, b, rel, abs)                                                    \
  do {                                                                                         \
    std::string where_;                                                                        \
    const double err_ = ::loralab::testing::max_scaled_error((a), (b), (rel), (abs), &where_); \
    INFO("worst entry " << where_);                                                            \
    CHECK(err_ <= 1.0);                                                                        \
  } while (false)

}  // namespace loralab::testing
