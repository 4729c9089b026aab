/// \file
/// \brief The masks of the LoRA dropout framework (methods.md 4.3): which entry of which tensor a
/// dropping position drops, as a pure function of (seed, position, layer, branch, step, entry),
/// so the CPU, the device and a re-run of a step all draw the same masks. No Eigen.
#pragma once

#include <cmath>
#include <cstdint>

#include "loralab/core/philox.hpp"

namespace loralab::dropout {

/// \ingroup dropout
/// \brief Where noise is injected (methods.md 4.3, dimension 1).
enum class Position : std::uint8_t {
  adapter_input = 0,      ///< the LoRA branch input (PEFT's lora_dropout)
  adapter_weights = 1,    ///< DropConnect on the entries of A and B
  attention_logits = 2,   ///< DropKey: dropped logits get -inf before the softmax
  attention_weights = 3,  ///< DropAttention: weights after the softmax, renormalized
  ffn_hidden = 4,         ///< HiddenCut: the FFN activation after GELU (input of mlp.c_proj)
  ffn_output = 5,         ///< the FFN output before the residual add
  embeddings = 6,         ///< the input embeddings (token + position)
  head_input = 7,         ///< the representation before the LM head (after the final LayerNorm)
};
/// \ingroup dropout
/// \brief Number of positions.
inline constexpr int kPositions = 8;

/// \ingroup dropout
/// \brief Structural pattern (methods.md 4.3, dimension 2). For attention tensors rows are
/// queries and columns keys; for hidden tensors rows are tokens and columns features.
enum class Pattern : std::uint8_t {
  element = 0,  ///< i.i.d. per entry
  column = 1,   ///< attention: a key for every query of one (example, head); hidden: a feature
                ///< for every token of one example
  span = 2,     ///< one contiguous run of round(p * T) keys per (example, head), or of tokens per
                ///< example, at a uniform random start
};

/// \ingroup dropout
/// \brief The identity of a mask: seed, position, layer (or module), branch of a two-pass step,
/// and step. Two branches or two steps never share a stream.
struct MaskKey {
  std::uint64_t seed = 0;                    ///< run seed
  Position position = Position::ffn_hidden;  ///< what is dropped
  std::uint32_t layer = 0;                   ///< block (or module id for adapter positions)
  std::uint32_t branch = 0;                  ///< 0 or 1: the two passes of a KL step
  std::uint64_t step = 0;                    ///< training step (low 32 bits key the stream)
};

/// \ingroup dropout
/// \brief The Philox stream of a mask: purpose model_dropout, module = position (bits 18..23),
/// branch (bits 16..17), layer (bits 0..15); index = the step's low 32 bits.
LORALAB_HOST_DEVICE std::uint64_t mask_stream(const MaskKey& k) {
  const std::uint32_t module =
      (std::uint32_t(k.position) << 18) | ((k.branch & 3u) << 16) | (k.layer & 0xFFFFu);
  return make_stream(RngPurpose::model_dropout, module, static_cast<std::uint32_t>(k.step));
}

/// \ingroup dropout
/// \brief True when counter `i` of the stream is dropped at rate p (integer comparison: the same
/// decision on every backend).
LORALAB_HOST_DEVICE bool dropped_at(const MaskKey& k, std::uint64_t i, double p) {
  return p > 0 && philox_word(k.seed, mask_stream(k), i) < drop_threshold(p);
}

/// \ingroup dropout
/// \brief Length of a span: round(p * len), at most len.
LORALAB_HOST_DEVICE std::int64_t span_length(double p, std::int64_t len) {
  const auto s = static_cast<std::int64_t>(std::floor(p * double(len) + 0.5));
  return s > len ? len : s;
}

/// \ingroup dropout
/// \brief Start of span `unit` (an example, or an (example, head) pair) of length `span` inside
/// [0, len): uniform over the len - span + 1 starts.
LORALAB_HOST_DEVICE std::int64_t span_start(const MaskKey& k, std::uint64_t unit, std::int64_t span,
                                            std::int64_t len) {
  const std::uint64_t starts = std::uint64_t(len - span + 1);
  return std::int64_t(std::uint64_t(philox_word(k.seed, mask_stream(k), unit)) * starts >> 32);
}

/// \ingroup dropout
/// \brief Whether attention entry (example b, head h, query i, key j) of a [B x H x T x T] tensor
/// is dropped. Element: counter ((b*H + h)*T + i)*T + j; column: counter (b*H + h)*T + j (shared
/// by every query); span: keys [start, start + round(p*T)) of unit b*H + h.
LORALAB_HOST_DEVICE bool attention_dropped(const MaskKey& k, Pattern pattern, double p, int heads,
                                           int seq, std::int64_t b, std::int64_t h, std::int64_t i,
                                           std::int64_t j) {
  const std::uint64_t unit = std::uint64_t(b * heads + h);
  switch (pattern) {
    case Pattern::element:
      return dropped_at(k, (unit * seq + std::uint64_t(i)) * seq + std::uint64_t(j), p);
    case Pattern::column:
      return dropped_at(k, unit * seq + std::uint64_t(j), p);
    default: {
      const std::int64_t len = span_length(p, seq);
      if (len == 0) return false;
      const std::int64_t s = span_start(k, unit, len, seq);
      return j >= s && j < s + len;
    }
  }
}

/// \ingroup dropout
/// \brief Whether entry (token row r = b*T + t, feature c) of a hidden tensor [B*T x D] is
/// dropped. Element: counter r*D + c; column: counter b*D + c (shared by the tokens of example
/// b); span: tokens [start, start + round(p*T)) of example b, every feature.
LORALAB_HOST_DEVICE bool hidden_dropped(const MaskKey& k, Pattern pattern, double p, int seq,
                                        std::int64_t features, std::int64_t row, std::int64_t c) {
  const std::int64_t b = row / seq, t = row % seq;
  switch (pattern) {
    case Pattern::element:
      return dropped_at(k, std::uint64_t(row * features + c), p);
    case Pattern::column:
      return dropped_at(k, std::uint64_t(b * features + c), p);
    default: {
      const std::int64_t len = span_length(p, seq);
      if (len == 0) return false;
      const std::int64_t s = span_start(k, std::uint64_t(b), len, seq);
      return t >= s && t < s + len;
    }
  }
}

/// \ingroup dropout
/// \brief The factor a kept hidden entry is multiplied by: 1/(1-p) for element and column
/// (inverted dropout), 1/(1 - round(p*T)/T) for span (the kept share of tokens), 1 at p = 0.
LORALAB_HOST_DEVICE double hidden_keep_scale(Pattern pattern, double p, int seq) {
  if (p <= 0) return 1.0;
  if (pattern == Pattern::span) {
    const std::int64_t len = span_length(p, seq);
    return len >= seq ? 1.0 : double(seq) / double(seq - len);
  }
  return 1.0 / (1.0 - p);
}

}  // namespace loralab::dropout
