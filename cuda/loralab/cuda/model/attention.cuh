/// \file
/// \brief Kernels and launchers of cuda::layers::attention_forward/backward (declared in
/// layers.hpp; nvcc only). The four products per (batch, head) are strided batched cuBLAS GEMMs
/// over per-head copies [B*H x T x hd] of Q, K, V (fp32 accumulation, fp32 scores); our kernels
/// only permute heads and do the masked softmax and its backward, one warp per score row.
#pragma once

#include <cmath>

#include "loralab/core/error.hpp"
#include "loralab/cuda/blas.hpp"
#include "loralab/cuda/error.hpp"
#include "loralab/cuda/model/detail.cuh"
#include "loralab/cuda/model/layers.hpp"

namespace loralab::cuda::layers {
namespace detail {

constexpr int kRowWarps = 8;  // score rows per block of the softmax kernels (a warp each)

// dst [B*H x T x hd] (head-major copy) from columns off .. off + d - 1 of src [B*T x ld].
template <class T>
__global__ void split_heads(const T* __restrict__ src, std::int64_t ld, std::int64_t off,
                            T* __restrict__ dst, int seq, int heads, int hd, std::int64_t total) {
  const std::int64_t d = std::int64_t(heads) * hd;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t r = e / d, c = e % d, b = r / seq, t = r % seq, h = c / hd, x = c % hd;
    dst[((b * heads + h) * seq + t) * hd + x] = src[r * ld + off + c];
  }
}

// The inverse of split_heads: columns off .. off + d - 1 of dst [B*T x ld] from src
// [B*H x T x hd] (head h into columns h*hd .., GPT-2's merge of heads).
template <class T>
__global__ void merge_heads(const T* __restrict__ src, T* __restrict__ dst, std::int64_t ld,
                            std::int64_t off, int seq, int heads, int hd, std::int64_t total) {
  const std::int64_t d = std::int64_t(heads) * hd;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t r = e / d, c = e % d, b = r / seq, t = r % seq, h = c / hd, x = c % hd;
    dst[r * ld + off + c] = src[((b * heads + h) * seq + t) * hd + x];
  }
}

// Row r = (b*H + h)*T + i of the scores: softmax over the allowed keys (j <= i, kept), every
// other entry exactly 0, an all-dropped row all 0 (sum == 0: no division). Writes P to probs
// and the left operand of O = weighted V to weighted: P .* Omega, or with wkeep (DropAttention)
// the kept weights renormalized by their sum, exp(s_j - mx) / sum over kept of exp(s_k - mx)
// (= (P .* keep) / rowsum(P .* keep)); a row with nothing kept is 0.
template <class T>
__global__ void causal_softmax_rows(const float* __restrict__ scores,
                                    const std::uint8_t* __restrict__ keep,
                                    const float* __restrict__ omega,
                                    const std::uint8_t* __restrict__ wkeep, T* __restrict__ probs,
                                    T* __restrict__ weighted, std::int64_t rows, int seq) {
  const int lane = threadIdx.x % kWarp;
  for (std::int64_t r = blockIdx.x * std::int64_t(kRowWarps) + threadIdx.x / kWarp; r < rows;
       r += std::int64_t(gridDim.x) * kRowWarps) {  // uniform per warp
    const std::int64_t i = r % seq, base = r * seq;
    const float* s = scores + base;
    float mx = -INFINITY;
    for (std::int64_t j = lane; j <= i; j += kWarp)
      if (!keep || keep[base + j]) mx = fmaxf(mx, s[j]);
    mx = warp_max(mx);
    float sum = 0.0f, kept = 0.0f;
    for (std::int64_t j = lane; j <= i; j += kWarp)
      if (!keep || keep[base + j]) {
        const float e = expf(s[j] - mx);
        sum += e;
        if (wkeep && wkeep[base + j]) kept += e;
      }
    sum = warp_sum(sum);
    if (wkeep) kept = warp_sum(kept);  // uniform per warp
    for (std::int64_t j = lane; j < seq; j += kWarp) {
      const bool allowed = j <= i && (!keep || keep[base + j]) && sum > 0.0f;
      const float e = allowed ? expf(s[j] - mx) : 0.0f;
      const float p = allowed ? e / sum : 0.0f;
      store(probs, base + j, p);
      float wt = p;
      if (wkeep)
        wt = allowed && wkeep[base + j] && kept > 0.0f ? e / kept : 0.0f;
      else if (omega)
        wt = p * omega[base + j];
      store(weighted, base + j, wt);
    }
  }
}

