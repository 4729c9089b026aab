/// \file
/// \brief Kernels and launchers of the element-wise helpers in layers.hpp (add, accumulate,
/// fill_rows, convert) and of column_sum, a deterministic two-stage column reduction (nvcc
/// only).
#pragma once

#include "loralab/core/error.hpp"
#include "loralab/cuda/error.hpp"
#include "loralab/cuda/model/detail.cuh"
#include "loralab/cuda/model/layers.hpp"

namespace loralab::cuda::layers {
namespace detail {

// Not __restrict__: y may alias a or b.
template <class T>
__global__ void add_kernel(const T* a, const T* b, T* y, std::int64_t count) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < count;
       e += std::int64_t(gridDim.x) * blockDim.x)
    store(y, e, load(a, e) + load(b, e));
}

template <class T>
__global__ void accumulate_kernel(T* y, const T* x, std::int64_t count) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < count;
       e += std::int64_t(gridDim.x) * blockDim.x)
    store(y, e, load(y, e) + load(x, e));
}

template <class T>
__global__ void fill_rows_kernel(T* __restrict__ y, const T* __restrict__ bias, std::int64_t n,
                                 int d) {
  const std::int64_t total = n * d;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x)
    y[e] = bias[e % d];
}

template <class T>
__global__ void convert_kernel(const float* __restrict__ src, T* __restrict__ dst,
                               std::int64_t count) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < count;
       e += std::int64_t(gridDim.x) * blockDim.x)
    store(dst, e, src[e]);
}

// First stage of column_sum: partials[c*d + j] = sum of x[i, j] over the rows of chunk c, in order.
template <class T>
__global__ void column_partials(const T* __restrict__ x, std::int64_t n, int d, std::int64_t chunks,
                                float* __restrict__ partials) {
  const std::int64_t total = chunks * d;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t c = e / d, j = e % d;
    const std::int64_t end = (c + 1) * kRowsPerChunk < n ? (c + 1) * kRowsPerChunk : n;
    float acc = 0.0f;
    for (std::int64_t i = c * kRowsPerChunk; i < end; ++i) acc += load(x, i * d + j);
    partials[e] = acc;
  }
}

inline void check_count(std::int64_t count, const char* fn) {
  LORALAB_CHECK(count >= 0, "[loralab.shape] ", fn, ": count=", count, " must be >= 0");
}

}  // namespace detail

template <DeviceScalar T>
void add(const T* a, const T* b, T* y, std::int64_t count, cudaStream_t stream) {
  detail::check_count(count, "add");
  if (count == 0) return;
  LORALAB_CHECK(a && b && y, "[loralab.shape] add: a, b and y must be non-null device pointers");
  detail::add_kernel<T><<<detail::blocks_for(count), detail::kThreads, 0, stream>>>(a, b, y, count);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

template <DeviceScalar T>
void accumulate(T* y, const T* x, std::int64_t count, cudaStream_t stream) {
  detail::check_count(count, "accumulate");
  if (count == 0) return;
  LORALAB_CHECK(y && x, "[loralab.shape] accumulate: y and x must be non-null device pointers");
  detail::accumulate_kernel<T>
      <<<detail::blocks_for(count), detail::kThreads, 0, stream>>>(y, x, count);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

template <DeviceScalar T>
void fill_rows(T* y, const T* bias, std::int64_t n, int d, cudaStream_t stream) {
  LORALAB_CHECK(d > 0, "[loralab.shape] fill_rows: d=", d, " must be > 0");
  LORALAB_CHECK(n >= 0, "[loralab.shape] fill_rows: n=", n, " must be >= 0");
  if (n == 0) return;
  LORALAB_CHECK(y && bias,
                "[loralab.shape] fill_rows: y and bias must be non-null device pointers");
  detail::fill_rows_kernel<T>
      <<<detail::blocks_for(n * d), detail::kThreads, 0, stream>>>(y, bias, n, d);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

template <DeviceScalar T>
void column_sum(const T* x, std::int64_t n, int d, float* out, float* scratch,
                cudaStream_t stream) {
  LORALAB_CHECK(d > 0, "[loralab.shape] column_sum: d=", d, " must be > 0");
  LORALAB_CHECK(n >= 0, "[loralab.shape] column_sum: n=", n, " must be >= 0");
  if (n == 0) return;  // out += 0
  LORALAB_CHECK(x && out, "[loralab.shape] column_sum: x and out must be non-null device pointers");
  LORALAB_CHECK(scratch, "[loralab.shape] column_sum: needs scratch of column_sum_scratch(n=", n,
                ", d=", d, ") = ", column_sum_scratch(n, d), " floats, got null");
  const std::int64_t chunks = detail::row_chunks(n);
  detail::column_partials<T>
      <<<detail::blocks_for(chunks * d), detail::kThreads, 0, stream>>>(x, n, d, chunks, scratch);
  LORALAB_CUDA_CHECK(cudaGetLastError());
  detail::add_chunk_sums<<<detail::blocks_for(d), detail::kThreads, 0, stream>>>(scratch, chunks, d,
                                                                                 out);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

template <DeviceScalar T>
void convert(const float* src, T* dst, std::int64_t count, cudaStream_t stream) {
  detail::check_count(count, "convert");
  if (count == 0) return;
  LORALAB_CHECK(src && dst,
                "[loralab.shape] convert: src and dst must be non-null device pointers");
  detail::convert_kernel<T>
      <<<detail::blocks_for(count), detail::kThreads, 0, stream>>>(src, dst, count);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

}  // namespace loralab::cuda::layers
