/// \file
/// \brief Turns every CUDA runtime status into a `loralab::Error` that names the failed call
/// (llm.c's cudaCheck, made library-safe: it throws instead of exiting). Host code; g++ can read
/// it.
#pragma once

#include <cuda_runtime_api.h>

#include "loralab/core/error.hpp"

namespace loralab::cuda {

/// \ingroup cuda
/// \brief Throws `[loralab.cuda] <call> failed: <reason> (<error name>)` unless `status` is
/// cudaSuccess.
inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess)
    ::loralab::detail::throw_error(file, line, "[loralab.cuda] ", call,
                                   " failed: ", cudaGetErrorString(status), " (",
                                   cudaGetErrorName(status), ")");
}

/// \ingroup cuda
/// \brief Number of visible CUDA devices; 0 when there is none or no driver (never throws), so
/// tests can skip with a reason.
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" status
    return 0;
  }
  return n;
}

}  // namespace loralab::cuda

/// Wraps a CUDA runtime call: `LORALAB_CUDA_CHECK(cudaMalloc(&p, bytes));`
#define LORALAB_CUDA_CHECK(call) ::loralab::cuda::check_cuda((call), #call, __FILE__, __LINE__)
