/// \file
/// \brief Library version: the single source of truth that CMake parses.
#pragma once

#define LORALAB_VERSION_MAJOR 0  ///< major version
#define LORALAB_VERSION_MINOR 1  ///< minor version
#define LORALAB_VERSION_PATCH 0  ///< patch version

namespace loralab {
/// \brief Version string "major.minor.patch".
inline constexpr const char* version_string = "0.1.0";
}  // namespace loralab
