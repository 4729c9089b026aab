/// \file
/// \brief Initial values and LoRA-SP freeze masks drawn from Philox: host loops over element
/// functions a CUDA kernel can call too, so every backend can reproduce them bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <utility>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/core/philox.hpp"
#include "loralab/policy/freeze.hpp"

namespace loralab {

/// \ingroup core
/// \brief Uniform value in [lo, hi) for element i of a stream, computed in double from 53 random
/// bits (words 0 and 1 of block i) and then rounded to T: float and double adapters start from the
/// same values up to rounding. The explicit fma (one exact rounding) keeps the value identical
/// whether or not a compiler contracts `lo + (hi - lo) * u` on its own (nvcc and gcc -O2 do).
template <class T>
LORALAB_HOST_DEVICE T uniform_element(std::uint64_t seed, std::uint64_t stream, std::uint64_t i,
                                      double lo, double hi) {
  using std::fma;
  const Philox4x32Block b = philox_block(seed, stream, i);
  return static_cast<T>(fma(hi - lo, uniform01_double(b.v[0], b.v[1]), lo));
}

/// \ingroup core
/// \brief Normal(0, stddev^2) value for element i of a stream (Box-Muller on block i).
template <class T>
inline T normal_element(std::uint64_t seed, std::uint64_t stream, std::uint64_t i, double stddev) {
  const Philox4x32Block b = philox_block(seed, stream, i);
  const double u1 = uniform01_double(b.v[0], b.v[1]);
  const double u2 = uniform01_double(b.v[2], b.v[3]);
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  return static_cast<T>(stddev * std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(kTwoPi * u2));
}

/// \ingroup core
/// \brief 64-bit selection key of element i for exact-count masks (words 2 and 3 of block i).
LORALAB_HOST_DEVICE std::uint64_t mask_key(std::uint64_t seed, std::uint64_t stream,
                                           std::uint64_t i) {
  const Philox4x32Block b = philox_block(seed, stream, i);
  return (static_cast<std::uint64_t>(b.v[2]) << 32) | b.v[3];
}

/// \ingroup core
/// \brief Number of trainable entries an exact RandomMask<frozen_percent> leaves in n entries:
/// floor(n * (100 - frozen_percent) / 100).
inline std::int64_t exact_trainable_count(std::int64_t n, int frozen_percent) {
  return n * (100 - frozen_percent) / 100;
}

/// \ingroup core
/// \brief Fills `mask` (1 = trainable, 0 = frozen) for a RandomMask.
///
/// exact: the trainable entries are the `exact_trainable_count` entries with the smallest
/// (mask_key, index) pairs, i.e. a uniformly random subset of that size. bernoulli: an entry is
/// frozen when its word 0 is below drop_threshold(frozen_percent / 100).
inline void fill_random_mask(std::span<std::uint8_t> mask, std::uint64_t seed, std::uint64_t stream,
                             int frozen_percent, MaskSampling sampling) {
  const auto n = static_cast<std::int64_t>(mask.size());
  if (sampling == MaskSampling::bernoulli) {
    const std::uint32_t threshold =
        frozen_percent >= 100 ? 0xFFFFFFFFu : drop_threshold(frozen_percent / 100.0);
    for (std::int64_t i = 0; i < n; ++i) {
      const bool frozen = frozen_percent >= 100 || philox_block(seed, stream, i).v[0] < threshold;
      mask[i] = frozen ? 0 : 1;
    }
    return;
  }
  const std::int64_t keep = exact_trainable_count(n, frozen_percent);
  std::fill(mask.begin(), mask.end(), std::uint8_t{0});
  if (keep == 0) return;
  std::vector<std::pair<std::uint64_t, std::int64_t>> keyed(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) keyed[i] = {mask_key(seed, stream, i), i};
  std::nth_element(keyed.begin(), keyed.begin() + (keep - 1), keyed.end());
  for (std::int64_t j = 0; j < keep; ++j) mask[keyed[j].second] = 1;
}

}  // namespace loralab
