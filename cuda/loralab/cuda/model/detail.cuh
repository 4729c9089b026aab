/// \file
/// \brief Device helpers shared by the model layers' kernels (internal, nvcc only): fp32 loads
/// and stores of T, warp and block reductions, launch sizes, and the row chunk of the
/// deterministic column reductions. Own names (not cuda::kernels::), so a TU may include
/// adapted_linear.cuh beside these.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "loralab/cuda/model/layers.hpp"

namespace loralab::cuda::layers::detail {

constexpr int kThreads = 256;      // element-wise kernels: memory bound, any multiple of 32 works
constexpr int kWarp = 32;          // lanes per warp
constexpr int kRowsPerChunk = 32;  // rows per partial sum of the column reductions
// The scratch sizes in layers.hpp assume this chunk; keep both in step.
static_assert(column_sum_scratch(kRowsPerChunk + 1, 3) == 2 * 3, "chunk size out of step");
static_assert(layernorm_backward_scratch(kRowsPerChunk, 3) == 2 * 3, "chunk size out of step");

/// Blocks for a grid-stride loop over `work` items of kThreads each (at least 1, capped).
inline unsigned blocks_for(std::int64_t work, int threads = kThreads) {
  const std::int64_t b = (work + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

/// Number of 32-row chunks of the column reductions.
inline std::int64_t row_chunks(std::int64_t n) {
  return (n + kRowsPerChunk - 1) / kRowsPerChunk;
}

template <class T>
__device__ __forceinline__ float load(const T* p, std::int64_t i) {
  if constexpr (std::is_same_v<T, float>) {
    return p[i];
  } else {
    return __bfloat162float(p[i]);
  }
}

template <class T>
__device__ __forceinline__ void store(T* p, std::int64_t i, float x) {
  if constexpr (std::is_same_v<T, float>) {
    p[i] = x;
  } else {
    p[i] = __float2bfloat16(x);
  }
}

/// Sum over the 32 lanes, returned to every lane (all lanes must call it).
__device__ __forceinline__ float warp_sum(float v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

/// Max over the 32 lanes, returned to every lane (all lanes must call it).
__device__ __forceinline__ float warp_max(float v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

/// Sum over the block (blockDim.x a multiple of 32, every thread calls it), returned to every
/// thread. The per-warp partials are added in warp order, so the result is deterministic.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  v = warp_sum(v);
  __syncthreads();  // a previous call's readers are done with `partial`
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = v;
  __syncthreads();
  float total = 0.0f;
  for (unsigned w = 0; w < blockDim.x / kWarp; ++w) total += partial[w];
  return total;
}

/// Max over the block, with block_sum's calling rules.
__device__ __forceinline__ float block_max(float v) {
  __shared__ float partial[32];
  v = warp_max(v);
  __syncthreads();
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = v;
  __syncthreads();
  float total = partial[0];
  for (unsigned w = 1; w < blockDim.x / kWarp; ++w) total = fmaxf(total, partial[w]);
  return total;
}

/// Second stage of the column reductions: out[j] += sum over chunks c of partials[c*d + j],
/// added in chunk order (deterministic).
static __global__ void add_chunk_sums(const float* __restrict__ partials, std::int64_t chunks,
                                      int d, float* __restrict__ out) {
  for (std::int64_t j = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; j < d;
       j += std::int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.0f;
    for (std::int64_t c = 0; c < chunks; ++c) acc += partials[c * d + j];
    out[j] += acc;
  }
}

}  // namespace loralab::cuda::layers::detail
