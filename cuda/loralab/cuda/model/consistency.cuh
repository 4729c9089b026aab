/// \file
/// \brief Kernels and launchers of cuda::layers::consistency_forward/backward (declared in
/// layers.hpp; nvcc only), the device mirror of model::consistency_loss (methods.md 4.3, 4.5).
/// Forward: one block per row (fixed block size, so the reductions are deterministic), both
/// rows' log-sum-exp and the row statistic the gradient needs. Backward: element-wise from those
/// statistics, fused with the cross-entropy gradient and written in place over the logits.
#pragma once

#include <cmath>

#include "loralab/core/error.hpp"
#include "loralab/cuda/error.hpp"
#include "loralab/cuda/model/detail.cuh"
#include "loralab/cuda/model/layers.hpp"

namespace loralab::cuda::layers {
namespace detail {

constexpr int kConsistencyThreads = 512;  // a block per row, as cross_entropy_rows

// log M = log((exp(a) + exp(b)) / 2) for log-probabilities a, b; finite for finite a, b (where
// exp(a) and exp(b) both underflow, the CPU's double and this agree that the terms vanish).
__device__ __forceinline__ float log_mid(float a, float b) {
  const float hi = fmaxf(a, b), lo = fminf(a, b);
  return hi + log1pf(expf(lo - hi)) - 0.69314718055994531f;
}

template <class T>
__global__ void consistency_rows(const T* __restrict__ z1, const T* __restrict__ z2,
                                 const std::int32_t* __restrict__ targets, std::int64_t n,
                                 int vocab, bool js, float* __restrict__ loss,
                                 float* __restrict__ lse_ref, float* __restrict__ stat) {
  for (std::int64_t i = blockIdx.x; i < n; i += gridDim.x) {  // uniform per block
    const T* a = z1 + i * vocab;
    const T* b = z2 + i * vocab;
    if (targets[i] < 0) {  // kIgnoreTarget (host-checked)
      if (threadIdx.x == 0) loss[i] = stat[i] = lse_ref[i] = 0.0f;
      continue;
    }
    float m1 = -INFINITY, m2 = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
      m1 = fmaxf(m1, load(a, j));
      m2 = fmaxf(m2, load(b, j));
    }
    m1 = block_max(m1);
    m2 = block_max(m2);
    float s1 = 0.0f, s2 = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
      s1 += expf(load(a, j) - m1);
      s2 += expf(load(b, j) - m2);
    }
    const float l1 = m1 + logf(block_sum(s1));
    const float l2 = m2 + logf(block_sum(s2));
    float t1 = 0.0f, t2 = 0.0f;  // KL: kl12, kl21; JS: KL(P1||M), KL(P2||M)
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
      const float lp1 = load(a, j) - l1, lp2 = load(b, j) - l2;
      const float p1 = expf(lp1), p2 = expf(lp2);
      if (js) {
        const float lm = log_mid(lp1, lp2);
        t1 += p1 * (lp1 - lm);
        t2 += p2 * (lp2 - lm);
      } else {
        t1 += p1 * (lp1 - lp2);
        t2 += p2 * (lp2 - lp1);
      }
    }
    t1 = block_sum(t1);
    t2 = block_sum(t2);
    if (threadIdx.x == 0) {
      loss[i] = 0.5f * (t1 + t2);
      stat[i] = js ? 0.5f * t1 : t1;  // JS: <P1, 0.5 log(P1 / M)> = 0.5 KL(P1||M)
      lse_ref[i] = l2;
    }
  }
}

// dz1 = ce_weight (P1 - [j == y]) + weight g, g = 0.5 ((P1 - P2) + P1 (log P1 - log P2 - kl12))
// (KL) or P1 (a - <P1, a>), a = 0.5 log(P1 / M) (JS); in place over z1, 0 on ignored rows.
template <class T>
__global__ void consistency_grad(T* z1, const T* __restrict__ z2,
                                 const std::int32_t* __restrict__ targets,
                                 const float* __restrict__ lse, const float* __restrict__ lse_ref,
                                 const float* __restrict__ stat, std::int64_t n, int vocab, bool js,
                                 float ce_weight, float weight) {
  const std::int64_t total = n * vocab;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t i = e / vocab, j = e % vocab;
    const std::int32_t y = targets[i];
    float g = 0.0f;
    if (y >= 0) {
      const float lp1 = load(z1, e) - lse[i], lp2 = load(z2, e) - lse_ref[i];
      const float p1 = expf(lp1), p2 = expf(lp2);
      float c;
      if (js) {
        c = p1 * (0.5f * (lp1 - log_mid(lp1, lp2)) - stat[i]);
      } else {
        c = 0.5f * ((p1 - p2) + p1 * (lp1 - lp2 - stat[i]));
      }
      g = ce_weight * (j == y ? p1 - 1.0f : p1) + weight * c;
    }
    store(z1, e, g);
  }
}

}  // namespace detail

template <DeviceScalar T>
void consistency_forward(const T* logits, const T* reference, const std::int32_t* targets,
                         std::int64_t n, int vocab, bool js, float* loss, float* lse_ref,
                         float* stat, cudaStream_t stream) {
  constexpr const char* fn = "consistency_forward";
  LORALAB_CHECK(vocab > 0, "[loralab.shape] ", fn, ": V=", vocab, " must be > 0");
  LORALAB_CHECK(n >= 0, "[loralab.shape] ", fn, ": n=", n, " must be >= 0");
  if (n == 0) return;
  LORALAB_CHECK(logits && reference && targets && loss && lse_ref && stat, "[loralab.shape] ", fn,
                ": logits, reference, targets, loss, lse_ref and stat must be non-null device "
                "pointers");
  const unsigned blocks = static_cast<unsigned>(n < 65535 * 8 ? n : 65535 * 8);
  detail::consistency_rows<T><<<blocks, detail::kConsistencyThreads, 0, stream>>>(
      logits, reference, targets, n, vocab, js, loss, lse_ref, stat);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

template <DeviceScalar T>
void consistency_backward(T* logits, const T* reference, const std::int32_t* targets,
                          const float* lse, const float* lse_ref, const float* stat, std::int64_t n,
                          int vocab, bool js, float ce_weight, float weight, cudaStream_t stream) {
  constexpr const char* fn = "consistency_backward";
  LORALAB_CHECK(vocab > 0, "[loralab.shape] ", fn, ": V=", vocab, " must be > 0");
  LORALAB_CHECK(n >= 0, "[loralab.shape] ", fn, ": n=", n, " must be >= 0");
  LORALAB_CHECK(
      std::isfinite(ce_weight) && ce_weight >= 0.0f && std::isfinite(weight) && weight >= 0.0f,
      "[loralab.config] ", fn, ": ce_weight=", ce_weight, " and weight=", weight,
      " must be finite and >= 0");
  if (n == 0) return;
  LORALAB_CHECK(logits && reference && targets && lse && lse_ref && stat, "[loralab.shape] ", fn,
                ": logits, reference, targets, lse, lse_ref and stat must be non-null device "
                "pointers");
  detail::consistency_grad<T><<<detail::blocks_for(n * vocab), detail::kThreads, 0, stream>>>(
      logits, reference, targets, lse, lse_ref, stat, n, vocab, js, ce_weight, weight);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

}  // namespace loralab::cuda::layers
