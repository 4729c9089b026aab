/// \file
/// \brief The byte-level tokenizer: 256 byte symbols plus four special tokens.
///
/// Byte b (0..255) is token b, so any byte string, including NUL and invalid UTF-8, round-trips
/// exactly and the tokenizer needs no vocabulary file. Specials follow the bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "loralab/core/error.hpp"

namespace loralab::data {

/// \ingroup data
/// \brief Beginning of sequence: the first token of every synthetic example.
inline constexpr std::int32_t kBos = 256;
/// \ingroup data
/// \brief End of sequence: follows the answer; the model learns to emit it to stop.
inline constexpr std::int32_t kEos = 257;
/// \ingroup data
/// \brief Separator, free for callers that join segments (the synthetic tasks do not use it).
inline constexpr std::int32_t kSep = 258;
/// \ingroup data
/// \brief Padding after the end of a row; never a target.
inline constexpr std::int32_t kPad = 259;
/// \ingroup data
/// \brief Number of token ids: 256 bytes + 4 specials (the model's embedding and output size).
inline constexpr std::int32_t kVocabSize = 260;

/// \ingroup data
/// \brief True for ids 0..255 (a byte), false for specials and out-of-range ids.
constexpr bool is_byte_token(std::int32_t id) {
  return id >= 0 && id < 256;
}

/// \ingroup data
/// \brief True for kBos, kEos, kSep and kPad.
constexpr bool is_special_token(std::int32_t id) {
  return id >= 256 && id < kVocabSize;
}

/// \ingroup data
/// \brief The token ids of `text`: each byte as its unsigned value 0..255.
/// \param text any bytes (not necessarily UTF-8).
inline std::vector<std::int32_t> encode(std::string_view text) {
  std::vector<std::int32_t> ids(text.size());
  // Through unsigned char: a plain char is signed on x86, and 0xFF must become 255, not -1.
  for (std::size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

namespace detail {
inline std::string_view special_name(std::int32_t id) {
  switch (id) {
    case kBos:
      return "<bos>";
    case kEos:
      return "<eos>";
    case kSep:
      return "<sep>";
    case kPad:
      return "<pad>";
    default:
      return {};
  }
}

inline void check_token_id(std::int32_t id, std::size_t position) {
  LORALAB_CHECK(id >= 0 && id < kVocabSize, "[loralab.data] token id ", id, " at position ",
                position, " is outside the vocabulary [0, ", kVocabSize, ")");
}
}  // namespace detail

/// \ingroup data
/// \brief The bytes of `ids`, with special tokens rendered as `<bos>`, `<eos>`, `<sep>`, `<pad>`
/// or left out.
/// \param ids token ids, each in [0, kVocabSize).
/// \param skip_specials leave special tokens out instead of rendering their names.
/// \throws loralab::Error `[loralab.data]` naming the first id outside the vocabulary and its
/// position.
inline std::string decode(std::span<const std::int32_t> ids, bool skip_specials = false) {
  std::string text;
  text.reserve(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::int32_t id = ids[i];
    detail::check_token_id(id, i);
    if (is_byte_token(id)) {
      text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
    } else if (!skip_specials) {
      text += detail::special_name(id);
    }
  }
  return text;
}

/// \ingroup data
/// \brief A readable name for one token: the character for printable ASCII (0x20..0x7E), `<0xHH>`
/// for other bytes (as SentencePiece's byte tokens), `<bos>` etc. for specials.
/// \param id a token id in [0, kVocabSize).
/// \throws loralab::Error `[loralab.data]` when `id` is outside the vocabulary.
inline std::string token_name(std::int32_t id) {
  LORALAB_CHECK(id >= 0 && id < kVocabSize, "[loralab.data] token id ", id,
                " is outside the vocabulary [0, ", kVocabSize, ")");
  if (is_special_token(id)) return std::string(detail::special_name(id));
  if (id >= 0x20 && id <= 0x7E) return std::string(1, static_cast<char>(id));
  constexpr char kHex[] = "0123456789ABCDEF";
  return std::string{'<', '0', 'x', kHex[id >> 4], kHex[id & 15], '>'};
}

}  // namespace loralab::data
