/// \file
/// \brief Kernels and launchers of cuda::layers::embedding_forward/backward (declared in
/// layers.hpp; nvcc only). dwpe is reduced over the batch by one thread per (t, column), in
/// batch order (deterministic); dwte takes fp32 atomics, as a token may repeat anywhere.
#pragma once

#include "loralab/core/error.hpp"
#include "loralab/cuda/error.hpp"
#include "loralab/cuda/model/detail.cuh"
#include "loralab/cuda/model/layers.hpp"

namespace loralab::cuda::layers {
namespace detail {

template <class T>
__global__ void embedding_forward_kernel(const std::int32_t* __restrict__ tokens,
                                         const T* __restrict__ wte, const T* __restrict__ wpe,
                                         T* __restrict__ x, int seq, int d, std::int64_t total) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t r = e / d, j = e % d, t = r % seq;
    const std::int64_t tok = tokens[r];
    store(x, e, load(wte, tok * d + j) + load(wpe, t * d + j));
  }
}

template <class T>
__global__ void embedding_backward_wte(const T* __restrict__ dx,
                                       const std::int32_t* __restrict__ tokens,
                                       float* __restrict__ dwte, int d, std::int64_t total) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t r = e / d, j = e % d;
    atomicAdd(dwte + std::int64_t(tokens[r]) * d + j, load(dx, e));
  }
}

// dwpe[t, j] += dx[b*T + t, j] for b = 0, 1, ... in order, as the CPU's loop adds them.
template <class T>
__global__ void embedding_backward_wpe(const T* __restrict__ dx, float* __restrict__ dwpe,
                                       int batch, int seq, int d) {
  const std::int64_t total = std::int64_t(seq) * d;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    float acc = dwpe[e];
    for (int b = 0; b < batch; ++b) acc += load(dx, b * total + e);
    dwpe[e] = acc;
  }
}

inline void check_embedding(int batch, int seq, int d, const char* fn) {
  LORALAB_CHECK(batch > 0, "[loralab.shape] ", fn, ": B=", batch, " must be > 0");
  LORALAB_CHECK(seq > 0, "[loralab.shape] ", fn, ": T=", seq, " must be > 0");
  LORALAB_CHECK(d > 0, "[loralab.shape] ", fn, ": d=", d, " must be > 0");
}

}  // namespace detail

template <DeviceScalar T>
void embedding_forward(const std::int32_t* tokens, const T* wte, const T* wpe, T* x, int batch,
                       int seq, int d, cudaStream_t stream) {
  detail::check_embedding(batch, seq, d, "embedding_forward");
  LORALAB_CHECK(tokens && wte && wpe && x, "[loralab.shape] embedding_forward: tokens, wte, wpe ",
                "and x must be non-null device pointers");
  const std::int64_t total = std::int64_t(batch) * seq * d;
  detail::embedding_forward_kernel<T><<<detail::blocks_for(total), detail::kThreads, 0, stream>>>(
      tokens, wte, wpe, x, seq, d, total);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

template <DeviceScalar T>
void embedding_backward(const T* dx, const std::int32_t* tokens, float* dwte, float* dwpe,
                        int batch, int seq, int d, cudaStream_t stream) {
  detail::check_embedding(batch, seq, d, "embedding_backward");
  LORALAB_CHECK(dx && tokens && dwte && dwpe, "[loralab.shape] embedding_backward: dx, tokens, ",
                "dwte and dwpe must be non-null device pointers");
  const std::int64_t total = std::int64_t(batch) * seq * d;
  detail::embedding_backward_wte<T>
      <<<detail::blocks_for(total), detail::kThreads, 0, stream>>>(dx, tokens, dwte, d, total);
  LORALAB_CUDA_CHECK(cudaGetLastError());
  detail::embedding_backward_wpe<T>
      <<<detail::blocks_for(std::int64_t(seq) * d), detail::kThreads, 0, stream>>>(dx, dwpe, batch,
                                                                                   seq, d);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

}  // namespace loralab::cuda::layers
