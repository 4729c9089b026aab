/// \file
/// \brief The decoder's layers on the device: LayerNorm, GELU, residual adds, embedding, the
/// tied head's loss, and causal attention with the dropout hooks. Host declarations, readable by
/// g++; the kernels live in the .cuh files beside this one (one per layer, mirroring
/// include/loralab/model/) and are instantiated for float and bf16 in cuda/instances/model_*.cu.
///
/// Conventions shared by every launcher: row-major device pointers; element type T (float or
/// bf16) for activations and weights, fp32 for statistics, gradients of trainable base weights
/// and losses; every sum is accumulated in fp32; launches go to `stream` and are asynchronous;
/// each launcher checks its arguments on the host and throws loralab::Error naming the bad value.
/// Outputs marked "+=" accumulate, as their CPU mirrors do.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "loralab/cuda/bf16.hpp"
#include "loralab/cuda/device_buffer.hpp"
#include "loralab/model/attention_hooks.hpp"

namespace loralab::cuda::layers {

/// \ingroup cuda
/// \brief The CPU's attention hooks, reused: on the device both arrays are DEVICE pointers in the
/// same [B*H*T x T] layout (row (b*H + h)*T + i, column j).
using loralab::model::AttentionHooks;

// ---- LayerNorm (mirror of include/loralab/model/layernorm.hpp) --------------------------------

/// \ingroup cuda
/// \brief y = gamma .* (x - mean) * rstd + beta per row of x [n x d]; writes y [n x d] and the
/// fp32 statistics mean [n], rstd [n] that layernorm_backward needs. y must not alias x.
template <DeviceScalar T>
void layernorm_forward(const T* x, const T* gamma, const T* beta, float eps, T* y, float* mean,
                       float* rstd, std::int64_t n, int d, cudaStream_t stream);

/// \ingroup cuda
/// \brief Floats of scratch layernorm_backward needs for (n, d) when it computes dgamma/dbeta:
/// one fp32 partial sum of dgamma and one of dbeta per 32-row chunk and column (the first stage
/// of the deterministic reduction; the kernels use the same chunk of 32 rows).
inline constexpr std::size_t layernorm_backward_scratch(std::int64_t n, int d) {
  const std::int64_t chunks = n > 0 ? (n + 31) / 32 : 0;
  return 2 * static_cast<std::size_t>(chunks) * static_cast<std::size_t>(d > 0 ? d : 0);
}

/// \ingroup cuda
/// \brief Backward of layernorm_forward: dx += dL/dx [n x d] (T); dgamma += and dbeta += [d]
/// (fp32) when non-null (both or neither), reduced deterministically through `scratch`
/// (layernorm_backward_scratch(n, d) floats; may be null when dgamma is null).
template <DeviceScalar T>
void layernorm_backward(const T* dy, const T* x, const T* gamma, const float* mean,
                        const float* rstd, T* dx, float* dgamma, float* dbeta, std::int64_t n,
                        int d, float* scratch, cudaStream_t stream);

// ---- GELU, tanh approximation (mirror of gelu.hpp) --------------------------------------------

/// \ingroup cuda
/// \brief y = gelu(x) element-wise over `count` entries (GPT-2's tanh form); y may alias x.
template <DeviceScalar T>
void gelu_forward(const T* x, T* y, std::int64_t count, cudaStream_t stream);

/// \ingroup cuda
/// \brief dx = gelu'(x) .* dy over `count` entries; dx may alias dy (not x).
template <DeviceScalar T>
void gelu_backward(const T* x, const T* dy, T* dx, std::int64_t count, cudaStream_t stream);

// ---- element-wise adds and reductions (mirror of residual.hpp) --------------------------------

/// \ingroup cuda
/// \brief y = a + b over `count` entries; y may alias a or b.
template <DeviceScalar T>
void add(const T* a, const T* b, T* y, std::int64_t count, cudaStream_t stream);

/// \ingroup cuda
/// \brief y += x over `count` entries.
template <DeviceScalar T>
void accumulate(T* y, const T* x, std::int64_t count, cudaStream_t stream);

/// \ingroup cuda
/// \brief Every row of y [n x d] = bias [d] (a linear's bias before its GEMM adds X W^T).
template <DeviceScalar T>
void fill_rows(T* y, const T* bias, std::int64_t n, int d, cudaStream_t stream);

/// \ingroup cuda
/// \brief Floats of scratch column_sum needs for (n, d): one fp32 partial sum per 32-row chunk
/// and column (the same chunking as layernorm_backward_scratch).
inline constexpr std::size_t column_sum_scratch(std::int64_t n, int d) {
  const std::int64_t chunks = n > 0 ? (n + 31) / 32 : 0;
  return static_cast<std::size_t>(chunks) * static_cast<std::size_t>(d > 0 ? d : 0);
}

/// \ingroup cuda
/// \brief out[j] += sum_i x[i, j] over x [n x d] (a bias gradient), fp32, deterministic (fixed
/// reduction order through `scratch` of column_sum_scratch(n, d) floats).
template <DeviceScalar T>
void column_sum(const T* x, std::int64_t n, int d, float* out, float* scratch, cudaStream_t stream);

/// \ingroup cuda
/// \brief dst[i] = T(src[i]) over `count` entries (fp32 master -> compute copy).
template <DeviceScalar T>
void convert(const float* src, T* dst, std::int64_t count, cudaStream_t stream);

// ---- embedding (mirror of embedding.hpp) ------------------------------------------------------

/// \ingroup cuda
/// \brief x[b*T + t] = wte[tokens[b*T + t]] + wpe[t]; tokens [B*T] on the device, already checked
/// to lie in [0, V) on the host.
template <DeviceScalar T>
void embedding_forward(const std::int32_t* tokens, const T* wte, const T* wpe, T* x, int batch,
                       int seq, int d, cudaStream_t stream);

/// \ingroup cuda
/// \brief dwte[tokens[r]] += dx[r] and dwpe[t] += sum over b of dx[b*T + t] (fp32). dwpe is
/// deterministic; dwte uses fp32 atomics where a token repeats (order-dependent rounding).
template <DeviceScalar T>
void embedding_backward(const T* dx, const std::int32_t* tokens, float* dwte, float* dwpe,
                        int batch, int seq, int d, cudaStream_t stream);

// ---- softmax cross-entropy of the tied head (mirror of loss.hpp) -------------------------------

/// \ingroup cuda
/// \brief Per row of logits [n x V]: lse[i] = log sum_v exp(z_iv) (fp32, max subtracted) and
/// loss[i] = lse[i] - z_{i, y_i}, or 0 when targets[i] == -1 (kIgnoreTarget). targets on the
/// device, already checked on the host.
template <DeviceScalar T>
void cross_entropy_forward(const T* logits, const std::int32_t* targets, std::int64_t n, int vocab,
                           float* loss, float* lse, cudaStream_t stream);

/// \ingroup cuda
/// \brief In place: logits [n x V] become dlogits = (exp(z - lse) - onehot(y)) * inv_count, and 0
/// on ignored rows.
template <DeviceScalar T>
void cross_entropy_backward(T* logits, const std::int32_t* targets, const float* lse,
                            std::int64_t n, int vocab, float inv_count, cudaStream_t stream);

// ---- consistency losses of two passes (mirror of consistency.hpp) ----------------------------

/// \ingroup cuda
/// \brief Per row i of logits [n x V] (z1, the back-propagated branch) and reference [n x V]
/// (z2, the other branch, or the deterministic pass for JS), for rows whose target is not -1:
/// loss[i] = 0.5 (KL(P1||P2) + KL(P2||P1)), or with `js` JS(P1, P2) = 0.5 KL(P1||M) +
/// 0.5 KL(P2||M), M = (P1 + P2) / 2; lse_ref[i] = log sum exp z2; and the row statistic the
/// gradient needs, stat[i] = KL(P1||P2), or with `js` <P1, 0.5 log(P1 / M)>. Ignored rows get
/// loss = stat = 0. fp32, one block per row (deterministic); the mean over rows is the caller's
/// (model::consistency_loss divides by the count of non-ignored rows).
template <DeviceScalar T>
void consistency_forward(const T* logits, const T* reference, const std::int32_t* targets,
                         std::int64_t n, int vocab, bool js, float* loss, float* lse_ref,
                         float* stat, cudaStream_t stream);

/// \ingroup cuda
/// \brief In place: logits [n x V] (z1) become the gradient of
/// ce_weight * sum_i CE_i + weight * sum_i consistency_i with respect to z1 (the reference is a
/// constant, the detached branch), i.e. ce_weight (P1 - onehot(y)) + weight g with g as in
/// model::consistency_loss; 0 on ignored rows. lse [n] is cross_entropy_forward's for z1; lse_ref
/// and stat come from consistency_forward on the same logits. For the mean losses pass
/// ce_weight = 1/count (times 0.5 when both branches' task losses are averaged) and
/// weight = lambda/count.
template <DeviceScalar T>
void consistency_backward(T* logits, const T* reference, const std::int32_t* targets,
                          const float* lse, const float* lse_ref, const float* stat, std::int64_t n,
                          int vocab, bool js, float ce_weight, float weight, cudaStream_t stream);

// ---- causal multi-head attention (mirror of attention.hpp) ------------------------------------

/// \ingroup cuda
/// \brief Transient device buffers of attention (per-head Q, K, V, their gradients, the fp32
/// logits and the weighted probabilities). Grown on demand, reused across layers and steps.
template <DeviceScalar T>
struct AttentionScratch {
  DeviceBuffer<T> q;           ///< [B*H x T x hd] per-head copy of Q
  DeviceBuffer<T> k;           ///< [B*H x T x hd] per-head copy of K
  DeviceBuffer<T> v;           ///< [B*H x T x hd] per-head copy of V
  DeviceBuffer<T> dq;          ///< [B*H x T x hd] dL/dQ per head
  DeviceBuffer<T> dk;          ///< [B*H x T x hd] dL/dK per head
  DeviceBuffer<T> dv;          ///< [B*H x T x hd] dL/dV per head
  DeviceBuffer<T> o;           ///< [B*H x T x hd] per-head output / its gradient
  DeviceBuffer<float> logits;  ///< [B*H x T x T] scores S (forward) or dP (backward), fp32
  DeviceBuffer<T> weighted;    ///< [B*H x T x T] P .* Omega (forward) or dS (backward)
  /// \brief Grows every buffer to fit (batch, seq, heads, d).
  void reserve(int batch, int seq, int heads, int d) {
    const std::size_t per_head = std::size_t(batch) * seq * d;  // B*H*T*hd = B*T*d
    const std::size_t scores = std::size_t(batch) * heads * seq * seq;
    for (DeviceBuffer<T>* b : {&q, &k, &v, &dq, &dk, &dv, &o}) b->reserve_discard(per_head);
    logits.reserve_discard(scores);
    weighted.reserve_discard(scores);
  }
};

/// \ingroup cuda
/// \brief Causal attention on qkv = [Q | K | V] [B*T x 3d]: out [B*T x d] (heads merged as
/// GPT-2 does) and probs [B*H*T x T], the softmax BEFORE hooks.weight_scale / weight_keep
/// (exactly 0 above the diagonal and at keys hooks.logit_keep drops; an all-dropped row is all
/// 0). With hooks.weight_keep (DropAttention) the output uses (P .* keep) / rowsum(P .* keep)
/// (a row with nothing kept is 0). Same math as the CPU's attention_forward; the GEMMs go through
/// cuBLAS (strided batched, fp32 accumulation) after binding `blas` to `stream`, so kernels and
/// GEMMs run in one order. \throws Error on bad shapes, or weight_keep with weight_scale.
template <DeviceScalar T>
void attention_forward(const T* qkv, int batch, int seq, int heads, int d, T* out, T* probs,
                       const AttentionHooks& hooks, AttentionScratch<T>& scratch,
                       cublasHandle_t blas, cudaStream_t stream);

/// \ingroup cuda
/// \brief Backward of attention_forward from dout [B*T x d]: WRITES dqkv [B*T x 3d]. hooks must
/// be those of the forward: weight_scale is a constant, dropped logits get exactly 0 gradient,
/// and weight_keep's normalizer S is a constant when hooks.normalizer_stop_gradient is set (the
/// paper's DropAttention) or is differentiated through otherwise (DropKey's gradient), as the
/// CPU's attention_backward.
template <DeviceScalar T>
void attention_backward(const T* dout, const T* qkv, const T* probs, int batch, int seq, int heads,
                        int d, T* dqkv, const AttentionHooks& hooks, AttentionScratch<T>& scratch,
                        cublasHandle_t blas, cudaStream_t stream);

}  // namespace loralab::cuda::layers
