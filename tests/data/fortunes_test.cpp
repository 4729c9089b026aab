// Fortune corpus: parsing, loading a fixture directory (and the real package when installed),
// the domain split, and language-modeling windows (batch.hpp).
#include "loralab/data/fortunes.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "support/temp_dir.hpp"
#include "support/testing.hpp"

namespace fs = std::filesystem;
namespace ld = loralab::data;
using loralab::testing::kSeed;

namespace {

// A fresh directory under the system temp dir, removed with its contents at scope exit.
using loralab::testing::TempDir;

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  REQUIRE(out.good());
}

// The fixture: two category files plus everything load_fortunes must ignore.
void make_fixture(const fs::path& dir) {
  write_file(dir / "alpha", "First fortune.\n%\nSecond\n  line two.\n%\n");
  write_file(dir / "beta", "Only one, and no final separator");
  write_file(dir / "alpha.dat", std::string("\0\0\0\x02%\n\xFF\0", 8));  // strfile's binary index
  write_file(dir / "empty", "%\n\n%\n");  // no fortune in it: left out
  write_file(dir / ".hidden", "not a category\n%\n");
  fs::create_symlink("alpha", dir / "alpha.u8");  // as the package installs them
  fs::create_symlink("alpha", dir / "gamma");     // any symlink is skipped
  fs::create_directories(dir / "off");
  write_file(dir / "off" / "delta", "in a subdirectory\n%\n");
}

std::string all_bytes_text(std::size_t n) {
  std::string text;
  for (std::size_t i = 0; i < n; ++i) text.push_back(static_cast<char>(i));
  return text;
}

}  // namespace

TEST_CASE("fortunes: parse_fortunes splits on lines holding only %") {
  using V = std::vector<std::string>;
  CHECK(ld::parse_fortunes("a\n%\nb\nc\n%\n") == V{"a", "b\nc"});
  CHECK(ld::parse_fortunes("a\n%\nlast without separator\n") == V{"a", "last without separator"});
  CHECK(ld::parse_fortunes("a\r\n%\r\nb\r\n") == V{"a\r", "b\r"});  // only the separator is eased
  CHECK(ld::parse_fortunes("%\n  \n%\n\n%\nx\n") == V{"x"});        // blank fortunes dropped
  CHECK(ld::parse_fortunes("\n  indented\n%\n50% off\n%%\n") ==
        V{"\n  indented", "50% off\n%%"});  // only a line of exactly "%" separates
  CHECK(ld::parse_fortunes("").empty());
}

TEST_CASE("fortunes: a fixture directory loads its category files and nothing else") {
  TempDir tmp;
  make_fixture(tmp.path);
  const ld::FortuneCorpus corpus = ld::load_fortunes(tmp.path);
  REQUIRE(corpus.by_category.size() == 2);
  CHECK(corpus.by_category.at("alpha") ==
        std::vector<std::string>{"First fortune.", "Second\n  line two."});
  CHECK(corpus.by_category.at("beta") ==
        std::vector<std::string>{"Only one, and no final separator"});
  CHECK(corpus.fortune_count() == 3);

  const std::vector<std::string> held_out = {"beta"};
  const ld::DomainSplit split = ld::domain_split(corpus, held_out, 0.0, kSeed);
  CHECK(split.pretrain.train == "First fortune.\n%\nSecond\n  line two.\n%\n");
  CHECK(split.pretrain.valid.empty());
  CHECK(split.finetune.train == "Only one, and no final separator\n%\n");
  CHECK(split.finetune.valid.empty());
}

TEST_CASE("fortunes: a missing or empty directory says to install the package") {
  TempDir tmp;
  CHECK_THROWS_WITH_AS(ld::load_fortunes(tmp.path / "nope"),
                       doctest::Contains("install the Debian package `fortunes` (apt-get "
                                         "install fortunes)"),
                       loralab::Error);
  CHECK_THROWS_WITH_AS(ld::load_fortunes(tmp.path / "nope"),
                       doctest::Contains("[loralab.data] fortune directory '"), loralab::Error);
  write_file(tmp.path / "only.dat", "xx");
  CHECK_THROWS_WITH_AS(ld::load_fortunes(tmp.path),
                       doctest::Contains("no fortune category files in"), loralab::Error);
  CHECK_THROWS_WITH_AS(ld::load_fortunes(tmp.path), doctest::Contains("apt-get install fortunes"),
                       loralab::Error);
}

