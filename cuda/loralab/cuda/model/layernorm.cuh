/// \file
/// \brief Kernels and launchers of cuda::layers::layernorm_forward/backward (declared in
/// layers.hpp; nvcc only). One warp per row for the row statistics and dx; dgamma/dbeta are
/// reduced over rows in two fixed-order stages (32-row chunk partials, then chunks in order), so
/// they are deterministic.
#pragma once

#include "loralab/core/error.hpp"
#include "loralab/cuda/error.hpp"
#include "loralab/cuda/model/detail.cuh"
#include "loralab/cuda/model/layers.hpp"

namespace loralab::cuda::layers {
namespace detail {

constexpr int kLnWarpsPerBlock = 8;  // rows per block of the per-row kernels

inline unsigned ln_blocks(std::int64_t n) {
  return blocks_for(n, kLnWarpsPerBlock);  // one warp per row, grid-stride beyond the cap
}

// Two passes as the CPU: mean, then the mean of squared deviations (biased variance).
template <class T>
__global__ void layernorm_forward_rows(const T* __restrict__ x, const T* __restrict__ gamma,
                                       const T* __restrict__ beta, float eps, T* __restrict__ y,
                                       float* __restrict__ mean, float* __restrict__ rstd,
                                       std::int64_t n, int d) {
  const int lane = threadIdx.x % kWarp;
  const std::int64_t warps = std::int64_t(gridDim.x) * kLnWarpsPerBlock;
  for (std::int64_t i = blockIdx.x * std::int64_t(kLnWarpsPerBlock) + threadIdx.x / kWarp; i < n;
       i += warps) {  // uniform per warp
    const T* xi = x + i * d;
    float s = 0.0f;
    for (int j = lane; j < d; j += kWarp) s += load(xi, j);
    const float mu = warp_sum(s) / float(d);
    float ss = 0.0f;
    for (int j = lane; j < d; j += kWarp) {
      const float c = load(xi, j) - mu;
      ss += c * c;
    }
    const float rs = 1.0f / sqrtf(warp_sum(ss) / float(d) + eps);
    T* yi = y + i * d;
    for (int j = lane; j < d; j += kWarp)
      store(yi, j, (load(xi, j) - mu) * rs * load(gamma, j) + load(beta, j));
    if (lane == 0) {
      mean[i] = mu;
      rstd[i] = rs;
    }
  }
}

// dx += rstd (dnorm - mean(dnorm) - norm mean(dnorm norm)), dnorm = dy gamma. dx and dy are not
// __restrict__: each entry is read before the same thread writes it, so dx == dy stays correct
// (the launcher queues this kernel after the dgamma/dbeta partials, which also read dy).
template <class T>
__global__ void layernorm_backward_rows(const T* dy, const T* __restrict__ x,
                                        const T* __restrict__ gamma, const float* __restrict__ mean,
                                        const float* __restrict__ rstd, T* dx, std::int64_t n,
                                        int d) {
  const int lane = threadIdx.x % kWarp;
  const std::int64_t warps = std::int64_t(gridDim.x) * kLnWarpsPerBlock;
  for (std::int64_t i = blockIdx.x * std::int64_t(kLnWarpsPerBlock) + threadIdx.x / kWarp; i < n;
       i += warps) {
    const T* xi = x + i * d;
    const T* dyi = dy + i * d;
    const float mu = mean[i], rs = rstd[i];
    float sd = 0.0f, sdn = 0.0f;
    for (int j = lane; j < d; j += kWarp) {
      const float norm = (load(xi, j) - mu) * rs;
      const float dnorm = load(dyi, j) * load(gamma, j);
      sd += dnorm;
      sdn += dnorm * norm;
    }
    const float dnorm_mean = warp_sum(sd) / float(d);
    const float dnorm_norm_mean = warp_sum(sdn) / float(d);
    T* dxi = dx + i * d;
    for (int j = lane; j < d; j += kWarp) {
      const float norm = (load(xi, j) - mu) * rs;
      const float dnorm = load(dyi, j) * load(gamma, j);
      store(dxi, j, load(dxi, j) + rs * (dnorm - dnorm_mean - norm * dnorm_norm_mean));
    }
  }
}

// First stage of dgamma/dbeta: per 32-row chunk c and column j, partials[c*d + j] = sum of
// norm * dy and partials[(chunks + c)*d + j] = sum of dy, rows in order.
template <class T>
__global__ void layernorm_param_partials(const T* __restrict__ dy, const T* __restrict__ x,
                                         const float* __restrict__ mean,
                                         const float* __restrict__ rstd, std::int64_t n, int d,
                                         std::int64_t chunks, float* __restrict__ partials) {
  const std::int64_t total = chunks * d;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t c = e / d, j = e % d;
    const std::int64_t end = (c + 1) * kRowsPerChunk < n ? (c + 1) * kRowsPerChunk : n;
    float dg = 0.0f, db = 0.0f;
    for (std::int64_t i = c * kRowsPerChunk; i < end; ++i) {
      const float g = load(dy, i * d + j);
      dg += (load(x, i * d + j) - mean[i]) * rstd[i] * g;
      db += g;
    }
    partials[e] = dg;
    partials[total + e] = db;
  }
}

}  // namespace detail

