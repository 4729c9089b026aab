/// \file
/// \brief Kernels and definitions of the device dropout masks (declared in masks.hpp). nvcc only.
/// The definitions are not inline, so this header must be included in exactly one translation
/// unit of a program (cuda/instances/dropout.cu in loralab_cuda_instances); everything else
/// includes masks.hpp and links that library.
///
/// Each kernel thread decides its entries with the shared LORALAB_HOST_DEVICE predicates of
/// include/loralab/dropout/masks.hpp (one Philox block per decision: the masks are small next to
/// the GEMMs they feed, and a shared predicate is what makes them the CPU's bit for bit).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cuda/dropout/masks.hpp"
#include "loralab/cuda/error.hpp"

namespace loralab::cuda {

namespace mask_kernels {

using dropconnect_detail::Entry;

constexpr int kThreads = 256;  // element-wise, memory bound (plus one Philox block per entry)

inline unsigned blocks_for(std::int64_t work) {
  const std::int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));  // grid-stride
}

__global__ void attention_keep(std::uint8_t* __restrict__ keep, dropout::MaskKey key,
                               dropout::Pattern pattern, double rate, int heads, int seq,
                               std::int64_t total) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t j = e % seq, row = e / seq, i = row % seq, bh = row / seq;
    const std::int64_t h = bh % heads, b = bh / heads;
    keep[e] = dropout::attention_dropped(key, pattern, rate, heads, seq, b, h, i, j) ? 0 : 1;
  }
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
__global__ void hidden_dropout(const T* x, T* y, std::int64_t rows, std::int64_t cols,
                               dropout::MaskKey key, dropout::Pattern pattern, double rate, int seq,
                               float keep) {
  const std::int64_t total = rows * cols;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const bool drop = dropout::hidden_dropped(key, pattern, rate, seq, cols, e / cols, e % cols);
    const float v = drop ? 0.0f : load(x, e) * keep;
    if constexpr (std::is_same_v<T, float>) {
      y[e] = v;
    } else {
      y[e] = __float2bfloat16(v);
    }
  }
}

enum Op : int { kApply = 0, kRestore = 1, kStash = 2, kFinish = 3 };

// The multiplier of entry e of a module: 0 (dropped) or 1/(1-p).
__device__ __forceinline__ float drop_connect_scale(const Entry& en, std::int64_t e,
                                                    const dropout::MaskKey& key, bool column) {
  const std::uint64_t counter = !column         ? std::uint64_t(e)
                                : e < en.a_size ? std::uint64_t(e % en.in)
                                                : std::uint64_t(en.in + (e - en.a_size) / en.rank);
  return dropout::dropped_at(key, counter, en.rate) ? 0.0f : en.keep;
}

// grid.y walks the modules (grid-stride beyond 65535), grid.x the entries of one module.
__global__ void drop_connect(const Entry* __restrict__ table, int count, float* __restrict__ saved,
                             bf16* __restrict__ saved_shadow, float* __restrict__ stash,
                             std::uint64_t seed, bool column, std::uint32_t branch,
                             std::uint64_t step, int op) {
  for (int y = blockIdx.y; y < count; y += gridDim.y) {
    const Entry en = table[y];
    const dropout::MaskKey key{seed, dropout::Position::adapter_weights, en.module, branch, step};
    for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < en.size;
         e += std::int64_t(gridDim.x) * blockDim.x) {
      const std::int64_t s = en.offset + e;
      switch (op) {
        case kApply: {
          const float v = en.values[e];
          saved[s] = v;
          const float m = v * drop_connect_scale(en, e, key, column);
          en.values[e] = m;
          if (en.shadow) {
            saved_shadow[s] = en.shadow[e];
            en.shadow[e] = __float2bfloat16(m);
          }
          break;
        }
        case kStash:
          stash[s] = en.grads[e];
          en.grads[e] = 0.0f;
          break;
        case kFinish:
          en.grads[e] = en.grads[e] * drop_connect_scale(en, e, key, column) + stash[s];
          [[fallthrough]];
        default:  // kRestore
          en.values[e] = saved[s];
          if (en.shadow) en.shadow[e] = saved_shadow[s];
      }
    }
  }
}

}  // namespace mask_kernels

