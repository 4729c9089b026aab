/// \file
/// \brief `ParamTensor`: what an optimizer sees of a trainable tensor (values, gradient, mask).
#pragma once

#include <cstdint>
#include <span>

namespace loralab {

/// \ingroup optim
/// \brief A flat trainable tensor: values, their gradient (same length) and an optional mask
/// (1 = trainable, 0 = frozen; empty = all trainable). The storage belongs to the adapter.
///
/// The trailing fields describe where the tensor sits, for optimizers that care: the block it
/// belongs to (layer sampling skips the tensors of inactive blocks) and, for a linear weight, its
/// [rows x cols] shape (GaLore projects it).
template <class T>
struct ParamTensor {
  std::span<T> value;                  ///< parameters, updated in place
  std::span<const T> grad;             ///< dL/dvalue
  std::span<const std::uint8_t> mask;  ///< empty, or one byte per entry
  int block = -1;                      ///< decoder block, or -1 (always trains: embeddings, ...)
  std::int64_t rows = 0;               ///< a projectable matrix's rows (0 = not a matrix)
  std::int64_t cols = 0;               ///< its columns
  bool projectable = false;            ///< a block's linear weight (GaLore applies to it)
};

}  // namespace loralab
