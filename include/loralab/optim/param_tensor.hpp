/// \file
/// \brief `ParamTensor`: what an optimizer sees of a trainable tensor (values, gradient, mask).
#pragma once

#include <cstdint>
#include <span>

namespace loralab {

/// \ingroup optim
/// \brief A flat trainable tensor: values, their gradient (same length) and an optional mask
/// (1 = trainable, 0 = frozen; empty = all trainable). The storage belongs to the adapter.
template <class T>
struct ParamTensor {
  std::span<T> value;                  ///< parameters, updated in place
  std::span<const T> grad;             ///< dL/dvalue
  std::span<const std::uint8_t> mask;  ///< empty, or one byte per entry
};

}  // namespace loralab
