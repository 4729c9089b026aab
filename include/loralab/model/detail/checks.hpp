/// \file
/// \brief Shape checks shared by the model layers (internal).
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <type_traits>

#include "loralab/core/error.hpp"

namespace loralab::model::detail {

/// Throws `[loralab.shape]` unless `m` is [rows x cols]; `fn` and `name` go into the message.
template <class M>
void check_shape(const M& m, Eigen::Index rows, Eigen::Index cols, const char* fn,
                 const char* name) {
  LORALAB_CHECK(m.rows() == rows && m.cols() == cols, "[loralab.shape] ", fn, ": ", name, " is [",
                m.rows(), " x ", m.cols(), "], expected [", rows, " x ", cols, "]");
}

/// Throws `[loralab.shape]` unless a 1-D argument has `expected` entries.
inline void check_size(std::size_t size, Eigen::Index expected, const char* fn, const char* name) {
  LORALAB_CHECK(static_cast<Eigen::Index>(size) == expected, "[loralab.shape] ", fn, ": ", name,
                " has ", size, " entries, expected ", expected);
}

/// Throws `[loralab.shape]` unless `value` > 0.
inline void check_positive(Eigen::Index value, const char* fn, const char* name) {
  LORALAB_CHECK(value > 0, "[loralab.shape] ", fn, ": ", name, "=", value, " must be > 0");
}

/// The element types the model layers support.
template <class T>
inline constexpr bool is_real_v = std::is_same_v<T, float> || std::is_same_v<T, double>;

}  // namespace loralab::model::detail
