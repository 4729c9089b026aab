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
    ::loralab::detail::throw_error(file, line, "[loralab.cuda] ", call,
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

/// \ingroup cuda
/// \brief Row-major strided batched GEMM: for every p in [0, batch), C_p [m x n] =
/// alpha op(A_p) op(B_p) + beta C_p with X_p = X + p * stride_x (elements), fp32 accumulation.
///
/// The operand swap of gemm_row_major, applied per batch entry (one cuBLAS call for all heads of
/// an attention layer). Leading dimensions are the row lengths of the stored matrices; types may
/// mix as cuBLAS allows (bf16 inputs with an fp32 output for the attention scores).
inline void gemm_strided_batched_row_major(cublasHandle_t handle, bool trans_a, bool trans_b,
                                           long long m, long long n, long long k, float alpha,
                                           const void* a, cudaDataType_t type_a, long long lda,
                                           long long stride_a, const void* b, cudaDataType_t type_b,
                                           long long ldb, long long stride_b, float beta, void* c,
                                           cudaDataType_t type_c, long long ldc, long long stride_c,
                                           long long batch) {
  LORALAB_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
      static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b, type_b,
      static_cast<int>(ldb), stride_b, a, type_a, static_cast<int>(lda), stride_a, &beta, c, type_c,
      static_cast<int>(ldc), stride_c, static_cast<int>(batch), CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT));
}

}  // namespace loralab::cuda
