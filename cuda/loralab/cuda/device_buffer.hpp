/// \file
/// \brief RAII device memory and streams: nothing leaks when an exception unwinds.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cuda/error.hpp"

namespace loralab::cuda {

/// \ingroup cuda
/// \brief Bytes held by every DeviceBuffer of the process: now and at the peak since the last
/// reset_device_memory_peak(). Library workspaces (cuBLAS) are not included.
struct DeviceMemory {
  std::int64_t current = 0;  ///< bytes allocated now
  std::int64_t peak = 0;     ///< most bytes allocated at once
};

namespace memory_detail {
inline std::atomic<std::int64_t> g_device_bytes{0};
inline std::atomic<std::int64_t> g_device_peak{0};
inline void count_device_bytes(std::int64_t delta) {
  const std::int64_t now = g_device_bytes.fetch_add(delta) + delta;
  std::int64_t peak = g_device_peak.load();
  while (now > peak && !g_device_peak.compare_exchange_weak(peak, now)) {
  }
}
}  // namespace memory_detail

/// \ingroup cuda
/// \brief What DeviceBuffers hold now and at their peak (per-arm peak memory in ablate).
inline DeviceMemory device_memory() {
  return {memory_detail::g_device_bytes.load(), memory_detail::g_device_peak.load()};
}

/// \ingroup cuda
/// \brief Starts a new peak measurement at the current allocation.
inline void reset_device_memory_peak() {
  memory_detail::g_device_peak.store(memory_detail::g_device_bytes.load());
}

/// \ingroup cuda
/// \brief An owning, move-only array of `T` in device memory.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  /// \brief Allocates n elements (uninitialized). \throws Error naming cudaMalloc on failure.
  explicit DeviceBuffer(std::size_t n) { allocate(n); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  /// \brief Takes the other's allocation.
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  /// \brief Frees ours, takes the other's.
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }

  /// \brief Device pointer (null when empty).
  T* data() { return ptr_; }
  /// \brief Device pointer (null when empty).
  const T* data() const { return ptr_; }
  /// \brief Number of elements.
  std::size_t size() const { return size_; }
  /// \brief Number of bytes.
  std::size_t bytes() const { return size_ * sizeof(T); }
  /// \brief True when nothing is allocated.
  bool empty() const { return size_ == 0; }

  /// \brief Ensures room for n elements; reallocates (contents lost) only when growing.
  void reserve_discard(std::size_t n) {
    if (n <= size_) return;
    release();
    allocate(n);
  }

  /// \brief Copies host data in; sizes must match. Synchronous on `stream`.
  void upload(std::span<const T> host, cudaStream_t stream = nullptr) {
    LORALAB_CHECK(host.size() == size_, "[loralab.cuda] upload of ", host.size(),
                  " elements into a buffer of ", size_);
    LORALAB_CUDA_CHECK(cudaMemcpyAsync(ptr_, host.data(), bytes(), cudaMemcpyHostToDevice, stream));
    LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  /// \brief Copies everything out to a new host vector (waits for `stream`).
  std::vector<T> to_host(cudaStream_t stream = nullptr) const {
    std::vector<T> host(size_);
    if (size_ == 0) return host;
    LORALAB_CUDA_CHECK(cudaMemcpyAsync(host.data(), ptr_, bytes(), cudaMemcpyDeviceToHost, stream));
    LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream));
    return host;
  }
  /// \brief Sets every byte to zero (asynchronous on `stream`).
  void zero(cudaStream_t stream = nullptr) {
    if (size_) LORALAB_CUDA_CHECK(cudaMemsetAsync(ptr_, 0, bytes(), stream));
  }
  /// \brief A buffer holding a copy of `host`.
  static DeviceBuffer from_host(std::span<const T> host, cudaStream_t stream = nullptr) {
    DeviceBuffer b(host.size());
    if (!host.empty()) b.upload(host, stream);
    return b;
  }

 private:
  void allocate(std::size_t n) {
    if (n == 0) return;
    void* p = nullptr;
    LORALAB_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
    ptr_ = static_cast<T*>(p);
    size_ = n;
    memory_detail::count_device_bytes(std::int64_t(n * sizeof(T)));
  }
  void release() noexcept {
    if (ptr_) {
      cudaFree(ptr_);  // no throw from a destructor path; cudaFree cannot fail usefully here
      memory_detail::count_device_bytes(-std::int64_t(size_ * sizeof(T)));
    }
    ptr_ = nullptr;
    size_ = 0;
  }
  T* ptr_ = nullptr;
  std::size_t size_ = 0;
};

/// \ingroup cuda
/// \brief An owned, non-blocking CUDA stream.
class Stream {
 public:
  /// \brief Creates a stream that does not synchronize with the legacy default stream.
  Stream() { LORALAB_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() {
    if (stream_) cudaStreamDestroy(stream_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  /// \brief The raw handle, for launches and library calls.
  cudaStream_t get() const { return stream_; }
  /// \brief Waits for everything queued on the stream.
  void synchronize() const { LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

}  // namespace loralab::cuda
