/// \file
/// \brief The fortune-cookie corpus of Debian's `fortunes` package as a language-modeling data
/// set: loading by category, a domain split (pretrain on most categories, fine-tune on held-out
/// ones), and, through batch.hpp, fixed-length byte windows for training and validation.
///
/// The package installs one text file per category under /usr/share/games/fortunes/; fortunes in
/// a file are separated by lines holding only "%". The binary `*.dat` index files, the `*.u8`
/// symlinks and anything that is not a regular file are ignored.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/core/philox.hpp"
#include "loralab/data/batch.hpp"

namespace loralab::data {

/// \ingroup data
/// \brief Where Debian's `fortunes` package installs its category files.
inline constexpr const char* kDefaultFortuneDir = "/usr/share/games/fortunes";

/// \ingroup data
/// \brief Fortunes grouped by category (the file name), each fortune without its trailing newline.
struct FortuneCorpus {
  std::map<std::string, std::vector<std::string>> by_category;  ///< category -> fortunes in order

  /// \brief Number of fortunes in all categories.
  std::size_t fortune_count() const {
    std::size_t n = 0;
    for (const auto& [name, fortunes] : by_category) n += fortunes.size();
    return n;
  }
};

/// \ingroup data
/// \brief The fortunes of one category file's contents: the text between lines holding only "%"
/// (a trailing '\\r' is tolerated), without the final newline; empty or blank fortunes are
/// dropped.
/// \param contents the bytes of a fortune file.
inline std::vector<std::string> parse_fortunes(std::string_view contents) {
  std::vector<std::string> out;
  std::string current;
  std::size_t lines = 0;  // lines in `current`
  const auto flush = [&] {
    if (current.find_first_not_of(" \t\r\n") != std::string::npos) out.push_back(current);
    current.clear();
    lines = 0;
  };
  std::size_t pos = 0;
  while (pos < contents.size()) {
    std::size_t end = contents.find('\n', pos);
    if (end == std::string_view::npos) end = contents.size();
    const std::string_view line = contents.substr(pos, end - pos);
    if (line == "%" || line == "%\r") {
      flush();
    } else {
      if (lines++ > 0) current.push_back('\n');  // the newline the split removed
      current.append(line);
    }
    pos = end + 1;
  }
  flush();  // a file need not end with "%"
  return out;
}

namespace detail {
inline bool is_fortune_category_file(const std::filesystem::directory_entry& entry) {
  // symlink_status: the *.u8 names are symlinks to the category files and would count them twice.
  if (!std::filesystem::is_regular_file(entry.symlink_status())) return false;
  const std::string name = entry.path().filename().string();
  const auto ends_with = [&](std::string_view suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(),
                                                        suffix.data(), suffix.size()) == 0;
  };
  return !name.empty() && name[0] != '.' && !ends_with(".dat") && !ends_with(".u8");
}

inline std::string read_file_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  LORALAB_CHECK(in.good(), "[loralab.data] cannot open fortune file '", path.string(), "'");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// FNV-1a: a stable 64-bit id of a category name, so a category's split does not depend on
// which other categories are installed.
inline std::uint64_t fnv1a64(std::string_view s) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001B3ull;
  return h;
}
}  // namespace detail

/// \ingroup data
/// \brief Loads every category file of `dir` (one category per regular file; `*.dat`, `*.u8`,
/// hidden files, symlinks and directories are skipped; categories without fortunes are left out).
/// \param dir the fortune directory, by default where Debian's `fortunes` package puts it.
/// \throws loralab::Error `[loralab.data]` when `dir` does not exist or holds no fortunes; the
/// message says to install the Debian package `fortunes` (`apt-get install fortunes`).
inline FortuneCorpus load_fortunes(const std::filesystem::path& dir = kDefaultFortuneDir) {
  constexpr const char* kHint =
      "; install the Debian package `fortunes` (apt-get install fortunes), which puts its "
      "category files in /usr/share/games/fortunes";
  std::error_code ec;
  LORALAB_CHECK(std::filesystem::is_directory(dir, ec), "[loralab.data] fortune directory '",
                dir.string(), "' does not exist or is not a directory", kHint);
  std::filesystem::directory_iterator entries(dir, ec);
  LORALAB_CHECK(!ec, "[loralab.data] cannot list fortune directory '", dir.string(),
                "': ", ec.message());
  FortuneCorpus corpus;
  for (const auto& entry : entries) {
    if (!detail::is_fortune_category_file(entry)) continue;
    std::vector<std::string> fortunes = parse_fortunes(detail::read_file_bytes(entry.path()));
    if (!fortunes.empty())
      corpus.by_category.emplace(entry.path().filename().string(), std::move(fortunes));
  }
  LORALAB_CHECK(!corpus.by_category.empty(), "[loralab.data] no fortune category files in '",
                dir.string(), "'", kHint);
  return corpus;
}

