/// \file
/// \brief `LORALAB_INSTANTIATE_LAYERS(T)`: explicit instantiation of every launcher of
/// layers.hpp for one element type (used by cuda/instances/model_{f32,bf16}.cu). nvcc only.
#pragma once

#include "loralab/cuda/model/attention.cuh"
#include "loralab/cuda/model/consistency.cuh"
#include "loralab/cuda/model/embedding.cuh"
#include "loralab/cuda/model/gelu.cuh"
#include "loralab/cuda/model/layernorm.cuh"
#include "loralab/cuda/model/loss.cuh"
#include "loralab/cuda/model/residual.cuh"

// clang-format off
#define LORALAB_INSTANTIATE_LAYERS(T) \
  template void ::loralab::cuda::layers::layernorm_forward<T>(const T*, const T*, const T*, float, T*, float*, float*, \
                                         std::int64_t, int, cudaStream_t); \
  template void ::loralab::cuda::layers::layernorm_backward<T>(const T*, const T*, const T*, const float*, const float*, \
                                          T*, float*, float*, std::int64_t, int, float*, \
                                          cudaStream_t); \
  template void ::loralab::cuda::layers::gelu_forward<T>(const T*, T*, std::int64_t, cudaStream_t); \
  template void ::loralab::cuda::layers::gelu_backward<T>(const T*, const T*, T*, std::int64_t, cudaStream_t); \
  template void ::loralab::cuda::layers::add<T>(const T*, const T*, T*, std::int64_t, cudaStream_t); \
  template void ::loralab::cuda::layers::accumulate<T>(T*, const T*, std::int64_t, cudaStream_t); \
  template void ::loralab::cuda::layers::fill_rows<T>(T*, const T*, std::int64_t, int, cudaStream_t); \
  template void ::loralab::cuda::layers::column_sum<T>(const T*, std::int64_t, int, float*, float*, cudaStream_t); \
  template void ::loralab::cuda::layers::convert<T>(const float*, T*, std::int64_t, cudaStream_t); \
  template void ::loralab::cuda::layers::embedding_forward<T>(const std::int32_t*, const T*, const T*, T*, int, int, int, \
                                         cudaStream_t); \
  template void ::loralab::cuda::layers::embedding_backward<T>(const T*, const std::int32_t*, float*, float*, int, int, \
                                          int, cudaStream_t); \
  template void ::loralab::cuda::layers::cross_entropy_forward<T>(const T*, const std::int32_t*, std::int64_t, int, float*, \
                                             float*, cudaStream_t); \
  template void ::loralab::cuda::layers::cross_entropy_backward<T>(T*, const std::int32_t*, const float*, std::int64_t, \
                                              int, float, cudaStream_t); \
  template void ::loralab::cuda::layers::consistency_forward<T>(const T*, const T*, const std::int32_t*, std::int64_t, \
                                           int, bool, float*, float*, float*, cudaStream_t); \
  template void ::loralab::cuda::layers::consistency_backward<T>(T*, const T*, const std::int32_t*, const float*, \
                                            const float*, const float*, std::int64_t, int, bool, \
                                            float, float, cudaStream_t); \
  template void ::loralab::cuda::layers::attention_forward<T>(const T*, int, int, int, int, T*, T*, \
                                         const ::loralab::cuda::layers::AttentionHooks&, ::loralab::cuda::layers::AttentionScratch<T>&, \
                                         cublasHandle_t, cudaStream_t); \
  template void ::loralab::cuda::layers::attention_backward<T>(const T*, const T*, const T*, int, int, int, int, T*, \
                                          const ::loralab::cuda::layers::AttentionHooks&, ::loralab::cuda::layers::AttentionScratch<T>&, \
                                          cublasHandle_t, cudaStream_t);
// clang-format on
