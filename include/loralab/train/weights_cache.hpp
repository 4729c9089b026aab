/// \file
/// \brief A cache of pretrained base weights: a safetensors checkpoint (HF GPT-2 tensor names,
/// [out x in] linears) with the model config and a hash of the recipe that made it, so repeated
/// ablations skip pretraining and a stale or corrupt file is detected instead of trusted.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/io/safetensors.hpp"
#include "loralab/model/weights.hpp"

namespace loralab::train {

/// \ingroup train
/// \brief 64-bit FNV-1a of a recipe string, as 16 hex digits (names the cache file).
inline std::string recipe_hash(const std::string& recipe) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : recipe) h = (h ^ c) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

/// \ingroup train
/// \brief Writes `w` to `path` atomically, with metadata recipe, recipe_hash and config.
template <class T>
void save_cached_weights(const std::filesystem::path& path, const std::string& recipe,
                         const model::GptWeights<T>& w) {
  io::SafetensorsWriter writer;
  const auto flat = w.flat();
  for (const auto& s : w.slots()) {
    const std::vector<std::int64_t> shape =
        s.rows == 1 ? std::vector<std::int64_t>{s.cols} : std::vector<std::int64_t>{s.rows, s.cols};
    writer.add<T>(s.name, shape, flat.subspan(s.offset, std::size_t(s.size())));
  }
  writer.set_metadata("format", "loralab-base-weights");
  writer.set_metadata("recipe", recipe);
  writer.set_metadata("recipe_hash", recipe_hash(recipe));
  writer.set_metadata("config", w.config().to_string());
  writer.write(path);
}

/// \ingroup train
/// \brief Fills `w` from the cache at `path` when it exists, is readable, was made by the same
/// recipe and has every tensor with the right shape. Returns false otherwise, with the reason in
/// `why` (missing, stale recipe, corrupt file, wrong shape); `w` is then unchanged.
template <class T>
bool load_cached_weights(const std::filesystem::path& path, const std::string& recipe,
                         model::GptWeights<T>& w, std::string* why = nullptr) {
  auto fail = [&](std::string reason) {
    if (why) *why = std::move(reason);
    return false;
  };
  if (!std::filesystem::exists(path)) return fail("no cache file " + path.string());
  try {
    const io::SafetensorsFile f = io::SafetensorsFile::load(path);
    const auto& meta = f.metadata();
    if (!meta.count("recipe_hash") || meta.at("recipe_hash") != recipe_hash(recipe))
      return fail("stale cache " + path.string() + ": made by another recipe");
    std::vector<T> staged(w.flat().size());  // nothing is written into w until everything checks
    for (const auto& s : w.slots()) {
      const std::vector<std::int64_t> shape = s.rows == 1
                                                  ? std::vector<std::int64_t>{s.cols}
                                                  : std::vector<std::int64_t>{s.rows, s.cols};
      const std::vector<T> v = f.read<T>(s.name, shape);
      std::copy(v.begin(), v.end(), staged.begin() + std::ptrdiff_t(s.offset));
    }
    std::copy(staged.begin(), staged.end(), w.flat().begin());
    return true;
  } catch (const Error& e) {
    return fail(std::string("corrupt cache: ") + e.what());
  }
}

}  // namespace loralab::train