TEST_CASE("fortunes: domain_split gives an exact, seeded, disjoint valid share per category") {
  ld::FortuneCorpus corpus;
  const auto named = [](char prefix, int i) {  // not "b" + to_string(i): GCC 12's false -Wrestrict
    std::string s(1, prefix);
    s += std::to_string(i);
    return s;
  };
  for (int i = 0; i < 100; ++i) corpus.by_category["big"].push_back(named('b', i));
  for (int i = 0; i < 40; ++i) corpus.by_category["small"].push_back(named('s', i));
  corpus.by_category["other"] = {"o0", "o1", "o2"};
  const std::vector<std::string> held_out = {"small"};

  const auto fortunes_of = [](const std::string& text) { return ld::parse_fortunes(text); };
  const ld::DomainSplit a = ld::domain_split(corpus, held_out, 0.25, kSeed);
  // pretrain = big (100) + other (3); floor(0.25 n) of each category goes to valid.
  CHECK(fortunes_of(a.pretrain.valid).size() == 25 + 0);
  CHECK(fortunes_of(a.pretrain.train).size() == 75 + 3);
  CHECK(fortunes_of(a.finetune.valid).size() == 10);
  CHECK(fortunes_of(a.finetune.train).size() == 30);
  // Disjoint and complete, and train keeps file order.
  std::vector<std::string> ft = fortunes_of(a.finetune.train), fv = fortunes_of(a.finetune.valid);
  std::set<std::string> seen(ft.begin(), ft.end());
  for (const std::string& f : fv) CHECK(seen.insert(f).second);
  CHECK(seen.size() == 40);
  CHECK(std::is_sorted(ft.begin(), ft.end(), [](const std::string& x, const std::string& y) {
    return std::stoi(x.substr(1)) < std::stoi(y.substr(1));
  }));
  for (const std::string& f : fortunes_of(a.pretrain.train + a.pretrain.valid))
    CHECK(f[0] != 's');  // no held-out text leaks into pretraining

  const ld::DomainSplit again = ld::domain_split(corpus, held_out, 0.25, kSeed);
  CHECK(again.finetune.valid == a.finetune.valid);
  CHECK(again.pretrain.valid == a.pretrain.valid);
  CHECK(ld::domain_split(corpus, held_out, 0.25, kSeed + 1).pretrain.valid != a.pretrain.valid);
  // A category's split does not depend on the other categories present.
  ld::FortuneCorpus without_other = corpus;
  without_other.by_category.erase("other");
  CHECK(ld::domain_split(without_other, held_out, 0.25, kSeed).finetune.valid == a.finetune.valid);

  const std::vector<std::string> unknown = {"small", "nope"};
  CHECK_THROWS_WITH_AS(ld::domain_split(corpus, unknown),
                       doctest::Contains("held-out category 'nope' is not in the corpus; "
                                         "available: big, other, small"),
                       loralab::Error);
  const std::vector<std::string> everything = {"big", "other", "small"};
  CHECK_THROWS_WITH_AS(ld::domain_split(corpus, everything),
                       doctest::Contains("none is left for pretraining"), loralab::Error);
  CHECK_THROWS_AS(ld::domain_split(corpus, std::vector<std::string>{}), loralab::Error);
  CHECK_THROWS_WITH_AS(ld::domain_split(corpus, held_out, 1.0),
                       doctest::Contains("valid_fraction must be in [0, 1), got 1"),
                       loralab::Error);
}

TEST_CASE("lm_batch: random windows with next-byte targets, keyed by (seed, step)") {
  const std::string text = all_bytes_text(20);  // distinct bytes: a token gives its position
  const std::int64_t B = 16, L = 5;
  const ld::Batch batch = ld::lm_batch(text, B, L, kSeed, 3);
  CHECK(batch.batch == B);
  CHECK(batch.length == L);
  REQUIRE(batch.tokens.size() == std::size_t(B * L));
  CHECK(batch.count_targets() == B * L);
  for (std::int64_t b = 0; b < B; ++b) {
    const std::size_t s = std::size_t(batch.tokens[std::size_t(b * L)]);  // the start
    CHECK(s + std::size_t(L) < text.size());
    for (std::int64_t t = 0; t < L; ++t) {
      CHECK(batch.tokens[std::size_t(b * L + t)] == std::int32_t(s + std::size_t(t)));
      CHECK(batch.targets[std::size_t(b * L + t)] == std::int32_t(s + std::size_t(t) + 1));
    }
  }
  CHECK(ld::lm_batch(text, B, L, kSeed, 3).tokens == batch.tokens);
  CHECK(ld::lm_batch(text, B, L, kSeed, 4).tokens != batch.tokens);
  CHECK(ld::lm_batch(text, B, L, kSeed + 1, 3).tokens != batch.tokens);

  // Every start 0 .. size - L - 1 occurs, and no other.
  std::set<std::int32_t> starts;
  for (std::uint64_t step = 0; step < 50; ++step) {
    const ld::Batch b = ld::lm_batch(text, B, L, kSeed, step);
    for (std::int64_t r = 0; r < B; ++r) starts.insert(b.tokens[std::size_t(r * L)]);
  }
  CHECK(starts.size() == text.size() - std::size_t(L));
  CHECK(*starts.rbegin() == std::int32_t(text.size()) - L - 1);

  // Bytes above 0x7F stay positive token ids.
  const ld::Batch high = ld::lm_batch(std::string(8, '\xFF'), 2, 3, kSeed, 0);
  for (const std::int32_t id : high.tokens) CHECK(id == 255);

  CHECK_NOTHROW(ld::lm_batch(text, 1, 19, kSeed, 0));  // the whole text is one window
  CHECK_THROWS_WITH_AS(ld::lm_batch(text, 1, 20, kSeed, 0),
                       doctest::Contains("lm_batch needs 21 bytes of text for windows of length "
                                         "20, the text has 20"),
                       loralab::Error);
  CHECK_THROWS_AS(ld::lm_batch(text, 0, 4, kSeed, 0), loralab::Error);
}

