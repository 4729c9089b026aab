/// \file
/// \brief cuSOLVER dense handle (RAII) and status checking, the mirror of blas.hpp for the
/// factorizations GaLore's projector refresh needs (QR, SVD). Host code; g++ can read it.
#pragma once

#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include "loralab/core/error.hpp"
#include "loralab/cuda/error.hpp"

namespace loralab::cuda {

/// \ingroup cuda
/// \brief The name of a cuSOLVER status (cuSOLVER has no cusolverGetStatusName).
inline const char* cusolver_status_name(cusolverStatus_t status) {
  switch (status) {
    case CUSOLVER_STATUS_SUCCESS:
      return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED:
      return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED:
      return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE:
      return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH:
      return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED:
      return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR:
      return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_NOT_SUPPORTED:
      return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default:
      return "an unlisted cuSOLVER status";
  }
}

/// \ingroup cuda
/// \brief Throws `[loralab.cuda] <call> failed: <status name> (<code>)` unless `status` is
/// success.
inline void check_cusolver(cusolverStatus_t status, const char* call, const char* file, int line) {
  if (status != CUSOLVER_STATUS_SUCCESS)
    ::loralab::detail::throw_error(file, line, "[loralab.cuda] ", call,
                                   " failed: ", cusolver_status_name(status), " (",
                                   static_cast<int>(status), ")");
}

}  // namespace loralab::cuda

/// Wraps a cuSOLVER call: `LORALAB_CUSOLVER_CHECK(cusolverDnCreate(&h));`
#define LORALAB_CUSOLVER_CHECK(call) \
  ::loralab::cuda::check_cusolver((call), #call, __FILE__, __LINE__)

namespace loralab::cuda {

/// \ingroup cuda
/// \brief An owned cuSOLVER dense handle bound to a stream.
class SolverHandle {
 public:
  /// \brief Creates the handle and binds it to `stream`.
  explicit SolverHandle(cudaStream_t stream = nullptr) {
    LORALAB_CUSOLVER_CHECK(cusolverDnCreate(&handle_));
    LORALAB_CUSOLVER_CHECK(cusolverDnSetStream(handle_, stream));
  }
  ~SolverHandle() {
    if (handle_) cusolverDnDestroy(handle_);
  }
  SolverHandle(const SolverHandle&) = delete;
  SolverHandle& operator=(const SolverHandle&) = delete;
  /// \brief The raw handle.
  cusolverDnHandle_t get() const { return handle_; }

 private:
  cusolverDnHandle_t handle_ = nullptr;
};

}  // namespace loralab::cuda