// weighted = P .* Omega again in backward (the forward's copy is gone: scratch is shared).
template <class T>
__global__ void scale_weights(const T* __restrict__ probs, const float* __restrict__ omega,
                              T* __restrict__ weighted, std::int64_t total) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x)
    store(weighted, e, load(probs, e) * omega[e]);
}

// DropAttention's weights again in backward, from the saved P: per row S = sum_j keep_j P_j and
// weighted = (P .* keep) / S (0 where S == 0), as the CPU's drop_attention_weights.
template <class T>
__global__ void drop_attention_weights_rows(const T* __restrict__ probs,
                                            const std::uint8_t* __restrict__ wkeep,
                                            T* __restrict__ weighted, std::int64_t rows, int seq) {
  const int lane = threadIdx.x % kWarp;
  for (std::int64_t r = blockIdx.x * std::int64_t(kRowWarps) + threadIdx.x / kWarp; r < rows;
       r += std::int64_t(gridDim.x) * kRowWarps) {
    const std::int64_t i = r % seq, base = r * seq;
    float sum = 0.0f;
    for (std::int64_t j = lane; j <= i; j += kWarp)
      if (wkeep[base + j]) sum += load(probs, base + j);
    sum = warp_sum(sum);
    for (std::int64_t j = lane; j < seq; j += kWarp) {
      const float p = j <= i && wkeep[base + j] && sum > 0.0f ? load(probs, base + j) / sum : 0.0f;
      store(weighted, base + j, p);
    }
  }
}

// Softmax backward per score row: dS = scale P .* (dPs - rowsum(P .* dPs)), where dPs = dL/dP is
// dP .* Omega (weight_scale). With wkeep (DropAttention, S = rowsum(P .* keep), W' = P keep / S,
// computed by division so a tiny S cannot overflow), c = rowsum(dP .* W'): under the
// stop-gradient dS = scale (W' .* dP - P c), through S dS = scale W' .* (dP - c); a row with
// S == 0 gets dS = 0 (the CPU's attention_backward). Entries with P == 0 (future, dropped
// logits, all-dropped rows) get exactly 0, whatever dP holds.
template <class T>
__global__ void causal_softmax_backward_rows(const T* __restrict__ probs,
                                             const float* __restrict__ dp,
                                             const float* __restrict__ omega,
                                             const std::uint8_t* __restrict__ wkeep,
                                             bool stop_gradient, float scale, T* __restrict__ ds,
                                             std::int64_t rows, int seq) {
  const int lane = threadIdx.x % kWarp;
  for (std::int64_t r = blockIdx.x * std::int64_t(kRowWarps) + threadIdx.x / kWarp; r < rows;
       r += std::int64_t(gridDim.x) * kRowWarps) {
    const std::int64_t i = r % seq, base = r * seq;
    if (wkeep) {
      float s = 0.0f;
      for (std::int64_t j = lane; j <= i; j += kWarp)
        if (wkeep[base + j]) s += load(probs, base + j);
      s = warp_sum(s);  // the same value in every lane
      const bool empty = !(s > 0.0f);
      auto w = [&](std::int64_t j) {  // W'_j
        return (!empty && j <= i && wkeep[base + j]) ? load(probs, base + j) / s : 0.0f;
      };
      float c = 0.0f;
      for (std::int64_t j = lane; j <= i; j += kWarp) c += w(j) * dp[base + j];
      c = warp_sum(c);
      for (std::int64_t j = lane; j < seq; j += kWarp) {
        const float p = j <= i ? load(probs, base + j) : 0.0f;
        float g = 0.0f;
        if (!empty && j <= i)
          g = stop_gradient ? scale * (w(j) * dp[base + j] - p * c)
                            : scale * w(j) * (dp[base + j] - c);
        store(ds, base + j, g);
      }
      continue;
    }
    auto grad_p = [&](std::int64_t j) {  // dL/dP at column j
      return omega ? dp[base + j] * omega[base + j] : dp[base + j];
    };
    float dot = 0.0f;
    for (std::int64_t j = lane; j <= i; j += kWarp) {
      const float p = load(probs, base + j);
      if (p != 0.0f) dot += p * grad_p(j);
    }
    dot = warp_sum(dot);
    for (std::int64_t j = lane; j < seq; j += kWarp) {
      const float p = j <= i ? load(probs, base + j) : 0.0f;
      float g = 0.0f;
      if (p != 0.0f) g = scale * p * (grad_p(j) - dot);
      store(ds, base + j, g);
    }
  }
}

