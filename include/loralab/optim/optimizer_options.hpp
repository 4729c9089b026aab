/// \file
/// \brief `OptimizerOptions`: what a trainer's optimizer adds to AdamW: GaLore gradient
/// projection and the optimizer-state policy for tensors whose trainability changes
/// (methods.md 7.1 axes 8 and 9).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "loralab/core/error.hpp"
#include "loralab/optim/galore.hpp"

namespace loralab {

/// \ingroup optim
/// \brief What happens to the optimizer state of a block's tensors when layer sampling changes
/// which blocks train (methods.md 5.3).
enum class StatePolicy {
  keep,   ///< moments, step counters and projectors persist while inactive (LMFlow / OwLore code)
  reset,  ///< a block drawn for a period starts it from zero state (LISA paper: a fresh optimizer
          ///< every interval); always-on tensors keep theirs
  drop,   ///< the state of an inactive block is freed and re-created at zero when it is drawn
          ///< again (what makes the per-period memory claim hold)
};

/// \ingroup optim
/// \brief The policy's name ("keep", "reset", "drop").
inline std::string_view state_policy_name(StatePolicy p) {
  switch (p) {
    case StatePolicy::keep:
      return "keep";
    case StatePolicy::reset:
      return "reset";
    case StatePolicy::drop:
      return "drop";
  }
  return "?";
}

/// \ingroup optim
/// \brief Parses "keep", "reset" or "drop". \throws Error on anything else.
inline StatePolicy parse_state_policy(std::string_view s) {
  for (StatePolicy p : {StatePolicy::keep, StatePolicy::reset, StatePolicy::drop})
    if (s == state_policy_name(p)) return p;
  throw Error("[loralab.config] unknown optimizer-state policy '" + std::string(s) +
              "'; expected keep, reset or drop");
}

/// \ingroup optim
/// \brief Optimizer extras beyond AdamWConfig.
struct OptimizerOptions {
  /// GaLore on every projectable tensor (a block's linear weight in full fine-tuning); none =
  /// plain AdamW everywhere.
  std::optional<GaloreConfig> galore;
  StatePolicy state = StatePolicy::keep;  ///< on a trainability change (layer sampling)
};

}  // namespace loralab
