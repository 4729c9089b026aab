/// \file
/// \brief `model::AttentionHooks`: the per-logit arrays through which dropout methods change
/// attention; shared by the CPU layer and the device kernels (no Eigen, so nvcc TUs include it).
#pragma once

#include <cstdint>

namespace loralab::model {

/// \ingroup model
/// \brief Optional per-logit arrays that change attention, for dropout methods (methods.md 4.4).
/// Both are row-major [B*H*T x T], row `(b*H + h)*T + i` (batch b, head h, query i), column j
/// (key), i.e. the layout of attention_forward's `probs`. With both null, plain attention. Pass
/// the same hooks to attention_backward as to the forward.
struct AttentionHooks {
  /// DropKey: 0 = logit (i, j) is set to -inf before the softmax (combined with the causal mask);
  /// nonzero = kept. A row whose every allowed key is dropped yields all-zero weights (and a zero
  /// output row), never NaN. Null = keep all.
  const std::uint8_t* logit_keep = nullptr;
  /// Plain dropout on the weights: multiplies them after the softmax (typically 0 or 1/(1-p));
  /// treated as a constant in backward. Null = all ones.
  const float* weight_scale = nullptr;
  /// DropAttention (methods.md 4.4): 0 = weight (i, j) dropped after the softmax, and the kept
  /// weights of the row are divided by their sum S (a row with nothing kept becomes 0). Null =
  /// keep all. Not combined with weight_scale.
  const std::uint8_t* weight_keep = nullptr;
  /// DropAttention's stop-gradient on S (the paper's "DropAttention"); false back-propagates
  /// through S, which gives exactly DropKey's gradient.
  bool normalizer_stop_gradient = true;
};

}  // namespace loralab::model
