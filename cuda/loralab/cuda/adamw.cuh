/// \file
/// \brief Definitions of cuda::AdamW (declared in adamw.hpp): the fused update kernel and the host
/// members. nvcc only. The member definitions are not inline, so this header must be included in
/// exactly one translation unit of a program (cuda/instances/adamw.cu in loralab_cuda_instances);
/// everything else includes adamw.hpp and links that library.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cuda/adamw.hpp"
#include "loralab/cuda/error.hpp"
#include "loralab/optim/adamw.hpp"

namespace loralab::cuda {

namespace adamw_impl {

/// What the kernel knows of one tensor (device pointers; index null for an unmasked tensor).
struct TensorDesc {
  float* value;
  const float* grad;
  bf16* shadow;                // null: no bf16 copy to refresh
  const std::uint32_t* index;  // null: entry j of the moments is entry j of the tensor
  float* m;
  float* v;
  std::uint64_t count;  // entries updated (trainable entries of a masked tensor)
};

/// A block's share of the work: entries [begin, end) of the packed state of tensor `tensor`.
struct Chunk {
  std::uint64_t tensor;
  std::uint64_t begin;
  std::uint64_t end;
};

inline constexpr std::uint64_t kChunkEntries = 4096;  // per block: 16 entries per thread
inline constexpr unsigned kThreads = 256;

// The chunk table follows the descriptors in table_, at the next multiple of its alignment.
inline std::size_t chunk_offset(std::size_t tensors) {
  const std::size_t bytes = tensors * sizeof(TensorDesc);
  return (bytes + alignof(Chunk) - 1) / alignof(Chunk) * alignof(Chunk);
}

/// One tensor's coefficients of the current step (its own counter sets the bias corrections) and
/// whether it steps at all (layer sampling). Uploaded by every step.
struct TensorStep {
  AdamWStepCoefficients c;
  std::uint32_t active;
};

// One block per chunk; the threads of the block stride through it. The coefficients are the same
// doubles as the CPU's (made on the host per tensor), rounded to float by the same shared
// adamw_update, so both backends do the same float operations in the same order. The blocks of
// an inactive tensor return at once: its values, moments and shadow are not touched.
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(const TensorDesc* __restrict__ tensors, const Chunk* __restrict__ chunks,
                 const TensorStep* __restrict__ steps, float grad_scale, bool scaled) {
  const Chunk chunk = chunks[blockIdx.x];
  const TensorStep s = steps[chunk.tensor];
  if (!s.active) return;
  const TensorDesc d = tensors[chunk.tensor];
  for (std::uint64_t j = chunk.begin + threadIdx.x; j < chunk.end; j += blockDim.x) {
    const std::uint64_t i = d.index ? d.index[j] : j;  // frozen entries are never read or written
    float p = d.value[i];
    float m = d.m[j];
    float v = d.v[j];
    // The CPU multiplies only when the scale is not 1: the same float operations here.
    adamw_update<float>(p, scaled ? d.grad[i] * grad_scale : d.grad[i], m, v, s.c);
    d.value[i] = p;
    d.m[j] = m;
    d.v[j] = v;
    if (d.shadow) d.shadow[i] = __float2bfloat16(p);  // round to nearest even, as from_float
  }
}

// partial[block] = sum of grad^2 over the block's chunk (trainable entries), reduced in a fixed
// order (shared-memory tree), so the host's sum over blocks is the same run to run.
__global__ void __launch_bounds__(kThreads)
    grad_squares_kernel(const TensorDesc* __restrict__ tensors, const Chunk* __restrict__ chunks,
                        double* __restrict__ partial) {
  __shared__ double buf[kThreads];
  const Chunk chunk = chunks[blockIdx.x];
  const TensorDesc d = tensors[chunk.tensor];
  double acc = 0;
  for (std::uint64_t j = chunk.begin + threadIdx.x; j < chunk.end; j += blockDim.x) {
    const double g = d.grad[d.index ? d.index[j] : j];
    acc += g * g;
  }
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (unsigned s = kThreads / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

}  // namespace adamw_impl

AdamW::AdamW(std::vector<DeviceParamTensor> params, const AdamWConfig& cfg, cudaStream_t stream)
    : cfg_(cfg), lr_(cfg.lr), stream_(stream) {
  using adamw_impl::Chunk;
  using adamw_impl::TensorDesc;
  loralab::validate(cfg);
  for (std::size_t k = 0; k < params.size(); ++k) {
    const DeviceParamTensor& p = params[k];
    LORALAB_CHECK(
        p.size == 0 || (p.value != nullptr && p.grad != nullptr), "[loralab.config] AdamW tensor ",
        k, " has ", p.size,
        " entries but a null value or gradient pointer (value=", static_cast<const void*>(p.value),
        " grad=", static_cast<const void*>(p.grad), ")");
  }

  slots_.reserve(params.size());
  for (std::size_t k = 0; k < params.size(); ++k) {
    Slot slot;
    slot.tensor = params[k];
    slot.count = slot.tensor.size;
    if (slot.tensor.mask != nullptr && slot.tensor.size > 0) {
      // The index list is what the kernel walks; 32 bits halve its footprint (adapters are far
      // below 2^32 entries per tensor).
      LORALAB_CHECK(slot.tensor.size <= std::size_t(std::numeric_limits<std::uint32_t>::max()) + 1,
                    "[loralab.shape] AdamW tensor ", k, " has ", slot.tensor.size,
                    " entries; a masked tensor is limited to 2^32 (32-bit index list)");
      std::vector<std::uint8_t> mask(slot.tensor.size);
      LORALAB_CUDA_CHECK(cudaMemcpyAsync(mask.data(), slot.tensor.mask, mask.size(),
                                         cudaMemcpyDeviceToHost, stream_));
      LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
      std::vector<std::uint32_t> index;
      for (std::size_t i = 0; i < mask.size(); ++i)
        if (mask[i]) index.push_back(static_cast<std::uint32_t>(i));
      slot.count = index.size();
      slot.index = DeviceBuffer<std::uint32_t>::from_host(index, stream_);
    }
    slot.m = DeviceBuffer<float>(slot.count);
    slot.v = DeviceBuffer<float>(slot.count);
    slot.m.zero(stream_);
    slot.v.zero(stream_);
    slots_.push_back(std::move(slot));
  }

  // Descriptors, then chunks, in one upload: the step itself copies nothing to the device.
  std::vector<TensorDesc> tensors;
  std::vector<Chunk> chunks;
  for (std::size_t k = 0; k < slots_.size(); ++k) {
    Slot& s = slots_[k];
    tensors.push_back(TensorDesc{s.tensor.value, s.tensor.grad, s.tensor.shadow,
                                 s.index.empty() ? nullptr : s.index.data(), s.m.data(), s.v.data(),
                                 s.count});
    for (std::uint64_t b = 0; b < s.count; b += adamw_impl::kChunkEntries)
      chunks.push_back(
          Chunk{k, b, std::min<std::uint64_t>(b + adamw_impl::kChunkEntries, s.count)});
  }
  LORALAB_CHECK(chunks.size() <= std::size_t(std::numeric_limits<int>::max()),
                "[loralab.shape] AdamW needs ", chunks.size(),
                " blocks, more than a grid dimension holds");
  chunks_ = chunks.size();
  if (chunks_ == 0) return;  // nothing to update: step() launches nothing
  const std::size_t offset = adamw_impl::chunk_offset(tensors.size());
  std::vector<unsigned char> table(offset + chunks.size() * sizeof(Chunk), 0);
  std::memcpy(table.data(), tensors.data(), tensors.size() * sizeof(TensorDesc));
  std::memcpy(table.data() + offset, chunks.data(), chunks.size() * sizeof(Chunk));
  table_ = DeviceBuffer<unsigned char>::from_host(table, stream_);
  coef_ = DeviceBuffer<unsigned char>(slots_.size() * sizeof(adamw_impl::TensorStep));
}

void AdamW::upload_descriptors() {
  std::vector<adamw_impl::TensorDesc> tensors;
  for (Slot& s : slots_)
    tensors.push_back(adamw_impl::TensorDesc{s.tensor.value, s.tensor.grad, s.tensor.shadow,
                                             s.index.empty() ? nullptr : s.index.data(), s.m.data(),
                                             s.v.data(), s.count});
  // Stream-ordered after every kernel that read the old descriptors; a pageable source is staged
  // before the call returns, so the vector may go away.
  if (!tensors.empty() && chunks_ > 0)
    LORALAB_CUDA_CHECK(cudaMemcpyAsync(table_.data(), tensors.data(),
                                       tensors.size() * sizeof(adamw_impl::TensorDesc),
                                       cudaMemcpyHostToDevice, stream_));
  descriptors_stale_ = false;
}

void AdamW::reset_state(std::size_t k) {
  Slot& s = slots_.at(k);
  if (!s.held) {
    s.m = DeviceBuffer<float>(s.count);
    s.v = DeviceBuffer<float>(s.count);
    s.held = true;
    descriptors_stale_ = true;
  }
  s.m.zero(stream_);
  s.v.zero(stream_);
  s.t = 0;
}

void AdamW::release_state(std::size_t k) {
  Slot& s = slots_.at(k);
  s.t = 0;
  if (!s.held) return;
  s.m = DeviceBuffer<float>();  // cudaFree waits for the kernels that may still use them
  s.v = DeviceBuffer<float>();
  s.held = false;
  descriptors_stale_ = true;
}

void AdamW::step(double grad_scale) {
  ++t_;
  std::vector<adamw_impl::TensorStep> steps(slots_.size());
  for (std::size_t k = 0; k < slots_.size(); ++k) {
    Slot& s = slots_[k];
    if (!s.active) continue;      // zero-initialized: active = 0
    if (!s.held) reset_state(k);  // dropped earlier and active again: fresh state
    steps[k] = adamw_impl::TensorStep{AdamWStepCoefficients::make(cfg_, lr_, ++s.t), 1u};
  }
  if (chunks_ == 0) return;
  if (descriptors_stale_) upload_descriptors();
  LORALAB_CUDA_CHECK(cudaMemcpyAsync(coef_.data(), steps.data(),
                                     steps.size() * sizeof(adamw_impl::TensorStep),
                                     cudaMemcpyHostToDevice, stream_));
  const auto* tensors = reinterpret_cast<const adamw_impl::TensorDesc*>(table_.data());
  const auto* chunks = reinterpret_cast<const adamw_impl::Chunk*>(
      table_.data() + adamw_impl::chunk_offset(slots_.size()));
  adamw_impl::adamw_kernel<<<static_cast<unsigned>(chunks_), adamw_impl::kThreads, 0, stream_>>>(
      tensors, chunks, reinterpret_cast<const adamw_impl::TensorStep*>(coef_.data()),
      static_cast<float>(grad_scale), grad_scale != 1.0);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

double AdamW::grad_squared_norm() {
  if (chunks_ == 0) return 0.0;
  partial_.reserve_discard(chunks_);
  const auto* tensors = reinterpret_cast<const adamw_impl::TensorDesc*>(table_.data());
  const auto* chunks = reinterpret_cast<const adamw_impl::Chunk*>(
      table_.data() + adamw_impl::chunk_offset(slots_.size()));
  adamw_impl::
      grad_squares_kernel<<<static_cast<unsigned>(chunks_), adamw_impl::kThreads, 0, stream_>>>(
          tensors, chunks, partial_.data());
  LORALAB_CUDA_CHECK(cudaGetLastError());
  std::vector<double> host(chunks_);
  LORALAB_CUDA_CHECK(cudaMemcpyAsync(host.data(), partial_.data(), chunks_ * sizeof(double),
                                     cudaMemcpyDeviceToHost, stream_));
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  double sum = 0;
  for (double p : host) sum += p;
  return sum;
}

void AdamW::restore(std::int64_t steps, std::size_t k, std::span<const float> m,
                    std::span<const float> v) {
  const bool dropped = k < slots_.size() && m.empty() && v.empty() && slots_[k].count > 0;
  LORALAB_CHECK(
      dropped || (k < slots_.size() && m.size() == slots_[k].count && v.size() == slots_[k].count),
      "[loralab.state] AdamW restore: tensor ", k, " expects ",
      k < slots_.size() ? slots_[k].count : 0, " moments, got ", m.size(), " and ", v.size());
  t_ = steps;
  if (dropped) {  // the checkpoint was written while this tensor's state was dropped
    release_state(k);
    return;
  }
  reset_state(k);
  slots_[k].t = steps;
  if (m.empty()) return;
  slots_[k].m.upload(m, stream_);
  slots_[k].v.upload(v, stream_);
}

std::int64_t AdamW::state_bytes() const {
  std::int64_t bytes = 0;
  for (const Slot& s : slots_)
    bytes += static_cast<std::int64_t>(s.m.bytes() + s.v.bytes() + s.index.bytes());
  return bytes;
}

std::vector<float> AdamW::first_moment(std::size_t k) const {
  return slots_.at(k).m.to_host(stream_);
}

std::vector<float> AdamW::second_moment(std::size_t k) const {
  return slots_.at(k).v.to_host(stream_);
}

}  // namespace loralab::cuda
