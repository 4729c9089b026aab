/// \file
/// \brief Kernels and launchers of cuda::layers::gelu_forward/backward (declared in layers.hpp;
/// nvcc only): GPT-2's tanh approximation with the CPU's constants and evaluation order.
#pragma once

#include "loralab/core/error.hpp"
#include "loralab/cuda/error.hpp"
#include "loralab/cuda/model/detail.cuh"
#include "loralab/cuda/model/layers.hpp"

namespace loralab::cuda::layers {
namespace detail {

// The CPU's model::detail::kSqrt2OverPi and kGeluCubic (gelu.hpp), rounded to float as its
// float instantiation does; restated so this TU needs no Eigen.
constexpr float kGeluSqrt2OverPi = static_cast<float>(0.79788456080286535588);
constexpr float kGeluCubicF = static_cast<float>(0.044715);
constexpr float kGeluCubic3F = static_cast<float>(3 * 0.044715);

__device__ __forceinline__ float gelu(float x) {
  const float u = kGeluSqrt2OverPi * (x + kGeluCubicF * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}

// sech^2 as 1 - tanh^2 (cosh would overflow for large |x|), as the CPU's gelu_grad.
__device__ __forceinline__ float gelu_grad(float x) {
  const float u = kGeluSqrt2OverPi * (x + kGeluCubicF * x * x * x);
  const float t = tanhf(u);
  const float du = kGeluSqrt2OverPi * (1.0f + kGeluCubic3F * x * x);
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

// Not __restrict__: y may alias x (in place).
template <class T>
__global__ void gelu_forward_kernel(const T* x, T* y, std::int64_t count) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < count;
       e += std::int64_t(gridDim.x) * blockDim.x)
    store(y, e, gelu(load(x, e)));
}

// Not __restrict__: dx may alias dy.
template <class T>
__global__ void gelu_backward_kernel(const T* x, const T* dy, T* dx, std::int64_t count) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < count;
       e += std::int64_t(gridDim.x) * blockDim.x)
    store(dx, e, gelu_grad(load(x, e)) * load(dy, e));
}

}  // namespace detail

template <DeviceScalar T>
void gelu_forward(const T* x, T* y, std::int64_t count, cudaStream_t stream) {
  LORALAB_CHECK(count >= 0, "[loralab.shape] gelu_forward: count=", count, " must be >= 0");
  if (count == 0) return;
  LORALAB_CHECK(x && y, "[loralab.shape] gelu_forward: x and y must be non-null device pointers");
  detail::gelu_forward_kernel<T>
      <<<detail::blocks_for(count), detail::kThreads, 0, stream>>>(x, y, count);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

template <DeviceScalar T>
void gelu_backward(const T* x, const T* dy, T* dx, std::int64_t count, cudaStream_t stream) {
  LORALAB_CHECK(count >= 0, "[loralab.shape] gelu_backward: count=", count, " must be >= 0");
  if (count == 0) return;
  LORALAB_CHECK(x && dy && dx,
                "[loralab.shape] gelu_backward: x, dy and dx must be non-null device pointers");
  detail::gelu_backward_kernel<T>
      <<<detail::blocks_for(count), detail::kThreads, 0, stream>>>(x, dy, dx, count);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

}  // namespace loralab::cuda::layers
