/// \file
/// \brief `train::plan_memory`: training memory by category (weights, gradients, optimizer
/// state, activations) of full fine-tuning, LoRA, LISA, GaLore and OwLore for a transformer
/// shape given as a string, e.g. LLaMA-2-7B's (methods.md 5.7), under each optimizer-state
/// policy. An analytic estimate for planning, with every assumption a field of MemoryAssumptions.
#pragma once

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/optim/galore.hpp"
#include "loralab/optim/optimizer_options.hpp"

namespace loralab::train {

/// \ingroup train
/// \brief The shape of a decoder: blocks, widths, vocabulary, and the MLP kind.
struct TransformerShape {
  std::string name = "custom";  ///< for the report
  int layers = 32;              ///< blocks
  std::int64_t d = 4096;        ///< model width
  std::int64_t ff = 11008;      ///< MLP width
  std::int64_t vocab = 32000;   ///< vocabulary
  bool gated_mlp = true;        ///< LLaMA: gate, up, down (3 matrices); GPT-2: fc, proj (2)
  bool tied_head = false;       ///< GPT-2 ties the head to the embedding
  std::int64_t positions = 0;   ///< learned position embeddings (GPT-2: 1024; LLaMA: RoPE, 0)

  /// \brief Linear-weight entries of one block (attention q, k, v, o plus the MLP).
  std::int64_t block_linear() const { return 4 * d * d + (gated_mlp ? 3 : 2) * d * ff; }
  /// \brief Entries of one block including its two norms (and GPT-2's biases).
  std::int64_t block_params() const {
    return block_linear() + 2 * d + (gated_mlp ? 0 : 2 * d + 4 * d + ff + d);
  }
  /// \brief Embeddings + head + final norm: the always-trainable part of LISA / OwLore.
  std::int64_t outer_params() const {
    return vocab * d * (tied_head ? 1 : 2) + positions * d + (gated_mlp ? d : 2 * d);
  }
  /// \brief Every parameter.
  std::int64_t total_params() const { return layers * block_params() + outer_params(); }
};

/// \ingroup train
/// \brief Parses "llama2-7b", "gpt2" (124M), or "layers=32,d=4096,ff=11008,vocab=32000[,mlp=
/// gated|plain][,head=tied|untied]". \throws Error on an unknown key or preset.
inline TransformerShape parse_shape(std::string_view text) {
  TransformerShape s;
  if (text == "llama2-7b") {
    s.name = "LLaMA-2-7B";
    return s;
  }
  if (text == "gpt2") {
    s = TransformerShape{"GPT-2 124M", 12, 768, 3072, 50257, false, true, 1024};
    return s;
  }
  s.name = std::string(text);
  std::stringstream ss{std::string(text)};
  for (std::string item; std::getline(ss, item, ',');) {
    const auto eq = item.find('=');
    LORALAB_CHECK(eq != std::string::npos, "[loralab.config] shape item '", item,
                  "' is not key=value (keys: layers, d, ff, vocab, mlp, head; presets: "
                  "llama2-7b, gpt2)");
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    if (key == "layers")
      s.layers = std::stoi(value);
    else if (key == "d")
      s.d = std::stoll(value);
    else if (key == "ff")
      s.ff = std::stoll(value);
    else if (key == "vocab")
      s.vocab = std::stoll(value);
    else if (key == "mlp")
      s.gated_mlp = value == "gated";
    else if (key == "head")
      s.tied_head = value == "tied";
    else
      LORALAB_FAIL("[loralab.config] unknown shape key '", key,
                   "' (layers, d, ff, vocab, mlp, head)");
  }
  LORALAB_CHECK(s.layers >= 1 && s.d >= 1 && s.ff >= 1 && s.vocab >= 1, "[loralab.config] shape '",
                text, "' needs positive sizes");
  return s;
}

/// \ingroup train
/// \brief What a method trains and how.
struct MethodPlan {
  std::string name;                       ///< for the report
  bool adapters = false;                  ///< LoRA on every linear instead of dense weights
  int lora_rank = 8;                      ///< LoRA rank
  int gamma = 0;                          ///< sampled blocks per period (0 = every block trains)
  bool galore = false;                    ///< GaLore on the blocks' linear weights
  int galore_rank = 256;                  ///< GaLore rank
  StatePolicy state = StatePolicy::keep;  ///< for sampled methods: state of inactive blocks
};

/// \ingroup train
/// \brief Precision and batch assumptions (defaults: pure bf16 as LMFlow's LISA / OwLore runs,
/// OwLore's batch 16 x 512 tokens, gradient checkpointing and flash attention).
struct MemoryAssumptions {
  int weight_bytes = 2;            ///< bf16 weights
  int gradient_bytes = 2;          ///< bf16 gradients
  int state_bytes = 2;             ///< bf16 optimizer moments and projectors
  std::int64_t tokens = 16 * 512;  ///< tokens per micro-batch
  bool checkpointing = true;       ///< keep only block inputs; recompute one block at a time
  int logit_bytes = 6;             ///< per logit: bf16 value + fp32 softmax / gradient
};

/// \ingroup train
/// \brief Bytes by category.
struct MemoryBreakdown {
  std::int64_t trainable = 0;    ///< entries trained in one period
  std::int64_t weights = 0;      ///< every weight (and adapter)
  std::int64_t gradients = 0;    ///< gradients of what trains now (full-size before projection)
  std::int64_t optimizer = 0;    ///< moments (+ GaLore projectors) held
  std::int64_t activations = 0;  ///< saved for backward
  /// \brief Sum.
  std::int64_t total() const { return weights + gradients + optimizer + activations; }
};

/// \ingroup train
/// \brief The training memory of `method` on `shape` under `a` (methods.md 5.7's accounting).
///
/// GaLore state per linear weight [m x n]: projector r * min(m, n) + moments 2 r max(m, n)
/// (`std` projection); norms, embedding and head use Adam (2 moments). A sampled method holds
/// state for the E+H part plus, under `keep` and `reset`, every block (all are visited in a long
/// run), under `drop` only the gamma active blocks.
inline MemoryBreakdown plan_memory(const TransformerShape& s, const MethodPlan& method,
                                   const MemoryAssumptions& a = {}) {
  MemoryBreakdown b;
  const std::int64_t d = s.d, ff = s.ff, L = s.layers;
  b.weights = s.total_params() * a.weight_bytes;
  // Linear weight shapes of a block, [out x in].
  std::vector<std::pair<std::int64_t, std::int64_t>> linears = {{d, d}, {d, d}, {d, d}, {d, d}};
  if (s.gated_mlp)
    linears.insert(linears.end(), {{ff, d}, {ff, d}, {d, ff}});
  else
    linears.insert(linears.end(), {{ff, d}, {d, ff}});
  if (method.adapters) {
    std::int64_t per_block = 0;
    for (auto [out, in] : linears) per_block += method.lora_rank * (out + in);
    b.trainable = L * per_block;
    b.weights += b.trainable * a.weight_bytes;
    b.gradients = b.trainable * a.gradient_bytes;
    b.optimizer = 2 * b.trainable * a.state_bytes;
  } else {
    const std::int64_t block = s.block_params(), outer = s.outer_params();
    const std::int64_t active = method.gamma > 0 ? method.gamma : L;
    b.trainable = outer + active * block;
    b.gradients = b.trainable * a.gradient_bytes;
    std::int64_t block_state = 2 * block;  // Adam on everything in the block
    if (method.galore) {
      block_state = 2 * (block - s.block_linear());  // norms / biases keep Adam
      for (auto [out, in] : linears) {
        const GaloreShapes g =
            GaloreShapes::make(GaloreConfig{.rank = method.galore_rank}, out, in);
        block_state += g.projector_size + 2 * g.moment_size();
      }
    }
    const std::int64_t held = method.gamma > 0 && method.state != StatePolicy::drop ? L : active;
    b.optimizer = (2 * outer + held * block_state) * a.state_bytes;
  }
  // Activations: per token and block, the saved values (norm outputs, q k v, attention output:
  // 6d; MLP: gate, up, their product and the activation, 4ff, or fc and GELU, 2ff);
  // with checkpointing only the block inputs stay, plus one block's worth during recompute.
  const std::int64_t per_block_values = 6 * d + (s.gated_mlp ? 4 : 2) * ff;
  const std::int64_t block_acts = a.tokens * per_block_values * a.weight_bytes;
  b.activations =
      (a.checkpointing ? L * a.tokens * d * a.weight_bytes + block_acts : L * block_acts) +
      a.tokens * s.vocab * a.logit_bytes;
  return b;
}

}  // namespace loralab::train