TEST_CASE("lm_sequential_batch: the text in order, hand-checked, every byte predicted once") {
  const std::string text = "abcdefghij";  // 9 targets: windows abcd|efgh|i -> 3 windows
  CHECK(ld::lm_sequential_batch_count(text.size(), 2, 4) == 2);
  const std::int32_t P = ld::kPad, I = ld::kIgnore;
  const ld::Batch first = ld::lm_sequential_batch(text, 2, 4, 0);
  CHECK(first.tokens == std::vector<std::int32_t>{'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'});
  CHECK(first.targets == std::vector<std::int32_t>{'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'});
  const ld::Batch last = ld::lm_sequential_batch(text, 2, 4, 1);
  CHECK(last.tokens == std::vector<std::int32_t>{'i', P, P, P, P, P, P, P});
  CHECK(last.targets == std::vector<std::int32_t>{'j', I, I, I, I, I, I, I});
  CHECK_THROWS_WITH_AS(ld::lm_sequential_batch(text, 2, 4, 2),
                       doctest::Contains("lm_sequential_batch index 2 is outside [0, 2)"),
                       loralab::Error);
  CHECK_THROWS_AS(ld::lm_sequential_batch("a", 1, 4, 0), loralab::Error);

  // A longer text: the targets over all batches are text[1..] in order, each exactly once.
  const std::string long_text = all_bytes_text(1000);
  for (const auto& [B, L] : {std::pair<std::int64_t, std::int64_t>{4, 32}, {3, 7}, {1, 999}}) {
    std::string predicted;
    const std::int64_t count = ld::lm_sequential_batch_count(long_text.size(), B, L);
    for (std::int64_t k = 0; k < count; ++k) {
      const ld::Batch b = ld::lm_sequential_batch(long_text, B, L, k);
      for (std::size_t i = 0; i < b.targets.size(); ++i) {
        if (b.targets[i] == ld::kIgnore) continue;
        CHECK(b.targets[i] == (b.tokens[i] + 1) % 256);  // next byte of all_bytes_text
        predicted.push_back(static_cast<char>(b.targets[i]));
      }
    }
    CHECK(predicted == long_text.substr(1));
  }
}

TEST_CASE("fortunes: the installed Debian package, when present") {
  const fs::path dir = ld::kDefaultFortuneDir;
  if (!fs::is_directory(dir)) {
    MESSAGE("NOT CHECKED: " << dir.string()
                            << " does not exist (install the Debian package `fortunes` to run "
                               "the real-data part of this test)");
    return;
  }
  const ld::FortuneCorpus corpus = ld::load_fortunes();
  CHECK(corpus.by_category.size() >= 10);
  CHECK(corpus.fortune_count() >= 5000);
  std::ostringstream sizes;
  for (const std::string& name : ld::default_held_out_categories()) {
    CAPTURE(name);
    REQUIRE(corpus.by_category.count(name) == 1);
    std::size_t bytes = 0;
    for (const std::string& f : corpus.by_category.at(name)) bytes += f.size() + 3;
    sizes << " " << name << " (" << corpus.by_category.at(name).size() << " fortunes, " << bytes
          << " B)";
  }
  const std::vector<std::string> held_out = ld::default_held_out_categories();
  const ld::DomainSplit split = ld::domain_split(corpus, held_out, 0.1, kSeed);
  CHECK(split.pretrain.train.size() > 4 * split.finetune.train.size());
  CHECK(split.finetune.valid.size() > 10000);
  MESSAGE(corpus.by_category.size()
          << " categories; held out:" << sizes.str() << "; pretrain train/valid "
          << split.pretrain.train.size() << "/" << split.pretrain.valid.size() << " B, finetune "
          << split.finetune.train.size() << "/" << split.finetune.valid.size() << " B");
  const ld::Batch batch = ld::lm_batch(split.finetune.train, 8, 128, kSeed, 0);
  CHECK(batch.count_targets() == 8 * 128);
}
