/// \file
/// \brief Causal multi-head self-attention on a fused QKV matrix, with the hooks DropKey and
/// DropAttention plug into: forward and backward.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "loralab/cpu/eigen_types.hpp"
#include "loralab/model/attention_hooks.hpp"
#include "loralab/model/detail/checks.hpp"

namespace loralab::model {

namespace detail {

/// Checks the shared arguments of attention_forward/backward; returns d (the model width).
template <class Q>
Eigen::Index check_attention(const Q& qkv, int batch, int seq, int heads, const char* fn) {
  check_positive(batch, fn, "B");
  check_positive(seq, fn, "T");
  check_positive(heads, fn, "heads");
  LORALAB_CHECK(qkv.cols() % 3 == 0 && qkv.cols() > 0, "[loralab.shape] ", fn, ": qkv has ",
                qkv.cols(), " columns, expected 3*d > 0");
  const Eigen::Index d = qkv.cols() / 3;
  LORALAB_CHECK(d % heads == 0, "[loralab.shape] ", fn, ": d=", d,
                " is not divisible by heads=", heads);
  check_shape(qkv, Eigen::Index(batch) * seq, 3 * d, fn, "qkv");
  return d;
}

/// In place on one row of scaled logits [T]: masked softmax over keys j <= i with keep[j] != 0
/// (keep may be null); every other entry becomes exactly 0, as does a row with no allowed key.
template <class Row>
void causal_softmax_row(Row&& row, Eigen::Index i, const std::uint8_t* keep) {
  using T = typename std::decay_t<Row>::Scalar;
  T mx = -std::numeric_limits<T>::infinity();
  for (Eigen::Index j = 0; j <= i; ++j)
    if (!keep || keep[j]) mx = std::max(mx, row(j));
  T sum(0);
  for (Eigen::Index j = 0; j <= i; ++j) {
    const T e = (!keep || keep[j]) ? std::exp(row(j) - mx) : T(0);
    row(j) = e;
    sum += e;
  }
  for (Eigen::Index j = i + 1; j < row.size(); ++j) row(j) = T(0);
  if (sum > T(0)) row.head(i + 1) /= sum;  // sum == 0 only when every allowed key is dropped
}

/// DropAttention's weights: W' = (P .* keep) / rowsum(P .* keep) for the [T x T] block starting
/// at row p0 of the hooks; writes them to `weighted` and the row sums to `sums` (0 rows stay 0).
template <class P, class T>
void drop_attention_weights(const P& p, const std::uint8_t* keep, Eigen::Index n_t,
                            cpu::MatrixR<T>& weighted, Eigen::Matrix<T, Eigen::Dynamic, 1>& sums) {
  weighted.resize(n_t, n_t);
  sums.resize(n_t);
  for (Eigen::Index i = 0; i < n_t; ++i) {
    T s(0);
    for (Eigen::Index j = 0; j < n_t; ++j) {
      const T w = keep[i * n_t + j] ? p(i, j) : T(0);
      weighted(i, j) = w;
      s += w;
    }
    sums(i) = s;
    if (s > T(0)) weighted.row(i) /= s;
  }
}

}  // namespace detail

/// \ingroup model
/// \brief Causal multi-head self-attention, GPT-2 style, on the fused projection
/// qkv = [Q | K | V] [B*T x 3d] (GPT-2's c_attn output; head h uses columns h*hd .. (h+1)*hd - 1
/// of each block, hd = d / heads). Per (batch b, head h), with Q_h, K_h, V_h [T x hd]:
/// \f[ S = Q_h K_h^T / \sqrt{hd} + \mathrm{mask}, \quad P = \mathrm{softmax}_{row}(S), \quad
///     O_h = (P \odot \Omega) V_h \f]
/// where the mask is -inf for j > i and for keys hooks.logit_keep drops, and Omega is
/// hooks.weight_scale (all ones when null). With hooks.weight_keep (DropAttention), P .* Omega
/// is replaced by (P .* keep) / rowsum(P .* keep). Call as `attention_forward<T>(...)`.
///
/// WRITES out [B*T x d] (head h into columns h*hd .. (h+1)*hd - 1, GPT-2's merge of heads) and
/// probs [B*H*T x T], the softmax P BEFORE weight_scale (exactly 0 above the diagonal and at
/// dropped keys; rows sum to 1 except all-dropped rows, which are 0). attention_backward needs
/// qkv and probs.
/// \throws Error `[loralab.shape]` when B, T or heads are not positive, qkv is not
/// [B*T x 3d] with d divisible by heads, or out/probs have the wrong shape.
template <class T>
void attention_forward(cpu::ConstMatrixRef<T> qkv,  // [B*T x 3d]
                       int batch, int seq, int heads,
                       cpu::MatrixRef<T> out,    // [B*T x d], written
                       cpu::MatrixRef<T> probs,  // [B*H*T x T], written
                       const AttentionHooks& hooks = {}) {
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  constexpr const char* fn = "attention_forward";
  const Eigen::Index d = detail::check_attention(qkv, batch, seq, heads, fn);
  const Eigen::Index n_t = seq, hd = d / heads;
  detail::check_shape(out, Eigen::Index(batch) * seq, d, fn, "out");
  detail::check_shape(probs, Eigen::Index(batch) * heads * seq, n_t, fn, "probs");
  const T scale = T(1) / std::sqrt(T(hd));
  cpu::MatrixR<T> weighted;  // [T x T] P .* Omega (weight_scale) or DropAttention's weights
  Eigen::Matrix<T, Eigen::Dynamic, 1> sums;  // DropAttention's row sums S
  LORALAB_CHECK(!(hooks.weight_keep && hooks.weight_scale),
                "[loralab.config] attention hooks: weight_keep (DropAttention) and weight_scale "
                "do not combine");
  for (Eigen::Index b = 0; b < batch; ++b)
    for (Eigen::Index h = 0; h < heads; ++h) {
      const Eigen::Index r0 = b * n_t, p0 = (b * heads + h) * n_t;
      const auto q = qkv.block(r0, h * hd, n_t, hd);          // [T x hd]
      const auto k = qkv.block(r0, d + h * hd, n_t, hd);      // [T x hd]
      const auto v = qkv.block(r0, 2 * d + h * hd, n_t, hd);  // [T x hd]
      auto p = probs.block(p0, 0, n_t, n_t);                  // [T x T]
      p.noalias() = scale * (q * k.transpose());
      for (Eigen::Index i = 0; i < n_t; ++i)
        detail::causal_softmax_row(p.row(i), i,
                                   hooks.logit_keep ? hooks.logit_keep + (p0 + i) * n_t : nullptr);
      auto o = out.block(r0, h * hd, n_t, hd);  // [T x hd]
      if (hooks.weight_keep) {
        detail::drop_attention_weights(p, hooks.weight_keep + p0 * n_t, n_t, weighted, sums);
        o.noalias() = weighted * v;
      } else if (hooks.weight_scale) {
        const cpu::ConstMatrixMap<float> omega(hooks.weight_scale + p0 * n_t, n_t, n_t);
        weighted = p.cwiseProduct(omega.cast<T>());
        o.noalias() = weighted * v;
      } else {
        o.noalias() = p * v;
      }
    }
}

/// \ingroup model
/// \brief Backward of attention_forward, from dout = dL/dout [B*T x d], the forward's qkv and
/// probs, and the same hooks. Softmax backward \f$ dS = P \odot (dP - \mathrm{rowsum}(dP \odot
/// P)) \f$ with \f$ dP = (dO_h V_h^T) \odot \Omega \f$, so dropped logits get exactly 0 gradient
/// (DropKey) and weight_scale is a constant. Call as `attention_backward<T>(...)`.
///
/// WRITES dqkv [B*T x 3d] (every entry; it does not accumulate: qkv feeds nothing else).
/// dqkv must not overlap qkv, probs or dout.
/// \throws Error `[loralab.shape]` on the shapes attention_forward checks, or dout/dqkv wrong.
template <class T>
void attention_backward(cpu::ConstMatrixRef<T> dout,   // [B*T x d]
                        cpu::ConstMatrixRef<T> qkv,    // [B*T x 3d], the forward input
                        cpu::ConstMatrixRef<T> probs,  // [B*H*T x T], from forward
                        int batch, int seq, int heads,
                        cpu::MatrixRef<T> dqkv,  // [B*T x 3d], written
                        const AttentionHooks& hooks = {}) {
  static_assert(detail::is_real_v<T>, "loralab: model layers support float and double");
  constexpr const char* fn = "attention_backward";
  const Eigen::Index d = detail::check_attention(qkv, batch, seq, heads, fn);
  const Eigen::Index n_t = seq, hd = d / heads;
  detail::check_shape(dout, Eigen::Index(batch) * seq, d, fn, "dout");
  detail::check_shape(probs, Eigen::Index(batch) * heads * seq, n_t, fn, "probs");
  detail::check_shape(dqkv, Eigen::Index(batch) * seq, 3 * d, fn, "dqkv");
  const T scale = T(1) / std::sqrt(T(hd));
  cpu::MatrixR<T> ds(n_t, n_t);              // [T x T] dP, then dS
  cpu::MatrixR<T> weighted;                  // [T x T] P .* Omega, or DropAttention's weights
  Eigen::Matrix<T, Eigen::Dynamic, 1> sums;  // DropAttention's row sums S
  for (Eigen::Index b = 0; b < batch; ++b)
    for (Eigen::Index h = 0; h < heads; ++h) {
      const Eigen::Index r0 = b * n_t, p0 = (b * heads + h) * n_t;
      const auto q = qkv.block(r0, h * hd, n_t, hd);          // [T x hd]
      const auto k = qkv.block(r0, d + h * hd, n_t, hd);      // [T x hd]
      const auto v = qkv.block(r0, 2 * d + h * hd, n_t, hd);  // [T x hd]
      const auto p = probs.block(p0, 0, n_t, n_t);            // [T x T]
      const auto d_o = dout.block(r0, h * hd, n_t, hd);       // [T x hd]
      auto dq = dqkv.block(r0, h * hd, n_t, hd);              // [T x hd]
      auto dk = dqkv.block(r0, d + h * hd, n_t, hd);          // [T x hd]
      auto dv = dqkv.block(r0, 2 * d + h * hd, n_t, hd);      // [T x hd]
      ds.noalias() = d_o * v.transpose();                     // dL/d(P .* Omega)
      if (hooks.weight_keep) {
        // DropAttention: W' = (P .* keep) / S. In terms of W' (bounded by 1, so a tiny S cannot
        // overflow), with c = rowsum(dW' .* W'): under the stop-gradient on S,
        // dS = W' .* dW' - P c (non-zero at dropped logits); through S, dS = W' .* (dW' - c),
        // DropKey's softmax backward. A row with S == 0 gets 0.
        detail::drop_attention_weights(p, hooks.weight_keep + p0 * n_t, n_t, weighted, sums);
        dv.noalias() = weighted.transpose() * d_o;
        for (Eigen::Index i = 0; i < n_t; ++i) {
          const T c = ds.row(i).dot(weighted.row(i));
          for (Eigen::Index j = 0; j < n_t; ++j)
            ds(i, j) =
                scale * (hooks.normalizer_stop_gradient ? weighted(i, j) * ds(i, j) - p(i, j) * c
                                                        : weighted(i, j) * (ds(i, j) - c));
        }
        dq.noalias() = ds * k;
        dk.noalias() = ds.transpose() * q;
        continue;
      } else if (hooks.weight_scale) {
        const cpu::ConstMatrixMap<float> omega(hooks.weight_scale + p0 * n_t, n_t, n_t);
        weighted = p.cwiseProduct(omega.cast<T>());
        dv.noalias() = weighted.transpose() * d_o;
        ds.array() *= omega.cast<T>().array();  // dL/dP
      } else {
        dv.noalias() = p.transpose() * d_o;
      }
      const Eigen::Matrix<T, Eigen::Dynamic, 1> dot = p.cwiseProduct(ds).rowwise().sum();  // [T]
      ds.array() = scale * p.array() * (ds.array().colwise() - dot.array());  // dL/dS, scaled
      dq.noalias() = ds * k;
      dk.noalias() = ds.transpose() * q;
    }
}

}  // namespace loralab::model
