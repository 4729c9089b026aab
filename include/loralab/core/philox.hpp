/// \file
/// \brief Counter-based Philox 4x32-10 RNG, usable from host and device code.
///
/// Every random value loralab draws (initial factors, LoRA-SP freeze masks, dropout masks) is a
/// pure function of (seed, stream, counter), so the CPU and CUDA backends produce bit-identical
/// masks and a re-run reproduces them without storing anything. Verified against Random123's
/// published known-answer vectors (tests/core/philox_test.cpp).
#pragma once

#include <array>
#include <cstdint>

#include "loralab/core/config.hpp"

namespace loralab {

/// \ingroup core
/// \brief Four 32-bit words: the Philox counter block and its output block.
struct Philox4x32Block {
  std::uint32_t v[4];  ///< the words, v[0] first as in Random123
};

namespace detail {
LORALAB_HOST_DEVICE void mulhilo32(std::uint32_t a, std::uint32_t b, std::uint32_t& hi,
                                   std::uint32_t& lo) {
  const std::uint64_t product = static_cast<std::uint64_t>(a) * b;
  hi = static_cast<std::uint32_t>(product >> 32);
  lo = static_cast<std::uint32_t>(product);
}
}  // namespace detail

/// \ingroup core
/// \brief The Philox 4x32 bijection with 10 rounds (Salmon et al., SC'11), as in Random123.
/// \param ctr the 128-bit counter; \param key0, key1 the 64-bit key.
LORALAB_HOST_DEVICE Philox4x32Block philox4x32_10(Philox4x32Block ctr, std::uint32_t key0,
                                                  std::uint32_t key1) {
  constexpr std::uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {  // Random123 bumps the key before every round but the first
      key0 += kWeyl0;
      key1 += kWeyl1;
    }
    std::uint32_t hi0, lo0, hi1, lo1;
    detail::mulhilo32(kMul0, ctr.v[0], hi0, lo0);
    detail::mulhilo32(kMul1, ctr.v[2], hi1, lo1);
    ctr = Philox4x32Block{{hi1 ^ ctr.v[1] ^ key0, lo1, hi0 ^ ctr.v[3] ^ key1, lo0}};
  }
  return ctr;
}

/// \ingroup core
/// \brief What a random stream is used for; the top byte of a stream id.
enum class RngPurpose : std::uint8_t {
  init_a = 1,          ///< initial values of A
  init_b = 2,          ///< initial values of B (non-zero inits only)
  freeze_mask_a = 3,   ///< LoRA-SP mask of A
  freeze_mask_b = 4,   ///< LoRA-SP mask of B
  input_dropout = 5,   ///< dropout on the adapter input, keyed by step
  share_index = 6,     ///< MoS index tables (permutations of pool shards)
  share_pool = 7,      ///< initial values of shared pools
  model_dropout = 8,   ///< the dropout framework's masks (dropout/masks.hpp)
  layer_sampling = 9,  ///< LISA / OwLore block draws, keyed by the sampling period
  galore_sketch = 10,  ///< GaLore's randomized range finder, keyed by tensor and refresh
  rosa_subspace = 11,  ///< ROSA's index draws, keyed by module and re-factorization
  user = 255,          ///< free for user code and tests
};

/// \ingroup core
/// \brief Packs (purpose, module, index) into the 64-bit stream id: purpose in bits 56..63,
/// module in bits 32..55 (so at most 2^24 modules), index (step, resample count, ...) in 0..31.
LORALAB_HOST_DEVICE std::uint64_t make_stream(RngPurpose purpose, std::uint32_t module,
                                              std::uint32_t index) {
  return (static_cast<std::uint64_t>(purpose) << 56) |
         (static_cast<std::uint64_t>(module & 0xFFFFFFu) << 32) | index;
}

/// \ingroup core
/// \brief Block `block` of stream `stream` under `seed`: key = seed, counter = (block, stream).
LORALAB_HOST_DEVICE Philox4x32Block philox_block(std::uint64_t seed, std::uint64_t stream,
                                                 std::uint64_t block) {
  return philox4x32_10(
      Philox4x32Block{{static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32),
                       static_cast<std::uint32_t>(stream),
                       static_cast<std::uint32_t>(stream >> 32)}},
      static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
}

/// \ingroup core
/// \brief The i-th 32-bit word of a stream: word i%4 of block i/4. Element i of any mask uses it.
LORALAB_HOST_DEVICE std::uint32_t philox_word(std::uint64_t seed, std::uint64_t stream,
                                              std::uint64_t i) {
  return philox_block(seed, stream, i >> 2).v[i & 3];
}

/// \ingroup core
/// \brief Maps 32 random bits to a float in [0, 1) with 24 bits of resolution (exact on any IEEE
/// platform, so host and device agree bit for bit).
LORALAB_HOST_DEVICE float uniform01_float(std::uint32_t bits) {
  return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

/// \ingroup core
/// \brief Maps 64 random bits to a double in [0, 1) with 53 bits of resolution.
LORALAB_HOST_DEVICE double uniform01_double(std::uint32_t hi, std::uint32_t lo) {
  const std::uint64_t bits = (static_cast<std::uint64_t>(hi) << 32) | lo;
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

/// \ingroup core
/// \brief Integer threshold for "drop with probability p": an element is dropped when its word is
/// below the threshold. Comparing integers keeps the decision identical on every backend.
/// \pre 0 <= p < 1.
LORALAB_HOST_DEVICE std::uint32_t drop_threshold(double p) {
  const double scaled = p * 4294967296.0;
  return scaled >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(scaled);
}

}  // namespace loralab
