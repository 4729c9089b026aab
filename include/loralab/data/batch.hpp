/// \file
/// \brief `Batch`, the token and target layout every data source produces, and fixed-length
/// language-modeling windows cut from a text (random for training, sequential for validation).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/core/philox.hpp"
#include "loralab/data/tokenizer.hpp"

namespace loralab::data {

/// \ingroup data
/// \brief The target of a position that contributes no loss (prompt, padding): PyTorch's
/// `ignore_index` convention.
inline constexpr std::int32_t kIgnore = -1;

/// \ingroup data
/// \brief A batch of token rows and their next-token targets, both [batch x length] row-major.
///
/// `targets[b * length + t]` is the token the model should predict after reading
/// `tokens[b * length + 0 .. t]`, or kIgnore where that position carries no loss.
struct Batch {
  std::vector<std::int32_t> tokens;   ///< [batch x length] token ids in [0, kVocabSize)
  std::vector<std::int32_t> targets;  ///< [batch x length] token ids or kIgnore
  std::int64_t batch = 0;             ///< number of rows
  std::int64_t length = 0;            ///< tokens per row

  /// \brief Number of positions with a target (not kIgnore): the loss's denominator.
  std::int64_t count_targets() const {
    std::int64_t n = 0;
    for (const std::int32_t t : targets) n += (t != kIgnore);
    return n;
  }
};

namespace detail {
// Philox streams of the data layer: the top byte tags the purpose, away from RngPurpose's 1..5 and
// 255, so data draws never share a stream with adapter init, masks or dropout under one seed.
enum class DataStream : std::uint8_t { example = 0xD1, lm_window = 0xD2, fortune_split = 0xD3 };
inline constexpr std::uint64_t kDataStreamLowMask = (std::uint64_t{1} << 56) - 1;

inline std::uint64_t data_stream(DataStream tag, std::uint64_t low56) {
  return (static_cast<std::uint64_t>(tag) << 56) | (low56 & kDataStreamLowMask);
}

inline void check_window_shape(std::int64_t batch, std::int64_t length, const char* what) {
  LORALAB_CHECK(batch >= 1 && length >= 1, "[loralab.data] ", what,
                " needs batch >= 1 and length >= 1, got batch=", batch, ", length=", length);
}
}  // namespace detail

/// \ingroup data
/// \brief `batch` random windows of `length` bytes from `text` for language modeling: row b is
/// `text[s_b .. s_b + length)` and its targets `text[s_b + 1 .. s_b + length]` (every position
/// has one). The start s_b is uniform over [0, text.size() - length - 1], drawn from Philox block
/// b of a stream keyed by `step`, so a run resumed at any step sees the same windows.
/// \param text training text, at least length + 1 bytes.
/// \param batch rows, >= 1. \param length tokens per row, >= 1.
/// \param seed the run's seed. \param step the training step (below 2^56).
/// \throws loralab::Error `[loralab.data]` when the text is shorter than length + 1 or a size is
/// not positive.
inline Batch lm_batch(std::string_view text, std::int64_t batch, std::int64_t length,
                      std::uint64_t seed, std::uint64_t step) {
  detail::check_window_shape(batch, length, "lm_batch");
  LORALAB_CHECK(static_cast<std::uint64_t>(length) < text.size(), "[loralab.data] lm_batch needs ",
                length + 1, " bytes of text for windows of length ", length, ", the text has ",
                text.size());
  LORALAB_CHECK(step <= detail::kDataStreamLowMask, "[loralab.data] lm_batch step ", step,
                " does not fit the 56 bits of its Philox stream");
  const std::uint64_t starts = text.size() - static_cast<std::uint64_t>(length);
  const std::uint64_t stream = detail::data_stream(detail::DataStream::lm_window, step);
  Batch out;
  out.batch = batch;
  out.length = length;
  out.tokens.resize(static_cast<std::size_t>(batch * length));
  out.targets.resize(out.tokens.size());
  for (std::int64_t b = 0; b < batch; ++b) {
    const Philox4x32Block r = philox_block(seed, stream, static_cast<std::uint64_t>(b));
    // 64 bits modulo `starts` favours some starts by at most starts / 2^64: nothing for any text.
    const std::uint64_t s = ((static_cast<std::uint64_t>(r.v[0]) << 32) | r.v[1]) % starts;
    for (std::int64_t t = 0; t < length; ++t) {
      const std::size_t i = static_cast<std::size_t>(b * length + t);
      out.tokens[i] = static_cast<unsigned char>(text[s + static_cast<std::uint64_t>(t)]);
      out.targets[i] = static_cast<unsigned char>(text[s + static_cast<std::uint64_t>(t) + 1]);
    }
  }
  return out;
}

/// \ingroup data
/// \brief Number of batches `lm_sequential_batch` cuts `text_size` bytes into: the text gives
/// ceil((text_size - 1) / length) windows, `batch` per batch.
/// \param text_size bytes of text, >= 2. \param batch rows, >= 1. \param length tokens per row, >=
/// 1.
/// \throws loralab::Error `[loralab.data]` when the text has fewer than 2 bytes or a size is not
/// positive.
inline std::int64_t lm_sequential_batch_count(std::size_t text_size, std::int64_t batch,
                                              std::int64_t length) {
  detail::check_window_shape(batch, length, "lm_sequential_batch");
  LORALAB_CHECK(text_size >= 2,
                "[loralab.data] lm_sequential_batch needs at least 2 bytes of text ",
                "(one input and one target), got ", text_size);
  const auto predicted = static_cast<std::int64_t>(text_size - 1);
  const std::int64_t windows = (predicted + length - 1) / length;
  return (windows + batch - 1) / batch;
}

/// \ingroup data
/// \brief Batch `index` of the text cut in order into non-overlapping windows, for validation:
/// window w = index * batch + b holds `text[w * length ..]` as tokens and the following bytes as
/// targets. Over all `lm_sequential_batch_count` batches every byte but the first is a target
/// exactly once; the tail of the last window and rows past the end are kPad with kIgnore targets.
/// \param text validation text, >= 2 bytes. \param batch rows, >= 1. \param length tokens per
/// row, >= 1. \param index batch number in [0, lm_sequential_batch_count(text.size(), batch,
/// length)).
/// \throws loralab::Error `[loralab.data]` when `index` is out of range, the text has fewer than
/// 2 bytes or a size is not positive.
inline Batch lm_sequential_batch(std::string_view text, std::int64_t batch, std::int64_t length,
                                 std::int64_t index) {
  const std::int64_t count = lm_sequential_batch_count(text.size(), batch, length);
  LORALAB_CHECK(index >= 0 && index < count, "[loralab.data] lm_sequential_batch index ", index,
                " is outside [0, ", count, ") for ", text.size(), " bytes, batch=", batch,
                ", length=", length);
  const auto n = static_cast<std::int64_t>(text.size());
  Batch out;
  out.batch = batch;
  out.length = length;
  out.tokens.assign(static_cast<std::size_t>(batch * length), kPad);
  out.targets.assign(out.tokens.size(), kIgnore);
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t start = (index * batch + b) * length;
    for (std::int64_t t = 0; t < length && start + t + 1 < n; ++t) {
      const std::size_t i = static_cast<std::size_t>(b * length + t);
      out.tokens[i] = static_cast<unsigned char>(text[static_cast<std::size_t>(start + t)]);
      out.targets[i] = static_cast<unsigned char>(text[static_cast<std::size_t>(start + t + 1)]);
    }
  }
  return out;
}

}  // namespace loralab::data
