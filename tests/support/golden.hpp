// Opening a golden file written by a tests/reference/*.py script: it must exist, parse, and carry
// the expected magic and version metadata; otherwise the test fails with how to regenerate it.
#pragma once

#include <doctest/doctest.h>

#include <exception>
#include <filesystem>
#include <optional>
#include <string>

#include "loralab/io/safetensors.hpp"

namespace loralab::testing {

inline constexpr char kGoldenMagic[] = "loralab-golden";

inline io::SafetensorsFile open_golden(const std::filesystem::path& path,
                                       const std::string& version, const std::string& regenerate) {
  REQUIRE_MESSAGE(std::filesystem::exists(path),
                  "golden file " << path << " is missing; " << regenerate);
  std::optional<io::SafetensorsFile> file;
  try {
    file.emplace(io::SafetensorsFile::load(path));
  } catch (const std::exception& e) {
    FAIL("cannot read golden file " << path << ": " << e.what() << "; " << regenerate);
  }
  const auto& meta = file->metadata();
  const auto magic = meta.find("magic");
  const auto found = meta.find("version");
  REQUIRE_MESSAGE((magic != meta.end() && magic->second == kGoldenMagic),
                  path << " is not a loralab golden file (metadata magic); " << regenerate);
  REQUIRE_MESSAGE((found != meta.end() && found->second == version),
                  path << " has golden version "
                       << (found == meta.end() ? std::string("<none>") : found->second)
                       << ", this test expects " << version << "; " << regenerate);
  return std::move(*file);
}

}  // namespace loralab::testing