void attention_keep_flags(std::uint8_t* keep, const dropout::MaskKey& key, dropout::Pattern pattern,
                          double rate, int batch, int heads, int seq, cudaStream_t stream) {
  LORALAB_CHECK(batch > 0 && heads > 0 && seq > 0,
                "[loralab.shape] attention_keep_flags: B=", batch, ", heads=", heads, ", T=", seq,
                " must all be > 0");
  LORALAB_CHECK(keep, "[loralab.shape] attention_keep_flags: keep must be a device pointer");
  const std::int64_t total = std::int64_t(batch) * heads * seq * seq;
  mask_kernels::
      attention_keep<<<mask_kernels::blocks_for(total), mask_kernels::kThreads, 0, stream>>>(
          keep, key, pattern, rate, heads, seq, total);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

template <DeviceScalar T>
void hidden_dropout(const T* x, T* y, std::int64_t rows, std::int64_t cols,
                    const dropout::MaskKey& key, dropout::Pattern pattern, double rate, int seq,
                    cudaStream_t stream) {
  LORALAB_CHECK(rows >= 0 && cols > 0 && seq > 0 && rows % seq == 0,
                "[loralab.shape] hidden_dropout: rows=", rows, ", cols=", cols, ", T=", seq,
                " (rows must be a multiple of T)");
  if (rows == 0) return;
  LORALAB_CHECK(x && y, "[loralab.shape] hidden_dropout: x and y must be device pointers");
  const float keep = float(dropout::hidden_keep_scale(pattern, rate, seq));
  mask_kernels::hidden_dropout<T>
      <<<mask_kernels::blocks_for(rows * cols), mask_kernels::kThreads, 0, stream>>>(
          x, y, rows, cols, key, pattern, rate, seq, keep);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

template void hidden_dropout<float>(const float*, float*, std::int64_t, std::int64_t,
                                    const dropout::MaskKey&, dropout::Pattern, double, int,
                                    cudaStream_t);
template void hidden_dropout<bf16>(const bf16*, bf16*, std::int64_t, std::int64_t,
                                   const dropout::MaskKey&, dropout::Pattern, double, int,
                                   cudaStream_t);

DropConnect::DropConnect(std::span<const DropConnectFactors> factors, dropout::Pattern pattern,
                         std::uint64_t seed, cudaStream_t stream)
    : stream_(stream), pattern_(pattern), seed_(seed) {
  LORALAB_CHECK(pattern != dropout::Pattern::span,
                "[loralab.config] DropConnect: patterns element and column only");
  std::int64_t offset = 0;
  bool shadows = false;
  for (const DropConnectFactors& f : factors) {
    LORALAB_CHECK(f.rate > 0.0 && f.rate < 1.0, "[loralab.config] DropConnect: module ", f.module,
                  " has rate ", f.rate, " outside (0, 1)");
    LORALAB_CHECK(f.values && f.grads && f.rank > 0 && f.in > 0 && f.out > 0,
                  "[loralab.shape] DropConnect: module ", f.module,
                  " needs values, gradients and a positive shape");
    dropconnect_detail::Entry e;
    e.values = f.values;
    e.shadow = f.shadow;
    e.grads = f.grads;
    e.offset = offset;
    e.a_size = f.rank * f.in;
    e.size = e.a_size + f.out * f.rank;
    e.rank = f.rank;
    e.in = f.in;
    e.module = f.module;
    e.rate = f.rate;
    e.keep = float(1.0 / (1.0 - f.rate));
    offset += e.size;
    max_size_ = std::max(max_size_, e.size);
    shadows = shadows || f.shadow;
    host_.push_back(e);
  }
  if (host_.empty()) return;
  table_ = DeviceBuffer<dropconnect_detail::Entry>::from_host(host_, stream_);
  saved_ = DeviceBuffer<float>(std::size_t(offset));
  stash_ = DeviceBuffer<float>(std::size_t(offset));
  if (shadows) saved_shadow_ = DeviceBuffer<bf16>(std::size_t(offset));
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void DropConnect::launch(int op) {
  if (host_.empty()) return;
  const int count = int(host_.size());
  const dim3 grid(std::min(mask_kernels::blocks_for(max_size_), 4096u),
                  unsigned(std::min(count, 65535)));
  mask_kernels::drop_connect<<<grid, mask_kernels::kThreads, 0, stream_>>>(
      table_.data(), count, saved_.data(), saved_shadow_.data(), stash_.data(), seed_,
      pattern_ == dropout::Pattern::column, pass_.branch, pass_.step, op);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

void DropConnect::apply(const Pass& pass) {
  if (applied_) return;
  pass_ = pass;
  launch(mask_kernels::kApply);
  applied_ = true;
  stashed_ = false;
}

void DropConnect::restore() {
  if (!applied_) return;
  launch(mask_kernels::kRestore);
  applied_ = false;
}

void DropConnect::stash_grads() {
  LORALAB_CHECK(applied_, "[loralab.state] DropConnect::stash_grads before apply");
  launch(mask_kernels::kStash);
  stashed_ = true;
}

void DropConnect::finish() {
  LORALAB_CHECK(applied_ && stashed_,
                "[loralab.state] DropConnect::finish without apply and stash_grads");
  launch(mask_kernels::kFinish);
  applied_ = false;
  stashed_ = false;
}

std::int64_t DropConnect::bytes() const {
  return std::int64_t(table_.bytes() + saved_.bytes() + stash_.bytes() + saved_shadow_.bytes());
}

}  // namespace loralab::cuda
