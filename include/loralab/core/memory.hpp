/// \file
/// \brief Memory accounting: what an adapter (or a model) holds, by category.
#pragma once

#include <cstdint>
#include <ostream>

namespace loralab {

/// \ingroup core
/// \brief Parameter counts and byte counts reported by every adapter (methods.md 1.9 and 2.5).
///
/// Bytes are those the library allocates or requires to be kept alive; the frozen base weight is
/// owned by the caller and is not counted.
struct MemoryReport {
  std::int64_t trainable_params = 0;       ///< entries the optimizer may move
  std::int64_t frozen_adapter_params = 0;  ///< adapter entries held fixed (LoRA-SP masks, freeze-A)
  std::int64_t parameter_bytes = 0;        ///< storage of all adapter entries (trainable + frozen)
  std::int64_t gradient_bytes = 0;         ///< gradient buffers the adapter holds
  std::int64_t optimizer_state_bytes = 0;  ///< AdamW moments for the trainable entries (packed)
  std::int64_t mask_bytes = 0;             ///< freeze masks
  std::int64_t activation_bytes = 0;       ///< what backward needs kept from forward, see below
  std::int64_t saved_input_bytes = 0;      ///< part of activation_bytes: the input X (caller-owned)
                                           ///< that must stay alive because dA needs it
  std::int64_t index_bytes = 0;      ///< sharing: the index tables that route pool rows to modules
  std::int64_t transient_bytes = 0;  ///< sharing: assembled factors and their gradients per step

  /// \brief Sum of every byte category (activations included).
  [[nodiscard]] std::int64_t total_bytes() const {
    return parameter_bytes + gradient_bytes + optimizer_state_bytes + mask_bytes +
           activation_bytes + index_bytes + transient_bytes;
  }

  /// \brief Element-wise sum, for totals over many adapters.
  MemoryReport& operator+=(const MemoryReport& o) {
    trainable_params += o.trainable_params;
    frozen_adapter_params += o.frozen_adapter_params;
    parameter_bytes += o.parameter_bytes;
    gradient_bytes += o.gradient_bytes;
    optimizer_state_bytes += o.optimizer_state_bytes;
    mask_bytes += o.mask_bytes;
    activation_bytes += o.activation_bytes;
    saved_input_bytes += o.saved_input_bytes;
    index_bytes += o.index_bytes;
    transient_bytes += o.transient_bytes;
    return *this;
  }
};

/// \brief One line per category, for logs.
inline std::ostream& operator<<(std::ostream& os, const MemoryReport& m) {
  return os << "trainable=" << m.trainable_params << " frozen=" << m.frozen_adapter_params
            << " param_bytes=" << m.parameter_bytes << " grad_bytes=" << m.gradient_bytes
            << " optim_bytes=" << m.optimizer_state_bytes << " mask_bytes=" << m.mask_bytes
            << " activation_bytes=" << m.activation_bytes
            << " (saved_input_bytes=" << m.saved_input_bytes << ")"
            << " index_bytes=" << m.index_bytes << " transient_bytes=" << m.transient_bytes;
}

}  // namespace loralab
