// The byte-level tokenizer: every byte round-trips, specials render or vanish, bad ids throw.
#include "loralab/data/tokenizer.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ld = loralab::data;

TEST_CASE("tokenizer: vocabulary layout") {
  CHECK(ld::kBos == 256);
  CHECK(ld::kEos == 257);
  CHECK(ld::kSep == 258);
  CHECK(ld::kPad == 259);
  CHECK(ld::kVocabSize == 260);
  CHECK(ld::is_byte_token(0));
  CHECK(ld::is_byte_token(255));
  CHECK_FALSE(ld::is_byte_token(ld::kBos));
  CHECK(ld::is_special_token(ld::kPad));
  CHECK_FALSE(ld::is_special_token(ld::kVocabSize));
  CHECK_FALSE(ld::is_special_token(-1));
}

TEST_CASE("tokenizer: every byte, NUL and 0xFF included, round-trips") {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  all += std::string("\0\xFF\0", 3);  // embedded NULs need the explicit length
  const std::vector<std::int32_t> ids = ld::encode(all);
  REQUIRE(ids.size() == all.size());
  for (int b = 0; b < 256; ++b) CHECK(ids[static_cast<std::size_t>(b)] == b);
  CHECK(ids[256] == 0);
  CHECK(ids[257] == 255);  // not -1: bytes are unsigned
  CHECK(ld::decode(ids) == all);
  CHECK(ld::decode(ids, /*skip_specials=*/true) == all);
  CHECK(ld::encode("").empty());
  CHECK(ld::decode(std::vector<std::int32_t>{}).empty());
}

TEST_CASE("tokenizer: specials are rendered by name or skipped") {
  const std::vector<std::int32_t> ids = {ld::kBos, 'h', 'i', ld::kSep, 0x00, ld::kEos, ld::kPad};
  CHECK(ld::decode(ids) == std::string("<bos>hi<sep>\0<eos><pad>", 23));
  CHECK(ld::decode(ids, true) == std::string("hi\0", 3));
}

TEST_CASE("tokenizer: token_name") {
  CHECK(ld::token_name('a') == "a");
  CHECK(ld::token_name(' ') == " ");
  CHECK(ld::token_name('~') == "~");
  CHECK(ld::token_name(0x00) == "<0x00>");
  CHECK(ld::token_name('\n') == "<0x0A>");
  CHECK(ld::token_name(0x7F) == "<0x7F>");
  CHECK(ld::token_name(0xFF) == "<0xFF>");
  CHECK(ld::token_name(ld::kBos) == "<bos>");
  CHECK(ld::token_name(ld::kEos) == "<eos>");
  CHECK(ld::token_name(ld::kSep) == "<sep>");
  CHECK(ld::token_name(ld::kPad) == "<pad>");
  CHECK_THROWS_WITH_AS(ld::token_name(ld::kVocabSize),
                       doctest::Contains("[loralab.data] token id 260 is outside the vocabulary"),
                       loralab::Error);
  CHECK_THROWS_AS(ld::token_name(-1), loralab::Error);
}

TEST_CASE("tokenizer: decode rejects ids outside the vocabulary, naming id and position") {
  const std::vector<std::int32_t> too_big = {'a', 260};
  CHECK_THROWS_WITH_AS(
      ld::decode(too_big),
      doctest::Contains("[loralab.data] token id 260 at position 1 is outside the vocabulary"),
      loralab::Error);
  const std::vector<std::int32_t> negative = {-1};
  CHECK_THROWS_WITH_AS(ld::decode(negative, true), doctest::Contains("token id -1 at position 0"),
                       loralab::Error);
}
