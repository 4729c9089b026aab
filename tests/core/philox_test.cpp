// Philox 4x32-10 against Random123's published known-answer vectors (kat_vectors), and the
// properties the masks rely on: purity, stream separation, word layout, exact thresholds.
#include "loralab/core/philox.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <set>

#include "loralab/core/error.hpp"

using loralab::Philox4x32Block;

TEST_CASE("philox4x32_10 matches Random123 kat_vectors") {
  struct Kat {
    Philox4x32Block ctr;
    std::uint32_t key0, key1;
    std::uint32_t expected[4];
  };
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{{~0u, ~0u, ~0u, ~0u}}, ~0u, ~0u, {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
       0xa4093822u,
       0x299f31d0u,
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& k : kats) {
    const Philox4x32Block out = loralab::philox4x32_10(k.ctr, k.key0, k.key1);
    for (int w = 0; w < 4; ++w) CHECK(out.v[w] == k.expected[w]);
  }
}

TEST_CASE("philox_block packs seed into the key and (block, stream) into the counter") {
  const std::uint64_t seed = 0x299f31d0a4093822ull;  // key words of the third KAT vector
  const std::uint64_t stream = 0x0370734413198a2eull;
  const std::uint64_t block = 0x85a308d3243f6a88ull;
  const Philox4x32Block out = loralab::philox_block(seed, stream, block);
  CHECK(out.v[0] == 0xd16cfe09u);
  CHECK(out.v[3] == 0x24126ea1u);
  // philox_word(i) is word i%4 of block i/4.
  for (std::uint64_t i = 0; i < 16; ++i)
    CHECK(loralab::philox_word(7, 9, i) == loralab::philox_block(7, 9, i / 4).v[i % 4]);
}

TEST_CASE("streams and seeds give distinct sequences; the same inputs give the same values") {
  std::set<std::uint32_t> seen;
  for (std::uint32_t module = 0; module < 4; ++module)
    for (std::uint32_t index = 0; index < 4; ++index)
      seen.insert(loralab::philox_word(
          1, loralab::make_stream(loralab::RngPurpose::input_dropout, module, index), 0));
  CHECK(seen.size() == 16);
  CHECK(loralab::philox_word(1, 2, 3) == loralab::philox_word(1, 2, 3));
  CHECK(loralab::philox_word(1, 2, 3) != loralab::philox_word(2, 2, 3));
  CHECK(loralab::make_stream(loralab::RngPurpose::init_a, 0xABCDEF, 0x12345678) ==
        0x01ABCDEF12345678ull);
}

TEST_CASE("uniform conversions cover [0, 1) and thresholds are exact") {
  CHECK(loralab::uniform01_float(0) == 0.0f);
  CHECK(loralab::uniform01_float(~0u) < 1.0f);
  CHECK(loralab::uniform01_double(~0u, ~0u) < 1.0);
  CHECK(loralab::drop_threshold(0.0) == 0u);
  CHECK(loralab::drop_threshold(0.5) == 0x80000000u);
  CHECK(loralab::drop_threshold(0.25) == 0x40000000u);
  // Empirical mean of uniform01 over a stream is 1/2 within 5 standard errors.
  const int n = 200000;
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += loralab::uniform01_float(loralab::philox_word(5, 6, i));
  CHECK(std::abs(sum / n - 0.5) < 5 * std::sqrt(1.0 / 12 / n));
}
