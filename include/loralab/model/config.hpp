/// \file
/// \brief `model::GptConfig`: the sizes of a GPT-2-style decoder.
#pragma once

#include <charconv>
#include <cmath>
#include <string>
#include <system_error>

#include "loralab/core/error.hpp"

namespace loralab::model {

/// \ingroup model
/// \brief Sizes of a GPT-2-style decoder (pre-LayerNorm blocks, learned positions, tied head).
/// The defaults are a tiny byte-level model (256 bytes + 4 specials).
struct GptConfig {
  int vocab_size = 260;  ///< V, rows of the token embedding wte [V x d_model]
  int context = 64;      ///< longest sequence, rows of the position embedding wpe
  int layers = 2;        ///< L, the number of transformer blocks
  int heads = 4;         ///< H, attention heads per block
  int d_model = 64;      ///< d, the residual width
  int d_ff = 0;          ///< hidden width of the MLP; 0 = 4 * d_model (use ff())
  double ln_eps = 1e-5;  ///< LayerNorm epsilon (GPT-2's value)

  /// \brief The MLP hidden width: d_ff, or 4 * d_model when d_ff is 0.
  int ff() const { return d_ff > 0 ? d_ff : 4 * d_model; }

  /// \brief The width of one head, d_model / heads.
  int head_dim() const { return heads > 0 ? d_model / heads : 0; }

  /// \brief Throws `[loralab.config]` Error naming the value when a size is not positive,
  /// d_ff is negative, d_model is not a multiple of heads, or ln_eps is not finite and positive.
  void validate() const {
    LORALAB_CHECK(vocab_size > 0, "[loralab.config] GptConfig: vocab_size=", vocab_size,
                  " must be > 0");
    LORALAB_CHECK(context > 0, "[loralab.config] GptConfig: context=", context, " must be > 0");
    LORALAB_CHECK(layers > 0, "[loralab.config] GptConfig: layers=", layers, " must be > 0");
    LORALAB_CHECK(heads > 0, "[loralab.config] GptConfig: heads=", heads, " must be > 0");
    LORALAB_CHECK(d_model > 0, "[loralab.config] GptConfig: d_model=", d_model, " must be > 0");
    LORALAB_CHECK(d_ff >= 0, "[loralab.config] GptConfig: d_ff=", d_ff,
                  " must be >= 0 (0 = 4 * d_model)");
    LORALAB_CHECK(d_model % heads == 0, "[loralab.config] GptConfig: d_model=", d_model,
                  " is not divisible by heads=", heads);
    LORALAB_CHECK(std::isfinite(ln_eps) && ln_eps > 0,
                  "[loralab.config] GptConfig: ln_eps=", ln_eps, " must be finite and > 0");
  }

  /// \brief A stable one-line `key=value` form, e.g. `vocab_size=260 context=64 layers=2 heads=4
  /// d_model=64 d_ff=256 ln_eps=1e-05`. d_ff is printed resolved (ff()), so two configs that
  /// build the same model print the same; ln_eps is the shortest round-trip form (std::to_chars),
  /// independent of locale. Meant for hashing how a checkpoint was made: do not reorder keys.
  std::string to_string() const {
    char eps[32];
    const auto res = std::to_chars(eps, eps + sizeof eps, ln_eps);
    const std::string eps_text =
        res.ec == std::errc() ? std::string(eps, res.ptr) : std::string("?");
    return "vocab_size=" + std::to_string(vocab_size) + " context=" + std::to_string(context) +
           " layers=" + std::to_string(layers) + " heads=" + std::to_string(heads) +
           " d_model=" + std::to_string(d_model) + " d_ff=" + std::to_string(ff()) +
           " ln_eps=" + eps_text;
  }
};

}  // namespace loralab::model
