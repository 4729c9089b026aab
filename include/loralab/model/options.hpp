/// \file
/// \brief `model::TrainMode` and `model::GptOptions`: what trains in a decoder, shared by the CPU
/// model and the device model (no Eigen).
#pragma once

#include "loralab/adapter.hpp"
#include "loralab/dropout/config.hpp"
#include "loralab/model/modules.hpp"

namespace loralab::model {

/// \ingroup model
/// \brief What trains: the adapters on the targeted modules (base frozen), or every weight.
enum class TrainMode {
  adapters,  ///< base weights frozen; adapters on `targets` train
  full,      ///< full fine-tuning: every base weight trains, no adapters
};

/// \ingroup model
/// \brief Run-time options of a Gpt.
struct GptOptions {
  TrainMode mode = TrainMode::adapters;  ///< adapters or full fine-tuning
  ModuleSet targets;                     ///< modules that carry an adapter (default: all four)
  AdapterConfig adapter;                 ///< rank, alpha, dropout, seed of every adapter
  dropout::Config dropout;  ///< the dropout framework's sites and compensation (default: none);
                            ///< masks are keyed by adapter.seed
};

}  // namespace loralab::model
