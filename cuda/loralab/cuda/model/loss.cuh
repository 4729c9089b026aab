/// \file
/// \brief Kernels and launchers of cuda::layers::cross_entropy_forward/backward (declared in
/// layers.hpp; nvcc only). Forward: one block per row looping over the vocabulary (GPT-2's
/// 50257), max subtracted, fp32 statistics. Backward: element-wise from the saved lse, in place.
#pragma once

#include <cmath>

#include "loralab/core/error.hpp"
#include "loralab/cuda/error.hpp"
#include "loralab/cuda/model/detail.cuh"
#include "loralab/cuda/model/layers.hpp"

namespace loralab::cuda::layers {
namespace detail {

constexpr int kLossThreads = 512;  // a block per row; wide, as V is large

template <class T>
__global__ void cross_entropy_rows(const T* __restrict__ logits,
                                   const std::int32_t* __restrict__ targets, std::int64_t n,
                                   int vocab, float* __restrict__ loss, float* __restrict__ lse) {
  for (std::int64_t i = blockIdx.x; i < n; i += gridDim.x) {  // uniform per block
    const T* z = logits + i * vocab;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, load(z, j));
    mx = block_max(mx);
    float s = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(load(z, j) - mx);
    s = block_sum(s);
    if (threadIdx.x == 0) {
      const float l = mx + logf(s);
      const std::int32_t y = targets[i];
      lse[i] = l;
      loss[i] = y < 0 ? 0.0f : l - load(z, y);  // y < 0 only for kIgnoreTarget (host-checked)
    }
  }
}

// In place: dz = exp(z - lse) inv - [j == y] inv (the CPU's probs * inv, then -inv at y); 0 on
// ignored rows.
template <class T>
__global__ void cross_entropy_grad(T* logits, const std::int32_t* __restrict__ targets,
                                   const float* __restrict__ lse, std::int64_t n, int vocab,
                                   float inv_count) {
  const std::int64_t total = n * vocab;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t i = e / vocab, j = e % vocab;
    const std::int32_t y = targets[i];
    float g = 0.0f;
    if (y >= 0) {
      g = expf(load(logits, e) - lse[i]) * inv_count;
      if (j == y) g -= inv_count;
    }
    store(logits, e, g);
  }
}

}  // namespace detail

template <DeviceScalar T>
void cross_entropy_forward(const T* logits, const std::int32_t* targets, std::int64_t n, int vocab,
                           float* loss, float* lse, cudaStream_t stream) {
  constexpr const char* fn = "cross_entropy_forward";
  LORALAB_CHECK(vocab > 0, "[loralab.shape] ", fn, ": V=", vocab, " must be > 0");
  LORALAB_CHECK(n >= 0, "[loralab.shape] ", fn, ": n=", n, " must be >= 0");
  if (n == 0) return;
  LORALAB_CHECK(logits && targets && loss && lse, "[loralab.shape] ", fn,
                ": logits, targets, loss and lse must be non-null device pointers");
  const unsigned blocks = static_cast<unsigned>(n < 65535 * 8 ? n : 65535 * 8);
  detail::cross_entropy_rows<T>
      <<<blocks, detail::kLossThreads, 0, stream>>>(logits, targets, n, vocab, loss, lse);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

template <DeviceScalar T>
void cross_entropy_backward(T* logits, const std::int32_t* targets, const float* lse,
                            std::int64_t n, int vocab, float inv_count, cudaStream_t stream) {
  constexpr const char* fn = "cross_entropy_backward";
  LORALAB_CHECK(vocab > 0, "[loralab.shape] ", fn, ": V=", vocab, " must be > 0");
  LORALAB_CHECK(n >= 0, "[loralab.shape] ", fn, ": n=", n, " must be >= 0");
  LORALAB_CHECK(std::isfinite(inv_count) && inv_count >= 0.0f, "[loralab.config] ", fn,
                ": inv_count=", inv_count, " must be finite and >= 0");
  if (n == 0) return;
  LORALAB_CHECK(logits && targets && lse, "[loralab.shape] ", fn,
                ": logits, targets and lse must be non-null device pointers");
  detail::cross_entropy_grad<T><<<detail::blocks_for(n * vocab), detail::kThreads, 0, stream>>>(
      logits, targets, lse, n, vocab, inv_count);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

}  // namespace loralab::cuda::layers
