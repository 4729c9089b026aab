/// \file
/// \brief Token + learned position embedding (GPT-2's wte and wpe): forward and backward.
#pragma once

#include <cstdint>
#include <span>

#include "loralab/cpu/eigen_types.hpp"
#include "loralab/model/detail/checks.hpp"

namespace loralab::model {

namespace detail {

/// Throws `[loralab.data]` on the first token outside [0, vocab).
inline void check_tokens(std::span<const std::int32_t> tokens, Eigen::Index vocab, const char* fn) {
  for (std::size_t i = 0; i < tokens.size(); ++i)
    LORALAB_CHECK(tokens[i] >= 0 && tokens[i] < vocab, "[loralab.data] ", fn, ": token ", tokens[i],
                  " at position ", i, " is outside [0, vocab=", vocab, ")");
}

/// The shape checks embedding_forward and embedding_backward share.
template <class A, class B, class C>
void check_embedding(std::span<const std::int32_t> tokens, int batch, int seq, const A& x,
                     const B& wte, const C& wpe, const char* fn, const char* x_name) {
  check_positive(batch, fn, "B");
  check_positive(seq, fn, "T");
  check_size(tokens.size(), Eigen::Index(batch) * seq, fn, "tokens");
  LORALAB_CHECK(seq <= wpe.rows(), "[loralab.shape] ", fn, ": T=", seq,
                " exceeds the context of wpe (", wpe.rows(), " rows)");
  check_shape(wpe, wpe.rows(), wte.cols(), fn, "wpe");
  check_shape(x, Eigen::Index(batch) * seq, wte.cols(), fn, x_name);
  check_tokens(tokens, wte.rows(), fn);
}

}  // namespace detail

/// \ingroup model
/// \brief X[b*T + t] = wte[tokens[b*T + t]] + wpe[t]: token embedding plus learned position
/// embedding. WRITES X [B*T x d]. Call as `embedding_forward<T>(...)`.
/// \throws Error `[loralab.data]` on a token outside [0, V); `[loralab.shape]` when tokens does
/// not hold B*T entries, T exceeds wpe's rows (the context), or the widths disagree.
template <class T>
void embedding_forward(std::span<const std::int32_t> tokens,  // [B*T]
                       int batch, int seq,
                       cpu::ConstMatrixRef<T> wte,  // [V x d]
                       cpu::ConstMatrixRef<T> wpe,  // [context x d]
                       cpu::MatrixRef<T> X) {       // [B*T x d], written
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  detail::check_embedding(tokens, batch, seq, X, wte, wpe, "embedding_forward", "X");
  for (Eigen::Index b = 0; b < batch; ++b)
    for (Eigen::Index t = 0; t < seq; ++t) {
      const Eigen::Index r = b * seq + t;
      X.row(r) = wte.row(tokens[static_cast<std::size_t>(r)]) + wpe.row(t);
    }
}

/// \ingroup model
/// \brief Backward of embedding_forward from dX = dL/dX [B*T x d].
/// ACCUMULATES: dwte[tokens[r]] += dX[r] (a repeated token adds up; with a tied head,
/// lm_head_backward adds into the same dwte) and dwpe[t] += dX[b*T + t]; rows of dwpe at
/// positions >= T are untouched. Call as `embedding_backward<T>(...)`.
/// \throws Error as embedding_forward, on dwte/dwpe in place of wte/wpe.
template <class T>
void embedding_backward(cpu::ConstMatrixRef<T> dX,             // [B*T x d]
                        std::span<const std::int32_t> tokens,  // [B*T]
                        int batch, int seq,
                        cpu::MatrixRef<T> dwte,    // [V x d], +=
                        cpu::MatrixRef<T> dwpe) {  // [context x d], +=
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  detail::check_embedding(tokens, batch, seq, dX, dwte, dwpe, "embedding_backward", "dX");
  for (Eigen::Index b = 0; b < batch; ++b)
    for (Eigen::Index t = 0; t < seq; ++t) {
      const Eigen::Index r = b * seq + t;
      dwte.row(tokens[static_cast<std::size_t>(r)]) += dX.row(r);
      dwpe.row(t) += dX.row(r);
    }
}

}  // namespace loralab::model
