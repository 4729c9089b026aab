/// \file
/// \brief `model::outlier_ratios`: runs calibration sequences through a frozen decoder and
/// returns OWL's D_l per block (methods.md 5.2) from the base weights' Wanda scores.
///
/// OWL feeds each block the previous block's outputs of the original model, one block at a
/// time, to save memory. An eval-mode forward of the unmodified model computes exactly those
/// inputs, so one forward per calibration batch gives the same statistics.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/core/error.hpp"
#include "loralab/data/batch.hpp"
#include "loralab/model/modules.hpp"
#include "loralab/model/weights.hpp"
#include "loralab/sampling/outliers.hpp"

namespace loralab::model {

/// \ingroup sampling
/// \brief D_l for every block of `model` (anything with forward_logits(tokens, batch, seq, Pass)
/// and linear_input(l, m): a host matrix for the CPU model, or `linear_input_host(l, m)` giving a
/// row-major std::vector<float>) over `calibration` batches; each sequence of a batch is one OWL
/// sample. Scores use `weights`, the base weights (adapters must be unmerged). The four linears of
/// a block (qkv, attention projection, fc, MLP projection) form its score pool.
/// \throws Error on an empty calibration set or M <= 0.
template <class Model, class T>
std::vector<double> outlier_ratios(Model& model, GptWeights<T>& weights,
                                   std::span<const data::Batch> calibration,
                                   double threshold = sampling::kOwloreOutlierThreshold) {
  LORALAB_CHECK(!calibration.empty(), "[loralab.config] outlier_ratios needs calibration batches");
  const GptConfig& cfg = weights.config();
  const int L = cfg.layers;
  std::vector<sampling::ChannelNorms> norms;
  for (int l = 0; l < L; ++l)
    for (int m = 0; m < kModulesPerBlock; ++m)
      norms.emplace_back(weights.weight(l, static_cast<Module>(m)).cols());
  for (const data::Batch& b : calibration) {
    model.forward_logits(b.tokens, int(b.batch), int(b.length), Pass{false, 0});
    for (int l = 0; l < L; ++l)
      for (int m = 0; m < kModulesPerBlock; ++m) {
        sampling::ChannelNorms& acc = norms[std::size_t(l) * kModulesPerBlock + m];
        const std::int64_t in = acc.channels(), seq = b.length;
        auto add = [&](auto rows) {
          for (std::int64_t s = 0; s < b.batch; ++s)
            acc.add_sample(rows.subspan(std::size_t(s * seq * in), std::size_t(seq * in)), seq);
        };
        if constexpr (requires { model.linear_input_host(l, Module::qkv); }) {
          const std::vector<float> host = model.linear_input_host(l, static_cast<Module>(m));
          add(std::span<const float>(host));
        } else {
          const auto& X = model.linear_input(l, static_cast<Module>(m));
          using S = std::remove_cvref_t<decltype(*X.data())>;
          add(std::span<const S>(X.data(), std::size_t(X.size())));
        }
      }
  }
  std::vector<double> ratios(L);
  for (int l = 0; l < L; ++l) {
    std::vector<std::vector<double>> a(kModulesPerBlock);
    std::vector<sampling::ScoredLinear<T>> block;
    for (int m = 0; m < kModulesPerBlock; ++m) {
      a[m] = norms[std::size_t(l) * kModulesPerBlock + m].norms();
      auto W = weights.weight(l, static_cast<Module>(m));
      block.push_back(
          {std::span<const T>(W.data(), std::size_t(W.size())), W.rows(), W.cols(), a[m]});
    }
    ratios[l] = sampling::block_outlier_ratio<T>(block, threshold);
  }
  return ratios;
}

}  // namespace loralab::model