/// \ingroup data
/// \brief The categories domain_split holds out by default: every category about computing in
/// the Debian 12 package (computers 1051 fortunes, debian 85, knghtbrd 540, linux 336,
/// linuxcookie 103, perl 273: 2388 fortunes, 460 KB as split text). Their jargon (Unix, Perl,
/// Debian, IRC logs) is mostly absent from the other 37 categories (about 2.1 MB), so a model
/// pretrained on those meets a real domain shift when fine-tuned on these.
inline std::vector<std::string> default_held_out_categories() {
  return {"computers", "debian", "knghtbrd", "linux", "linuxcookie", "perl"};
}

/// \ingroup data
/// \brief A text for training and one for validation.
struct TextSplit {
  std::string train;  ///< training text
  std::string valid;  ///< validation text
};

/// \ingroup data
/// \brief Texts for the two phases of a domain-adaptation run.
struct DomainSplit {
  TextSplit pretrain;  ///< from the categories not held out
  TextSplit finetune;  ///< from the held-out categories
};

/// \ingroup data
/// \brief Splits `corpus` by domain, then each domain into train and valid. Every category gives
/// floor(n * valid_fraction) of its n fortunes to valid: those with the smallest 64-bit Philox
/// keys (stream keyed by a hash of the category name, block = fortune index), so the split is a
/// pure function of (seed, category, index). Texts keep category (alphabetical) and file order,
/// and every fortune is followed by "\n%\n", the file's own separator, so a model also learns
/// where a fortune ends.
/// \param corpus the loaded fortunes.
/// \param held_out category names for fine-tuning, at least one; all must be in `corpus`, and at
/// least one category must remain for pretraining (see default_held_out_categories).
/// \param valid_fraction share of each category in valid, in [0, 1).
/// \param seed the split's seed.
/// \throws loralab::Error `[loralab.data]` naming an unknown category (with the available ones),
/// an empty held-out list or pretraining side, or a fraction outside [0, 1).
inline DomainSplit domain_split(const FortuneCorpus& corpus, std::span<const std::string> held_out,
                                double valid_fraction = 0.1, std::uint64_t seed = 0) {
  LORALAB_CHECK(valid_fraction >= 0.0 && valid_fraction < 1.0,
                "[loralab.data] domain_split valid_fraction must be in [0, 1), got ",
                valid_fraction);
  LORALAB_CHECK(!held_out.empty(),
                "[loralab.data] domain_split needs at least one held-out "
                "category");
  for (const std::string& name : held_out) {
    if (corpus.by_category.count(name)) continue;
    std::string available;
    for (const auto& [category, fortunes] : corpus.by_category) {
      if (!available.empty()) available += ", ";
      available += category;
    }
    LORALAB_FAIL("[loralab.data] held-out category '", name,
                 "' is not in the corpus; available: ", available);
  }
  const auto is_held_out = [&](const std::string& name) {
    return std::find(held_out.begin(), held_out.end(), name) != held_out.end();
  };
  DomainSplit out;
  std::size_t pretrain_categories = 0;
  for (const auto& [category, fortunes] : corpus.by_category) {
    const bool finetune = is_held_out(category);
    pretrain_categories += !finetune;
    TextSplit& split = finetune ? out.finetune : out.pretrain;
    const std::size_t n = fortunes.size();
    const auto n_valid = static_cast<std::size_t>(static_cast<double>(n) * valid_fraction);
    const std::uint64_t stream =
        detail::data_stream(detail::DataStream::fortune_split, detail::fnv1a64(category));
    std::vector<std::pair<std::uint64_t, std::size_t>> keys(n);  // (key, fortune index)
    for (std::size_t i = 0; i < n; ++i) {
      const Philox4x32Block r = philox_block(seed, stream, i);
      keys[i] = {(static_cast<std::uint64_t>(r.v[0]) << 32) | r.v[1], i};
    }
    std::sort(keys.begin(), keys.end());
    std::vector<bool> in_valid(n, false);
    for (std::size_t k = 0; k < n_valid; ++k) in_valid[keys[k].second] = true;
    for (std::size_t i = 0; i < n; ++i)
      (in_valid[i] ? split.valid : split.train) += fortunes[i] + "\n%\n";
  }
  LORALAB_CHECK(pretrain_categories > 0, "[loralab.data] domain_split holds out all ",
                corpus.by_category.size(), " categories; none is left for pretraining");
  return out;
}

}  // namespace loralab::data
