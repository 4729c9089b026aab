/// \file
/// \brief `loralab::Error` and the checking macros used at the public API boundary.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace loralab {

/// \ingroup core
/// \brief The one exception type loralab throws. The message names the problem and the values
/// involved, starts with a stable family prefix such as `[loralab.shape]` (so tests and users can
/// match on it) and ends with the file:line of the check that failed.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
[[noreturn]] void throw_error(const char* file, int line, Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  os << " (" << file << ":" << line << ")";
  throw Error(os.str());
}
}  // namespace detail

}  // namespace loralab

/// Throws loralab::Error with the streamed message when `cond` is false. Example:
/// `LORALAB_CHECK(r <= in, "[loralab.shape] adapter rank ", r, " exceeds in=", in);`
#define LORALAB_CHECK(cond, ...)                                                  \
  do {                                                                            \
    if (!(cond)) ::loralab::detail::throw_error(__FILE__, __LINE__, __VA_ARGS__); \
  } while (false)

/// Unconditionally throws loralab::Error with the streamed message.
#define LORALAB_FAIL(...) ::loralab::detail::throw_error(__FILE__, __LINE__, __VA_ARGS__)

/// Internal invariant; compiled out under NDEBUG (like eigen_assert).
#ifdef NDEBUG
#define LORALAB_ASSERT(cond) ((void)0)
#else
#include <cassert>
#define LORALAB_ASSERT(cond) assert(cond)
#endif
