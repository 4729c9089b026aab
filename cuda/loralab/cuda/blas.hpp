/// \file
/// \brief cuBLAS handle (RAII), status checking, and a row-major GEMM on top of column-major
/// cuBLAS.
#pragma once

#include <cublas_v2.h>

#include "loralab/core/error.hpp"
#include "loralab/cuda/error.hpp"

namespace loralab::cuda {

/// \ingroup cuda
/// \brief Throws `[loralab.cuda] <call> failed: <status name>` unless `status` is success.
inline void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    detail::throw_error(file, line, "[loralab.cuda] ", call,
                        " failed: ", cublasGetStatusName(status), " (",
                        cublasGetStatusString(status), ")");
}

}  // namespace loralab::cuda

/// Wraps a cuBLAS call: `LORALAB_CUBLAS_CHECK(cublasCreate(&h));`
#define LORALAB_CUBLAS_CHECK(call) ::loralab::cuda::check_cublas((call), #call, __FILE__, __LINE__)

namespace loralab::cuda {

/// \ingroup cuda
/// \brief An owned cuBLAS handle bound to a stream.
class BlasHandle {
 public:
  /// \brief Creates the handle and binds it to `stream`.
  explicit BlasHandle(cudaStream_t stream = nullptr) {
    LORALAB_CUBLAS_CHECK(cublasCreate(&handle_));
    set_stream(stream);
  }
  ~BlasHandle() {
    if (handle_) cublasDestroy(handle_);
  }
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;
  /// \brief Later calls run on `stream`.
  void set_stream(cudaStream_t stream) { LORALAB_CUBLAS_CHECK(cublasSetStream(handle_, stream)); }
  /// \brief The raw handle.
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

/// \ingroup cuda
/// \brief Row-major GEMM, C [m x n] = alpha op(A) op(B) + beta C, with fp32 accumulation.
///
/// A row-major matrix with leading dimension ld is the column-major transpose with the same ld,
/// so the column-major call computes C^T = op(B)^T op(A)^T: operands swapped, flags kept.
/// `lda`, `ldb`, `ldc` are the row lengths of the stored (untransposed) matrices. Types may mix
/// as cuBLAS allows (e.g. bf16 inputs with an fp32 output for gradients).
inline void gemm_row_major(cublasHandle_t handle, bool trans_a, bool trans_b, long long m,
                           long long n, long long k, float alpha, const void* a,
                           cudaDataType_t type_a, long long lda, const void* b,
                           cudaDataType_t type_b, long long ldb, float beta, void* c,
                           cudaDataType_t type_c, long long ldc) {
  LORALAB_CUBLAS_CHECK(
      cublasGemmEx(handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                   static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b, type_b,
                   static_cast<int>(ldb), a, type_a, static_cast<int>(lda), &beta, c, type_c,
                   static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace loralab::cuda
