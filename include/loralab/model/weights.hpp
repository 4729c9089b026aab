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
#include "loralab/model/modules.hpp"

namespace loralab::model {

/// \ingroup model
/// \brief Flat storage of every base weight of a GptConfig, with views by role.
template <class T>
class GptWeights {
 public:
  /// \brief Lays out the tensors of `cfg` (validated) and zero-fills them.
  explicit GptWeights(const GptConfig& cfg) : cfg_(cfg) {
    cfg.validate();
    slots_ = gpt_layout(cfg);
    total_ = slots_.empty() ? 0 : slots_.back().offset + std::size_t(slots_.back().size());
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