template <DeviceScalar T>
void layernorm_forward(const T* x, const T* gamma, const T* beta, float eps, T* y, float* mean,
                       float* rstd, std::int64_t n, int d, cudaStream_t stream) {
  constexpr const char* fn = "layernorm_forward";
  LORALAB_CHECK(d > 0, "[loralab.shape] ", fn, ": d=", d, " must be > 0");
  LORALAB_CHECK(n >= 0, "[loralab.shape] ", fn, ": n=", n, " must be >= 0");
  LORALAB_CHECK(eps >= 0.0f, "[loralab.config] ", fn, ": eps=", eps, " must be >= 0");
  if (n == 0) return;
  LORALAB_CHECK(x && gamma && beta && y && mean && rstd, "[loralab.shape] ", fn,
                ": x, gamma, beta, y, mean and rstd must be non-null device pointers");
  LORALAB_CHECK(static_cast<const void*>(x) != static_cast<const void*>(y), "[loralab.shape] ", fn,
                ": y must not alias x");
  detail::layernorm_forward_rows<T>
      <<<detail::ln_blocks(n), detail::kLnWarpsPerBlock * detail::kWarp, 0, stream>>>(
          x, gamma, beta, eps, y, mean, rstd, n, d);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

template <DeviceScalar T>
void layernorm_backward(const T* dy, const T* x, const T* gamma, const float* mean,
                        const float* rstd, T* dx, float* dgamma, float* dbeta, std::int64_t n,
                        int d, float* scratch, cudaStream_t stream) {
  constexpr const char* fn = "layernorm_backward";
  LORALAB_CHECK(d > 0, "[loralab.shape] ", fn, ": d=", d, " must be > 0");
  LORALAB_CHECK(n >= 0, "[loralab.shape] ", fn, ": n=", n, " must be >= 0");
  LORALAB_CHECK((dgamma == nullptr) == (dbeta == nullptr), "[loralab.shape] ", fn,
                ": dgamma and dbeta must be both non-null or both null");
  if (n == 0) return;
  LORALAB_CHECK(dy && x && gamma && mean && rstd && dx, "[loralab.shape] ", fn,
                ": dy, x, gamma, mean, rstd and dx must be non-null device pointers");
  LORALAB_CHECK(!dgamma || scratch, "[loralab.shape] ", fn,
                ": dgamma/dbeta need scratch of layernorm_backward_scratch(n=", n, ", d=", d,
                ") = ", layernorm_backward_scratch(n, d), " floats, got null");
  // dgamma/dbeta first: they read dy, which the dx kernel overwrites when dx == dy.
  if (dgamma) {
    const std::int64_t chunks = detail::row_chunks(n);
    detail::layernorm_param_partials<T>
        <<<detail::blocks_for(chunks * d), detail::kThreads, 0, stream>>>(dy, x, mean, rstd, n, d,
                                                                          chunks, scratch);
    LORALAB_CUDA_CHECK(cudaGetLastError());
    detail::add_chunk_sums<<<detail::blocks_for(d), detail::kThreads, 0, stream>>>(scratch, chunks,
                                                                                   d, dgamma);
    LORALAB_CUDA_CHECK(cudaGetLastError());
    detail::add_chunk_sums<<<detail::blocks_for(d), detail::kThreads, 0, stream>>>(
        scratch + chunks * d, chunks, d, dbeta);
    LORALAB_CUDA_CHECK(cudaGetLastError());
  }
  detail::layernorm_backward_rows<T>
      <<<detail::ln_blocks(n), detail::kLnWarpsPerBlock * detail::kWarp, 0, stream>>>(
          dy, x, gamma, mean, rstd, dx, n, d);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

}  // namespace loralab::cuda::layers
