/// \file
/// \brief The decoder's module names (HF GPT-2 / PEFT), target sets, and the layout of its flat
/// weight buffer (one source of truth for the CPU's GptWeights and the device model). No Eigen.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/model/config.hpp"

namespace loralab::model {

/// \ingroup model
/// \brief The four linears of a block, named as in HF GPT-2 (and PEFT's target_modules).
enum class Module : int {
  qkv = 0,        ///< attn.c_attn: fused q, k, v [3d x d]
  attn_proj = 1,  ///< attn.c_proj [d x d]
  fc = 2,         ///< mlp.c_fc [ff x d]
  mlp_proj = 3,   ///< mlp.c_proj [d x ff]
};
/// \ingroup model
/// \brief Number of linear modules per block.
inline constexpr int kModulesPerBlock = 4;

/// \ingroup model
/// \brief HF GPT-2 name of a module inside block h.{l}: "attn.c_attn", "attn.c_proj", "mlp.c_fc",
/// "mlp.c_proj".
inline const char* module_name(Module m) {
  constexpr const char* names[] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
  return names[static_cast<int>(m)];
}

/// \ingroup model
/// \brief Which modules carry an adapter (PEFT's target_modules), parsed from a comma list of
/// "c_attn", "attn.c_proj", "c_fc", "mlp.c_proj" (short forms "qkv", "attn_proj", "fc",
/// "mlp_proj") or "all".
struct ModuleSet {
  bool on[kModulesPerBlock] = {true, true, true, true};  ///< per Module
  /// \brief True when module m is targeted.
  bool contains(Module m) const { return on[static_cast<int>(m)]; }
  /// \brief Parses a comma-separated list. \throws Error naming an unknown module.
  static ModuleSet parse(std::string_view list) {
    ModuleSet s;
    for (bool& b : s.on) b = false;
    std::size_t pos = 0;
    while (pos <= list.size()) {
      const std::size_t comma = list.find(',', pos);
      const std::string_view item =
          list.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos);
      if (item == "all") {
        for (bool& b : s.on) b = true;
      } else if (item == "c_attn" || item == "attn.c_attn" || item == "qkv") {
        s.on[0] = true;
      } else if (item == "attn.c_proj" || item == "attn_proj") {
        s.on[1] = true;
      } else if (item == "c_fc" || item == "mlp.c_fc" || item == "fc") {
        s.on[2] = true;
      } else if (item == "mlp.c_proj" || item == "mlp_proj") {
        s.on[3] = true;
      } else {
        LORALAB_FAIL("[loralab.config] unknown target module '", item,
                     "'; valid: c_attn, attn.c_proj, c_fc, mlp.c_proj, all");
      }
      if (comma == std::string_view::npos) break;
      pos = comma + 1;
    }
    return s;
  }
};

/// \ingroup model
/// \brief One named tensor of the flat buffer: HF GPT-2 name, offset, and row-major shape
/// (linear weights are [out x in], the nn.Linear layout; HF's Conv1D stores the transpose).
struct TensorSlot {
  std::string name;        ///< e.g. "h.0.attn.c_attn.weight"
  std::size_t offset = 0;  ///< into the flat buffer
  std::int64_t rows = 0;   ///< rows (1 for vectors)
  std::int64_t cols = 0;   ///< columns
  /// \brief Number of entries.
  std::int64_t size() const { return rows * cols; }
};

/// \ingroup model
/// \brief The tensors of a GptConfig in storage order (llm.c's parameter layout, HF names):
/// wte, wpe, then per block ln_1 (weight, bias), attn.c_attn (weight, bias), attn.c_proj,
/// ln_2, mlp.c_fc, mlp.c_proj, then ln_f. Linear weights are [out x in].
inline std::vector<TensorSlot> gpt_layout(const GptConfig& cfg) {
  std::vector<TensorSlot> slots;
  std::size_t total = 0;
  const std::int64_t d = cfg.d_model, ff = cfg.ff();
  auto add = [&](std::string name, std::int64_t rows, std::int64_t cols) {
    slots.push_back({std::move(name), total, rows, cols});
    total += static_cast<std::size_t>(rows * cols);
  };
  add("wte.weight", cfg.vocab_size, d);
  add("wpe.weight", cfg.context, d);
  for (int l = 0; l < cfg.layers; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    add(h + "ln_1.weight", 1, d);
    add(h + "ln_1.bias", 1, d);
    add(h + "attn.c_attn.weight", 3 * d, d);
    add(h + "attn.c_attn.bias", 1, 3 * d);
    add(h + "attn.c_proj.weight", d, d);
    add(h + "attn.c_proj.bias", 1, d);
    add(h + "ln_2.weight", 1, d);
    add(h + "ln_2.bias", 1, d);
    add(h + "mlp.c_fc.weight", ff, d);
    add(h + "mlp.c_fc.bias", 1, ff);
    add(h + "mlp.c_proj.weight", d, ff);
    add(h + "mlp.c_proj.bias", 1, d);
  }
  add("ln_f.weight", 1, d);
  add("ln_f.bias", 1, d);
  return slots;
}

/// \ingroup model
/// \brief Index into gpt_layout() of tensor k (0..11, the order above) of block l.
inline std::size_t block_slot(int l, int k) {
  return 2 + std::size_t(l) * 12 + std::size_t(k);
}

/// \ingroup model
/// \brief Index into gpt_layout() of module m's weight in block l (its bias follows it).
inline std::size_t weight_slot(int l, Module m) {
  constexpr int k[] = {2, 4, 8, 10};
  return block_slot(l, k[static_cast<int>(m)]);
}

}  // namespace loralab::model
