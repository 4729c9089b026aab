/// \file
/// \brief Initial values of an adapter (A from the init policy, B = 0, LoRA-SP masks), drawn on
/// the host and shared by every backend, so the CPU and CUDA adapters start bit-identical.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include "loralab/adapter.hpp"
#include "loralab/core/error.hpp"
#include "loralab/core/random_fill.hpp"

namespace loralab {

/// \ingroup adapter
/// \brief Fills A [r x in] (row-major) per `Spec::init`, sets B to 0 and, for a RandomMask, fills
/// `mask` (A's entries then B's; 1 = trainable) from the seed and module id of `cfg`.
/// \param cfg seed, module id and mask sampling; \param rank r; \param in d_in (Kaiming bound)
/// \param a r * in entries; \param b out * r entries; \param mask empty, or a.size() + b.size().
template <AdapterSpec Spec, class T>
void fill_initial_adapter(const AdapterConfig& cfg, int rank, std::int64_t in, std::span<T> a,
                          std::span<T> b, std::span<std::uint8_t> mask) {
  LORALAB_ASSERT(static_cast<std::int64_t>(a.size()) == rank * in);
  const std::uint64_t init_stream = make_stream(RngPurpose::init_a, cfg.module_id, 0);
  if constexpr (Spec::init::gaussian) {
    for (std::size_t i = 0; i < a.size(); ++i)
      a[i] = normal_element<T>(cfg.seed, init_stream, i, 1.0 / rank);
  } else {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    for (std::size_t i = 0; i < a.size(); ++i)
      a[i] = uniform_element<T>(cfg.seed, init_stream, i, -bound, bound);
  }
  std::fill(b.begin(), b.end(), T(0));
  if constexpr (Spec::freeze::has_mask) {
    LORALAB_ASSERT(mask.size() == a.size() + b.size());
    constexpr int pct = Spec::freeze::frozen_percent;
    fill_random_mask(mask.first(a.size()), cfg.seed,
                     make_stream(RngPurpose::freeze_mask_a, cfg.module_id, 0), pct,
                     cfg.mask_sampling);
    fill_random_mask(mask.subspan(a.size()), cfg.seed,
                     make_stream(RngPurpose::freeze_mask_b, cfg.module_id, 0), pct,
                     cfg.mask_sampling);
  }
}

/// \ingroup adapter
/// \brief Checks a configuration against a layer shape the same way on every backend; returns
/// the rank. \throws Error naming the problem and the values.
template <AdapterSpec Spec>
int validate_adapter(const AdapterConfig& cfg, std::int64_t in, std::int64_t out,
                     std::size_t bias_size) {
  const int rank = Spec::rank_for(cfg);
  LORALAB_CHECK(in > 0 && out > 0, "[loralab.shape] base weight must be non-empty, got [", out,
                " x ", in, "]");
  if constexpr (Spec::rank::is_static) {
    LORALAB_CHECK(cfg.rank == 0 || cfg.rank == rank,
                  "[loralab.config] AdapterConfig::rank=", cfg.rank,
                  " contradicts the compile-time Rank<", rank, ">");
  }
  LORALAB_CHECK(rank >= 1, "[loralab.shape] adapter rank must be >= 1, got ", rank);
  LORALAB_CHECK(rank <= std::min(in, out), "[loralab.shape] adapter rank ", rank,
                " exceeds min(in=", in, ", out=", out, ")");
  LORALAB_CHECK(bias_size == 0 || static_cast<std::int64_t>(bias_size) == out,
                "[loralab.shape] bias has ", bias_size, " entries, expected out=", out);
  LORALAB_CHECK(std::isfinite(cfg.alpha), "[loralab.config] alpha must be finite, got ", cfg.alpha);
  LORALAB_CHECK(cfg.dropout >= 0.0 && cfg.dropout < 1.0,
                "[loralab.config] dropout rate must be in [0, 1), got ", cfg.dropout);
  LORALAB_CHECK(cfg.module_id < (1u << 23), "[loralab.config] module_id ", cfg.module_id,
                " exceeds the 23 bits of the RNG stream layout (bit 23 holds the pass branch)");
  return rank;
}

}  // namespace loralab