inline void check_attention(const void* qkv, int batch, int seq, int heads, int d, const char* fn) {
  LORALAB_CHECK(batch > 0, "[loralab.shape] ", fn, ": B=", batch, " must be > 0");
  LORALAB_CHECK(seq > 0, "[loralab.shape] ", fn, ": T=", seq, " must be > 0");
  LORALAB_CHECK(heads > 0, "[loralab.shape] ", fn, ": heads=", heads, " must be > 0");
  LORALAB_CHECK(d > 0, "[loralab.shape] ", fn, ": d=", d, " must be > 0");
  LORALAB_CHECK(d % heads == 0, "[loralab.shape] ", fn, ": d=", d,
                " is not divisible by heads=", heads);
  LORALAB_CHECK(qkv, "[loralab.shape] ", fn, ": qkv must be a non-null device pointer");
}

template <class T>
void split(const T* src, std::int64_t ld, std::int64_t off, T* dst, int batch, int seq, int heads,
           int d, cudaStream_t stream) {
  const std::int64_t total = std::int64_t(batch) * seq * d;
  split_heads<T>
      <<<blocks_for(total), kThreads, 0, stream>>>(src, ld, off, dst, seq, heads, d / heads, total);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void merge(const T* src, T* dst, std::int64_t ld, std::int64_t off, int batch, int seq, int heads,
           int d, cudaStream_t stream) {
  const std::int64_t total = std::int64_t(batch) * seq * d;
  merge_heads<T>
      <<<blocks_for(total), kThreads, 0, stream>>>(src, dst, ld, off, seq, heads, d / heads, total);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

inline void check_hooks(const AttentionHooks& hooks, const char* fn) {
  LORALAB_CHECK(!(hooks.weight_keep && hooks.weight_scale), "[loralab.config] ", fn,
                ": attention hooks weight_keep (DropAttention) and weight_scale do not combine");
}

inline unsigned row_blocks(std::int64_t rows) {
  return blocks_for(rows, kRowWarps);
}

}  // namespace detail

template <DeviceScalar T>
void attention_forward(const T* qkv, int batch, int seq, int heads, int d, T* out, T* probs,
                       const AttentionHooks& hooks, AttentionScratch<T>& scratch,
                       cublasHandle_t blas, cudaStream_t stream) {
  constexpr const char* fn = "attention_forward";
  detail::check_attention(qkv, batch, seq, heads, d, fn);
  LORALAB_CHECK(out && probs && blas, "[loralab.shape] ", fn,
                ": out, probs and the cuBLAS handle must be non-null");
  detail::check_hooks(hooks, fn);
  scratch.reserve(batch, seq, heads, d);
  LORALAB_CUBLAS_CHECK(cublasSetStream(blas, stream));  // GEMMs and kernels in one order
  constexpr cudaDataType_t kT = data_type<T>();
  const int hd = d / heads;
  const long long bh = static_cast<long long>(batch) * heads;
  const long long head = static_cast<long long>(seq) * hd;  // elements per head of Q, K, V, O
  const long long sq = static_cast<long long>(seq) * seq;   // elements per head of S, P
  const std::int64_t ld = 3 * std::int64_t(d);
  detail::split(qkv, ld, 0, scratch.q.data(), batch, seq, heads, d, stream);
  detail::split(qkv, ld, d, scratch.k.data(), batch, seq, heads, d, stream);
  detail::split(qkv, ld, 2 * std::int64_t(d), scratch.v.data(), batch, seq, heads, d, stream);
  // S = scale Q K^T [T x T] per head, fp32.
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  gemm_strided_batched_row_major(blas, false, true, seq, seq, hd, scale, scratch.q.data(), kT, hd,
                                 head, scratch.k.data(), kT, hd, head, 0.0f, scratch.logits.data(),
                                 CUDA_R_32F, seq, sq, bh);
  const std::int64_t rows = bh * seq;
  detail::causal_softmax_rows<T>
      <<<detail::row_blocks(rows), detail::kRowWarps * detail::kWarp, 0, stream>>>(
          scratch.logits.data(), hooks.logit_keep, hooks.weight_scale, hooks.weight_keep, probs,
          scratch.weighted.data(), rows, seq);
  LORALAB_CUDA_CHECK(cudaGetLastError());
  // O = (P .* Omega) V [T x hd] per head, then heads merged into out.
  gemm_strided_batched_row_major(blas, false, false, seq, hd, seq, 1.0f, scratch.weighted.data(),
                                 kT, seq, sq, scratch.v.data(), kT, hd, head, 0.0f,
                                 scratch.o.data(), kT, hd, head, bh);
  detail::merge(scratch.o.data(), out, d, 0, batch, seq, heads, d, stream);
}

template <DeviceScalar T>
void attention_backward(const T* dout, const T* qkv, const T* probs, int batch, int seq, int heads,
                        int d, T* dqkv, const AttentionHooks& hooks, AttentionScratch<T>& scratch,
                        cublasHandle_t blas, cudaStream_t stream) {
  constexpr const char* fn = "attention_backward";
  detail::check_attention(qkv, batch, seq, heads, d, fn);
  LORALAB_CHECK(dout && probs && dqkv && blas, "[loralab.shape] ", fn,
                ": dout, probs, dqkv and the cuBLAS handle must be non-null");
  LORALAB_CHECK(static_cast<const void*>(dqkv) != static_cast<const void*>(qkv), "[loralab.shape] ",
                fn, ": dqkv must not alias qkv");
  detail::check_hooks(hooks, fn);
  scratch.reserve(batch, seq, heads, d);
  LORALAB_CUBLAS_CHECK(cublasSetStream(blas, stream));
  constexpr cudaDataType_t kT = data_type<T>();
  const int hd = d / heads;
  const long long bh = static_cast<long long>(batch) * heads;
  const long long head = static_cast<long long>(seq) * hd;
  const long long sq = static_cast<long long>(seq) * seq;
  const std::int64_t ld = 3 * std::int64_t(d);
  // The per-head copies are rebuilt: scratch is shared by every layer.
  detail::split(qkv, ld, 0, scratch.q.data(), batch, seq, heads, d, stream);
  detail::split(qkv, ld, d, scratch.k.data(), batch, seq, heads, d, stream);
  detail::split(qkv, ld, 2 * std::int64_t(d), scratch.v.data(), batch, seq, heads, d, stream);
  detail::split(dout, d, 0, scratch.o.data(), batch, seq, heads, d, stream);  // dO
  // dP = dO V^T [T x T] per head (the gradient of P .* Omega), fp32.
  gemm_strided_batched_row_major(blas, false, true, seq, seq, hd, 1.0f, scratch.o.data(), kT, hd,
                                 head, scratch.v.data(), kT, hd, head, 0.0f, scratch.logits.data(),
                                 CUDA_R_32F, seq, sq, bh);
  // dV = (P .* Omega)^T dO, or DropAttention's W'^T dO; without either, the weights are probs.
  const std::int64_t scores = bh * sq;
  const std::int64_t rows = bh * seq;
  const T* weights = probs;
  if (hooks.weight_keep) {
    detail::drop_attention_weights_rows<T>
        <<<detail::row_blocks(rows), detail::kRowWarps * detail::kWarp, 0, stream>>>(
            probs, hooks.weight_keep, scratch.weighted.data(), rows, seq);
    LORALAB_CUDA_CHECK(cudaGetLastError());
    weights = scratch.weighted.data();
  } else if (hooks.weight_scale) {
    detail::scale_weights<T><<<detail::blocks_for(scores), detail::kThreads, 0, stream>>>(
        probs, hooks.weight_scale, scratch.weighted.data(), scores);
    LORALAB_CUDA_CHECK(cudaGetLastError());
    weights = scratch.weighted.data();
  }
  gemm_strided_batched_row_major(blas, true, false, seq, hd, seq, 1.0f, weights, kT, seq, sq,
                                 scratch.o.data(), kT, hd, head, 0.0f, scratch.dv.data(), kT, hd,
                                 head, bh);
  // dS overwrites scratch.weighted: queued after the dV GEMM on the same stream.
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  detail::causal_softmax_backward_rows<T>
      <<<detail::row_blocks(rows), detail::kRowWarps * detail::kWarp, 0, stream>>>(
          probs, scratch.logits.data(), hooks.weight_scale, hooks.weight_keep,
          hooks.normalizer_stop_gradient, scale, scratch.weighted.data(), rows, seq);
  LORALAB_CUDA_CHECK(cudaGetLastError());
  // dQ = dS K, dK = dS^T Q [T x hd] per head.
  gemm_strided_batched_row_major(blas, false, false, seq, hd, seq, 1.0f, scratch.weighted.data(),
                                 kT, seq, sq, scratch.k.data(), kT, hd, head, 0.0f,
                                 scratch.dq.data(), kT, hd, head, bh);
  gemm_strided_batched_row_major(blas, true, false, seq, hd, seq, 1.0f, scratch.weighted.data(), kT,
                                 seq, sq, scratch.q.data(), kT, hd, head, 0.0f, scratch.dk.data(),
                                 kT, hd, head, bh);
  detail::merge(scratch.dq.data(), dqkv, ld, 0, batch, seq, heads, d, stream);
  detail::merge(scratch.dk.data(), dqkv, ld, d, batch, seq, heads, d, stream);
  detail::merge(scratch.dv.data(), dqkv, ld, 2 * std::int64_t(d), batch, seq, heads, d, stream);
}

}  // namespace loralab::cuda::layers
