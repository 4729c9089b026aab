/// \file
/// \brief The base weights of the GPT-2-style decoder in one flat buffer with named views
/// (llm.c's malloc_and_point_parameters), GPT-2 initialization, and the module names PEFT uses.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/core/philox.hpp"
#include "loralab/core/random_fill.hpp"
#include "loralab/cpu/eigen_types.hpp"
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
/// \brief Flat storage of every base weight of a GptConfig, with views by role.
template <class T>
class GptWeights {
 public:
  /// \brief Lays out the tensors of `cfg` (validated) and zero-fills them.
  explicit GptWeights(const GptConfig& cfg) : cfg_(cfg) {
    cfg.validate();
    const std::int64_t d = cfg.d_model, ff = cfg.ff();
    auto add = [&](std::string name, std::int64_t rows, std::int64_t cols) {
      slots_.push_back({std::move(name), total_, rows, cols});
      total_ += static_cast<std::size_t>(rows * cols);
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
    data_.assign(total_, T(0));
  }

  /// \brief GPT-2 initialization from Philox: linear and embedding weights N(0, 0.02^2), the two
  /// residual projections N(0, (0.02/sqrt(2L))^2), biases 0, LayerNorm gamma 1 and beta 0.
  void init_gpt2(std::uint64_t seed) {
    for (std::size_t k = 0; k < slots_.size(); ++k) {
      const TensorSlot& s = slots_[k];
      T* p = data_.data() + s.offset;
      const bool is_gamma = s.name.find("ln_") != std::string::npos && s.name.ends_with(".weight");
      if (s.rows == 1) {  // biases and LayerNorm parameters
        std::fill(p, p + s.size(), is_gamma ? T(1) : T(0));
        continue;
      }
      const bool residual = s.name.ends_with("c_proj.weight");
      const double stddev = residual ? 0.02 / std::sqrt(2.0 * cfg_.layers) : 0.02;
      const std::uint64_t stream =
          make_stream(RngPurpose::user, static_cast<std::uint32_t>(k), 0x6770u);
      for (std::int64_t i = 0; i < s.size(); ++i) p[i] = normal_element<T>(seed, stream, i, stddev);
    }
  }

  /// \brief The configuration.
  const GptConfig& config() const { return cfg_; }
  /// \brief Every tensor in storage order.
  const std::vector<TensorSlot>& slots() const { return slots_; }
  /// \brief The whole flat buffer.
  std::span<T> flat() { return data_; }
  /// \brief The whole flat buffer.
  std::span<const T> flat() const { return data_; }

  /// \brief Token embedding [V x d] (also the tied head).
  cpu::MatrixMap<T> wte() { return view(0); }
  /// \brief Position embedding [context x d].
  cpu::MatrixMap<T> wpe() { return view(1); }
  /// \brief LayerNorm 1 gamma [d] of block l.
  std::span<T> ln1_gamma(int l) { return vec(block(l) + 0); }
  /// \brief LayerNorm 1 beta [d].
  std::span<T> ln1_beta(int l) { return vec(block(l) + 1); }
  /// \brief LayerNorm 2 gamma [d].
  std::span<T> ln2_gamma(int l) { return vec(block(l) + 6); }
  /// \brief LayerNorm 2 beta [d].
  std::span<T> ln2_beta(int l) { return vec(block(l) + 7); }
  /// \brief Weight [out x in] of module m in block l.
  cpu::MatrixMap<T> weight(int l, Module m) {
    return view(block(l) + 2 + 2 * static_cast<int>(m) + (m >= Module::fc ? 2 : 0));
  }
  /// \brief Bias [out] of module m in block l.
  std::span<T> bias(int l, Module m) {
    return vec(block(l) + 3 + 2 * static_cast<int>(m) + (m >= Module::fc ? 2 : 0));
  }
  /// \brief Final LayerNorm gamma [d].
  std::span<T> lnf_gamma() { return vec(slots_.size() - 2); }
  /// \brief Final LayerNorm beta [d].
  std::span<T> lnf_beta() { return vec(slots_.size() - 1); }

 private:
  std::size_t block(int l) const { return 2 + std::size_t(l) * 12; }
  cpu::MatrixMap<T> view(std::size_t k) {
    const TensorSlot& s = slots_[k];
    return {data_.data() + s.offset, s.rows, s.cols};
  }
  std::span<T> vec(std::size_t k) {
    const TensorSlot& s = slots_[k];
    return {data_.data() + s.offset, static_cast<std::size_t>(s.size())};
  }

  GptConfig cfg_;
  std::vector<TensorSlot> slots_;
  std::size_t total_ = 0;
  std::vector<T> data_;
};

}  // namespace loralab::model
