/// \file
/// \brief The run-time configuration of the LoRA dropout framework (methods.md 4.3 to 4.6):
/// dropping sites (position x pattern x rate x layer range), the compensation between passes,
/// and the HiddenKey presets. Read by both decoders (model::Gpt, cuda::Gpt). No Eigen.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/dropout/masks.hpp"

namespace loralab::dropout {

/// \ingroup dropout
/// \brief The blocks a site acts in.
struct LayerRange {
  /// \brief Which blocks.
  enum class Kind {
    all,          ///< every block
    latter_half,  ///< blocks floor(L/2) .. L-1 (HiddenKey's choice for decoders)
    list,         ///< the blocks in `layers`
  };
  Kind kind = Kind::all;    ///< which blocks
  std::vector<int> layers;  ///< Kind::list: the block indices
  /// \brief True when block l of L is in the range.
  bool contains(int l, int L) const {
    switch (kind) {
      case Kind::all:
        return true;
      case Kind::latter_half:
        return l >= L / 2;
      default:
        return std::find(layers.begin(), layers.end(), l) != layers.end();
    }
  }
};

/// \ingroup dropout
/// \brief One dropping site: where, with which pattern, at which rate, in which blocks.
struct Site {
  Position position = Position::ffn_hidden;  ///< what is dropped
  Pattern pattern = Pattern::element;        ///< how entries are grouped
  double rate = 0.1;                         ///< p in [0, 1)
  LayerRange layers;                         ///< blocks (block-level positions only)
  /// attention_weights only: DropAttention's stop-gradient on the normalizer (the paper's
  /// DropAttention); false gives DropKey's gradient with DropAttention's forward.
  bool stop_gradient = true;
};

/// \ingroup dropout
/// \brief Compensation for the train/inference gap (methods.md 4.3, dimension 3).
enum class Compensation {
  none,          ///< one pass; rescaling only
  symmetric_kl,  ///< two stochastic passes, 0.5 (KL(P1||P2) + KL(P2||P1)) (R-Drop, HiddenKey)
  js,            ///< one stochastic pass and the deterministic pass, JS(P1, P) (HiddenCut)
};

/// \ingroup dropout
/// \brief The framework's configuration (GptOptions::dropout). Empty = no dropout anywhere
/// outside the adapters' own InputDropout policy.
struct Config {
  std::vector<Site> sites;                         ///< combined; at most one per position
  Compensation compensation = Compensation::none;  ///< second pass and consistency loss
  double lambda = 1.0;                             ///< weight of the consistency loss
  bool backprop_both = false;  ///< symmetric_kl: back-propagate both branches (R-Drop's
                               ///< original) instead of one (HiddenKey's, the default)

  /// \brief The site of a position, or null.
  const Site* site(Position p) const {
    for (const Site& s : sites)
      if (s.position == p) return &s;
    return nullptr;
  }
  /// \brief The rate of position p in block l of L (0 when it does not act there).
  double rate(Position p, int l, int L) const {
    const Site* s = site(p);
    return s && s->layers.contains(l, L) ? s->rate : 0.0;
  }
  /// \brief True when a training pass is two passes.
  bool two_pass() const { return compensation != Compensation::none; }
};

/// \ingroup dropout
/// \brief HiddenKey (methods.md 4.5): column DropKey on the logits (p_k) and element dropout on
/// the FFN hidden (p_h) in the latter half of the blocks, plus bidirectional KL (lambda).
inline Config hiddenkey(double p_k = 0.1, double p_h = 0.1, double lambda = 1.0) {
  LayerRange latter{LayerRange::Kind::latter_half, {}};
  Config c;
  c.sites.push_back({Position::attention_logits, Pattern::column, p_k, latter});
  c.sites.push_back({Position::ffn_hidden, Pattern::element, p_h, latter});
  c.compensation = Compensation::symmetric_kl;
  c.lambda = lambda;
  return c;
}

/// \ingroup dropout
/// \brief HiddenKey- : HiddenKey's two sites, one pass, no KL.
inline Config hiddenkey_minus(double p_k = 0.1, double p_h = 0.1) {
  Config c = hiddenkey(p_k, p_h);
  c.compensation = Compensation::none;
  return c;
}

/// \ingroup dropout
/// \brief Name of a position, as in docs and errors.
inline const char* position_name(Position p) {
  constexpr const char* names[] = {"adapter_input",     "adapter_weights", "attention_logits",
                                   "attention_weights", "ffn_hidden",      "ffn_output",
                                   "embeddings",        "head_input"};
  return names[static_cast<int>(p)];
}

/// \ingroup dropout
/// \brief Checks a configuration for a model of `layers` blocks. \throws Error naming the site:
/// a rate outside [0, 1), two sites on one position, DropKey and DropAttention together, a layer
/// outside the model, a pattern a position does not support, or a negative lambda.
inline void validate(const Config& c, int layers) {
  for (std::size_t i = 0; i < c.sites.size(); ++i) {
    const Site& s = c.sites[i];
    const char* name = position_name(s.position);
    LORALAB_CHECK(s.rate >= 0.0 && s.rate < 1.0, "[loralab.config] dropout site ", name, ": rate ",
                  s.rate, " outside [0, 1)");
    for (std::size_t j = 0; j < i; ++j)
      LORALAB_CHECK(c.sites[j].position != s.position, "[loralab.config] dropout site ", name,
                    " given twice");
    LORALAB_CHECK(s.position != Position::adapter_weights || s.pattern != Pattern::span,
                  "[loralab.config] dropout site adapter_weights: patterns element (entries of "
                  "A and B) and column (input columns of A, output rows of B) only");
    if (s.layers.kind == LayerRange::Kind::list)
      for (int l : s.layers.layers)
        LORALAB_CHECK(l >= 0 && l < layers, "[loralab.config] dropout site ", name, ": layer ", l,
                      " outside [0, ", layers, ")");
  }
  LORALAB_CHECK(!(c.site(Position::attention_logits) && c.site(Position::attention_weights)),
                "[loralab.config] dropout sites attention_logits (DropKey) and attention_weights "
                "(DropAttention) do not combine: they are two forms of one drop");
  LORALAB_CHECK(c.lambda >= 0.0, "[loralab.config] consistency weight lambda=", c.lambda,
                " must be >= 0");
  LORALAB_CHECK(!c.backprop_both || c.compensation == Compensation::symmetric_kl,
                "[loralab.config] backprop_both applies to the symmetric KL only");
  LORALAB_CHECK(!c.backprop_both || !c.site(Position::adapter_weights),
                "[loralab.config] backprop_both does not combine with the adapter_weights site "
                "(DropConnect masks one backward's factor gradients)");
}

}  // namespace loralab::dropout
