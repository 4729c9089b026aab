/// \file
/// \brief Kernels and member definitions of cuda::LinearCore (declared in adapted_linear.hpp).
/// nvcc only. Instantiated once per element type in cuda/instances/linear_{f32,bf16}.cu; a user
/// who needs it in their own build includes this file in one .cu and instantiates
/// `template class loralab::cuda::LinearCore<float>;` (and/or bf16), and compiles
/// loralab/cuda/dropout/masks.cuh once (the branch-input masks call its hidden_dropout).
///
/// Work split: the base GEMM and every low-rank GEMM go through cuBLAS (fp32 accumulation), with
/// beta = 1 to accumulate s U B^T into Y and G_U A into dX without extra passes; our kernels do
/// only the element-wise parts (bias broadcast, Philox dropout, freeze-mask of the gradients,
/// fp32 -> bf16 copies, the finiteness check).
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdlib>
#include <type_traits>

#include "loralab/core/philox.hpp"
#include "loralab/cuda/adapted_linear.hpp"
#include "loralab/cuda/dropout/masks.hpp"
#include "loralab/cuda/solver.hpp"

namespace loralab::cuda {
namespace kernels {

constexpr int kThreads = 256;  // element-wise kernels: memory bound, any multiple of 32 works

inline unsigned blocks_for(std::int64_t work) {
  const std::int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));  // grid-stride beyond
}

template <class T>
__device__ __forceinline__ auto load(const T* p, std::int64_t i) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    return p[i];
  } else {
    return __bfloat162float(p[i]);
  }
}
template <class T>
__device__ __forceinline__ void store(T* p, std::int64_t i, float x) {
  if constexpr (std::is_same_v<T, float>) {
    p[i] = x;
  } else {
    p[i] = __float2bfloat16(x);
  }
}

// Y [n x out] = broadcast bias; the base GEMM then accumulates with beta = 1.
template <class T>
__global__ void fill_bias_rows(T* __restrict__ y, const T* __restrict__ bias, std::int64_t n,
                               std::int64_t out) {
  const std::int64_t total = n * out;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x)
    y[e] = bias[e % out];
}

// out[e] = x[e] * keep(e) / (1-p) over a flat [n x in] range, or (accumulate) out[e] += that.
// One thread per Philox block: four consecutive elements, exactly the CPU's element -> word map.
template <class T, bool kAccumulate>
__global__ void input_dropout(const T* __restrict__ x, T* __restrict__ out, std::int64_t total,
                              std::uint64_t seed, std::uint64_t stream, std::uint32_t threshold,
                              float keep_scale) {
  const std::int64_t blocks = (total + 3) / 4;
  for (std::int64_t b = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; b < blocks;
       b += std::int64_t(gridDim.x) * blockDim.x) {
    const Philox4x32Block words = philox_block(seed, stream, static_cast<std::uint64_t>(b));
    for (int lane = 0; lane < 4; ++lane) {
      const std::int64_t e = 4 * b + lane;
      if (e >= total) break;
      const float v = words.v[lane] < threshold ? 0.0f : load(x, e) * keep_scale;
      store(out, e, kAccumulate ? load(out, e) + v : v);
    }
  }
}

// y += x over `total` entries (the masked G_U A of a branch-input mask into dX).
template <class T>
__global__ void add_into(T* __restrict__ y, const T* __restrict__ x, std::int64_t total) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x)
    store(y, e, load(y, e) + load(x, e));
}

// Frozen gradients were 0 and stay exactly 0 (the CPU adapter does the same after each backward).
static __global__ void zero_frozen(float* __restrict__ grad, const std::uint8_t* __restrict__ mask,
                                   std::int64_t total) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x)
    if (!mask[e]) grad[e] = 0.0f;
}

static __global__ void to_bf16(const float* __restrict__ src, bf16* __restrict__ dst,
                               std::int64_t total) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x)
    dst[e] = __float2bfloat16(src[e]);
}

// first = min index of a non-finite entry (ULLONG_MAX when all are finite).
template <class T>
__global__ void first_nonfinite(const T* __restrict__ x, std::int64_t total,
                                unsigned long long* first) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x)
    if (!isfinite(static_cast<double>(load(x, e))))
      atomicMin(first, static_cast<unsigned long long>(e));
}

// dst[e] = double(src[e]) over `total` entries.
template <class T>
__global__ void to_double(const T* __restrict__ src, double* __restrict__ dst, std::int64_t total) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x)
    dst[e] = double(load(src, e));
}

// dst[e] = T(src[e]) (rounded to nearest) over `total` entries.
template <class T>
__global__ void from_double(const double* __restrict__ src, T* __restrict__ dst,
                            std::int64_t total) {
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x)
    store(dst, e, static_cast<float>(src[e]));
}

// Column-major dst [rows x cols] (leading dimension rows) from row-major src [rows x cols].
static __global__ void transpose_to_col_major(const double* __restrict__ src,
                                              double* __restrict__ dst, std::int64_t rows,
                                              std::int64_t cols) {
  const std::int64_t total = rows * cols;
  for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t i = e / cols, j = e % cols;
    dst[i + j * rows] = src[e];
  }
}

}  // namespace kernels

template <DeviceScalar T>
LinearCore<T>::LinearCore(T* weight, const T* bias, std::int64_t in, std::int64_t out, int rank,
                          float scale, const AdapterConfig& cfg, LinearFlags flags,
                          cudaStream_t stream)
    : weight_(weight),
      bias_(bias),
      in_(in),
      out_(out),
      rank_(rank),
      scale_(scale),
      cfg_(cfg),
      flags_(flags),
      stream_(stream),
      blas_(stream) {
  LORALAB_CHECK(weight != nullptr,
                "[loralab.cuda] AdaptedLinear needs a device weight pointer, got null");
  const std::size_t total = std::size_t(rank) * std::size_t(in + out);
  params_ = DeviceBuffer<float>(total);
  grads_ = DeviceBuffer<float>(total);
  grads_.zero(stream_);
  if (flags.has_mask) mask_ = DeviceBuffer<std::uint8_t>(total);
  if constexpr (std::is_same_v<T, bf16>) compute_ = DeviceBuffer<T>(total);
  first_bad_ = DeviceBuffer<unsigned long long>(1);
  trainable_ = flags.freeze_a ? std::int64_t(rank) * out : std::int64_t(total);
}

template <DeviceScalar T>
void LinearCore<T>::set_parameters(std::span<const float> a_then_b) {
  params_.upload(a_then_b, stream_);
  refresh_compute_copy();
}

template <DeviceScalar T>
void LinearCore<T>::set_mask(std::span<const std::uint8_t> mask) {
  LORALAB_CHECK(flags_.has_mask, "[loralab.cuda] set_mask on an adapter without a freeze mask");
  mask_.upload(mask, stream_);
  trainable_ = 0;
  for (std::uint8_t m : mask) trainable_ += m != 0;
}

template <DeviceScalar T>
void LinearCore<T>::refresh_compute_copy() {
  if constexpr (std::is_same_v<T, bf16>) {
    const std::int64_t total = std::int64_t(params_.size());
    kernels::to_bf16<<<kernels::blocks_for(total), kernels::kThreads, 0, stream_>>>(
        params_.data(), compute_.data(), total);
    LORALAB_CUDA_CHECK(cudaGetLastError());
  }
}

namespace detail {
// The T copy of A and B that the GEMMs read: the fp32 master itself, or its bf16 copy.
template <class T>
const T* compute_params(const DeviceBuffer<float>& master, const DeviceBuffer<T>& copy) {
  if constexpr (std::is_same_v<T, float>) {
    return master.data();
  } else {
    return copy.data();
  }
}
}  // namespace detail

template <DeviceScalar T>
void LinearCore<T>::require_finite(const T* x, std::int64_t rows, std::int64_t cols,
                                   const char* what) {
  if (!cfg_.check_finite) return;
  const unsigned long long none = ULLONG_MAX;
  LORALAB_CUDA_CHECK(
      cudaMemcpyAsync(first_bad_.data(), &none, sizeof(none), cudaMemcpyHostToDevice, stream_));
  kernels::first_nonfinite<<<kernels::blocks_for(rows * cols), kernels::kThreads, 0, stream_>>>(
      x, rows * cols, first_bad_.data());
  LORALAB_CUDA_CHECK(cudaGetLastError());
  unsigned long long first = none;
  LORALAB_CUDA_CHECK(
      cudaMemcpyAsync(&first, first_bad_.data(), sizeof(first), cudaMemcpyDeviceToHost, stream_));
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  LORALAB_CHECK(first == none, "[loralab.numeric] non-finite value in ", what, " at (",
                first / cols, ", ", first % cols,
                "); set AdapterConfig::check_finite=false to propagate (and skip this sync)");
}

template <DeviceScalar T>
void LinearCore<T>::input_dropout(const T* X, T* H, std::int64_t n, const Pass& pass) {
  const std::uint64_t stream = input_dropout_stream(cfg_.module_id, pass);  // the CPU's stream
  const std::int64_t total = n * in_;
  kernels::input_dropout<T, false>
      <<<kernels::blocks_for((total + 3) / 4), kernels::kThreads, 0, stream_>>>(
          X, H, total, cfg_.seed, stream, drop_threshold(cfg_.dropout),
          static_cast<float>(1.0 / (1.0 - cfg_.dropout)));
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

template <DeviceScalar T>
void LinearCore<T>::forward(const T* X, T* Y, std::int64_t n, Pass pass) {
  LORALAB_CHECK(n >= 0, "[loralab.shape] forward: negative row count ", n);
  require_finite(X, n, in_, "forward input X");
  constexpr cudaDataType_t kT = data_type<T>();
  const cublasHandle_t h = blas_.get();
  if (bias_) {
    kernels::fill_bias_rows<<<kernels::blocks_for(n * out_), kernels::kThreads, 0, stream_>>>(
        Y, bias_, n, out_);
    LORALAB_CUDA_CHECK(cudaGetLastError());
  }
  gemm_row_major(h, false, true, n, out_, in_, 1.0f, X, kT, in_, weight_, kT, in_,
                 bias_ ? 1.0f : 0.0f, Y, kT,
                 out_);  // Y = X W^T (+ b)
  last_pass_ = pass;
  saved_rows_ = -1;
  if (merged_) return;
  const T* A = detail::compute_params(params_, compute_);
  const T* B = A + a_size();
  U_.reserve_discard(std::size_t(n) * rank_);
  const T* H = X;
  last_mask_ = pass.training ? input_mask_ : BranchInputMask{};
  if (last_mask_.rate > 0.0) {  // the model's adapter_input site replaces the policy's mask
    H_.reserve_discard(std::size_t(n) * in_);
    hidden_dropout<T>(X, H_.data(), n, in_, last_mask_.key, last_mask_.pattern, last_mask_.rate,
                      last_mask_.seq, stream_);
    H = H_.data();
  } else if (flags_.input_dropout && pass.training && cfg_.dropout > 0.0) {
    H_.reserve_discard(std::size_t(n) * in_);
    input_dropout(X, H_.data(), n, pass);
    H = H_.data();
  }
  gemm_row_major(h, false, true, n, rank_, in_, 1.0f, H, kT, in_, A, kT, in_, 0.0f, U_.data(), kT,
                 rank_);  // U = H A^T [n x r]
  gemm_row_major(h, false, true, n, out_, rank_, scale_, U_.data(), kT, rank_, B, kT, rank_, 1.0f,
                 Y, kT,
                 out_);  // Y += s U B^T, accumulated in place
  saved_rows_ = n;
}

template <DeviceScalar T>
void LinearCore<T>::backward(const T* X, const T* GY, T* dX, std::int64_t n, bool param_grads) {
  LORALAB_CHECK(!merged_,
                "[loralab.state] backward on a merged adapter: unmerge() before training");
  LORALAB_CHECK(saved_rows_ >= 0, "[loralab.state] backward without a preceding forward");
  LORALAB_CHECK(n == saved_rows_, "[loralab.shape] backward: ", n, " rows, forward saw ",
                saved_rows_);
  require_finite(GY, n, out_, "backward input dL/dY");
  constexpr cudaDataType_t kT = data_type<T>();
  const cublasHandle_t h = blas_.get();
  const T* A = detail::compute_params(params_, compute_);
  const T* B = A + a_size();
  float* dA = grads_.data();
  float* dB = dA + a_size();
  const bool site = last_mask_.rate > 0.0;  // the model's branch-input mask of that forward
  const bool dropout = site || (flags_.input_dropout && last_pass_.training && cfg_.dropout > 0.0);
  GU_.reserve_discard(std::size_t(n) * rank_);
  gemm_row_major(h, false, false, n, rank_, out_, scale_, GY, kT, out_, B, kT, rank_, 0.0f,
                 GU_.data(), kT,
                 rank_);  // G_U = s dY B [n x r]
  if (param_grads)
    gemm_row_major(h, true, false, out_, rank_, n, scale_, GY, kT, out_, U_.data(), kT, rank_, 1.0f,
                   dB, CUDA_R_32F,
                   rank_);  // dB += s dY^T U [out x r], fp32
  if (param_grads && !flags_.freeze_a) {
    const T* H = X;
    if (site) {  // regenerate the mask from Philox instead of storing it
      hidden_dropout<T>(X, H_.data(), n, in_, last_mask_.key, last_mask_.pattern, last_mask_.rate,
                        last_mask_.seq, stream_);
      H = H_.data();
    } else if (dropout) {
      input_dropout(X, H_.data(), n, last_pass_);
      H = H_.data();
    }
    gemm_row_major(h, true, false, rank_, in_, n, 1.0f, GU_.data(), kT, rank_, H, kT, in_, 1.0f, dA,
                   CUDA_R_32F,
                   in_);  // dA += G_U^T H [r x in], fp32
  }
  if (param_grads && flags_.has_mask) {
    const std::int64_t total = std::int64_t(grads_.size());
    kernels::zero_frozen<<<kernels::blocks_for(total), kernels::kThreads, 0, stream_>>>(
        grads_.data(), mask_.data(), total);
    LORALAB_CUDA_CHECK(cudaGetLastError());
  }
  if (dX == nullptr) return;
  gemm_row_major(h, false, false, n, in_, out_, 1.0f, GY, kT, out_, weight_, kT, in_, 0.0f, dX, kT,
                 in_);  // dX = dY W
  if (dropout) {        // dX += (G_U A) .* D / (1-p), H_ reused as the G_U A buffer
    H_.reserve_discard(std::size_t(n) * in_);
    gemm_row_major(h, false, false, n, in_, rank_, 1.0f, GU_.data(), kT, rank_, A, kT, in_, 0.0f,
                   H_.data(), kT, in_);
    if (site) {  // dX += (G_U A) .* M
      hidden_dropout<T>(H_.data(), H_.data(), n, in_, last_mask_.key, last_mask_.pattern,
                        last_mask_.rate, last_mask_.seq, stream_);
      kernels::add_into<T>
          <<<kernels::blocks_for(n * in_), kernels::kThreads, 0, stream_>>>(dX, H_.data(), n * in_);
      LORALAB_CUDA_CHECK(cudaGetLastError());
      return;
    }
    const std::uint64_t stream = input_dropout_stream(cfg_.module_id, last_pass_);
    const std::int64_t total = n * in_;
    kernels::input_dropout<T, true>
        <<<kernels::blocks_for((total + 3) / 4), kernels::kThreads, 0, stream_>>>(
            H_.data(), dX, total, cfg_.seed, stream, drop_threshold(cfg_.dropout),
            static_cast<float>(1.0 / (1.0 - cfg_.dropout)));
    LORALAB_CUDA_CHECK(cudaGetLastError());
  } else {
    gemm_row_major(h, false, false, n, in_, rank_, 1.0f, GU_.data(), kT, rank_, A, kT, in_, 1.0f,
                   dX, kT,
                   in_);  // dX += G_U A
  }
}

template <DeviceScalar T>
void LinearCore<T>::merge() {
  if (merged_) return;
  const std::size_t count = std::size_t(out_) * std::size_t(in_);
  DeviceBuffer<T> updated(count);  // safe merge: W changes only if the result is finite
  LORALAB_CUDA_CHECK(cudaMemcpyAsync(updated.data(), weight_, count * sizeof(T),
                                     cudaMemcpyDeviceToDevice, stream_));
  const T* A = detail::compute_params(params_, compute_);
  gemm_row_major(blas_.get(), false, false, out_, in_, rank_, scale_, A + a_size(), data_type<T>(),
                 rank_, A, data_type<T>(), in_, 1.0f, updated.data(), data_type<T>(),
                 in_);  // W + s B A
  const bool check = cfg_.check_finite;
  cfg_.check_finite = true;
  try {
    require_finite(updated.data(), out_, in_, "merged weight W + s B A");
  } catch (const Error&) {
    cfg_.check_finite = check;
    throw Error("[loralab.numeric] merge would write non-finite values into W; W is unchanged");
  }
  cfg_.check_finite = check;
  LORALAB_CUDA_CHECK(cudaMemcpyAsync(weight_, updated.data(), count * sizeof(T),
                                     cudaMemcpyDeviceToDevice, stream_));
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));  // `updated` is freed on return
  merged_ = true;
}

template <DeviceScalar T>
void LinearCore<T>::unmerge() {
  if (!merged_) return;
  const T* A = detail::compute_params(params_, compute_);
  gemm_row_major(blas_.get(), false, false, out_, in_, rank_, -scale_, A + a_size(), data_type<T>(),
                 rank_, A, data_type<T>(), in_, 1.0f, weight_, data_type<T>(), in_);  // W - s B A
  merged_ = false;
}

namespace detail {
// Row-major double GEMM C [m x n] = alpha A [m x k] B [k x n] + beta C (the operand swap of
// gemm_row_major: column-major C^T = B^T A^T).
inline void dgemm_row_major(cublasHandle_t h, std::int64_t m, std::int64_t n, std::int64_t k,
                            double alpha, const double* A, const double* B, double beta,
                            double* C) {
  LORALAB_CUBLAS_CHECK(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, int(n), int(m), int(k), &alpha, B,
                                   int(n), A, int(k), &beta, C, int(n)));
}
}  // namespace detail

template <DeviceScalar T>
void LinearCore<T>::refactorize(std::span<const int> I) {
  LORALAB_CHECK(!merged_, "[loralab.state] refactorize on a merged adapter; unmerge first");
  const std::int64_t k = std::min(in_, out_);
  const std::int64_t r = std::int64_t(I.size());
  LORALAB_CHECK(r == rank_, "[loralab.shape] refactorize: ", r, " components for rank ", rank_);
  for (int i : I)
    LORALAB_CHECK(i >= 0 && i < k, "[loralab.shape] ROSA component ", i, " outside [0, ", k, ")");
  const std::int64_t count = out_ * in_;
  const unsigned grid = kernels::blocks_for(count);
  const cublasHandle_t h = blas_.get();

  // merged = W + s B A, row-major [out x in], in double (the fp32 masters, not the bf16 copy).
  DeviceBuffer<double> merged(static_cast<std::size_t>(count));
  DeviceBuffer<double> factors(params_.size());  // A [r x in] then B [out x r]
  kernels::to_double<T><<<grid, kernels::kThreads, 0, stream_>>>(weight_, merged.data(), count);
  LORALAB_CUDA_CHECK(cudaGetLastError());
  const std::int64_t total = std::int64_t(params_.size());
  kernels::to_double<float><<<kernels::blocks_for(total), kernels::kThreads, 0, stream_>>>(
      params_.data(), factors.data(), total);
  LORALAB_CUDA_CHECK(cudaGetLastError());
  detail::dgemm_row_major(h, out_, in_, rank_, double(scale_), factors.data() + a_size(),
                          factors.data(), 1.0, merged.data());
  {  // always checked (as cpu::svd_slice): a non-finite matrix makes gesvd's output garbage
    const unsigned long long none = ULLONG_MAX;
    LORALAB_CUDA_CHECK(
        cudaMemcpyAsync(first_bad_.data(), &none, sizeof(none), cudaMemcpyHostToDevice, stream_));
    kernels::first_nonfinite<double>
        <<<grid, kernels::kThreads, 0, stream_>>>(merged.data(), count, first_bad_.data());
    LORALAB_CUDA_CHECK(cudaGetLastError());
    unsigned long long first = none;
    LORALAB_CUDA_CHECK(
        cudaMemcpyAsync(&first, first_bad_.data(), sizeof(first), cudaMemcpyDeviceToHost, stream_));
    LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
    LORALAB_CHECK(first == none, "[loralab.numeric] ROSA factorization of a non-finite weight (",
                  first / std::uint64_t(in_), ", ", first % std::uint64_t(in_), ")");
  }

  // gesvd needs m >= n: factor the column-major M [m x n] = W (out >= in) or W^T (in > out; the
  // row-major memory of W read column-major is W^T already).
  const bool tall = out_ >= in_;
  const std::int64_t m = tall ? out_ : in_, n = k;
  DeviceBuffer<double> M(static_cast<std::size_t>(count)), S(static_cast<std::size_t>(n)),
      Um(static_cast<std::size_t>(m * n)), VTm(static_cast<std::size_t>(n * n)),
      rwork(static_cast<std::size_t>(n > 1 ? n - 1 : 1));
  if (tall) {
    kernels::transpose_to_col_major<<<grid, kernels::kThreads, 0, stream_>>>(merged.data(),
                                                                             M.data(), out_, in_);
    LORALAB_CUDA_CHECK(cudaGetLastError());
  } else {
    LORALAB_CUDA_CHECK(cudaMemcpyAsync(M.data(), merged.data(), std::size_t(count) * sizeof(double),
                                       cudaMemcpyDeviceToDevice, stream_));
  }
  SolverHandle solver(stream_);
  int lwork = 0;
  LORALAB_CUSOLVER_CHECK(cusolverDnDgesvd_bufferSize(solver.get(), int(m), int(n), &lwork));
  DeviceBuffer<double> work(static_cast<std::size_t>(lwork > 0 ? lwork : 1));
  DeviceBuffer<int> info(1);
  LORALAB_CUSOLVER_CHECK(cusolverDnDgesvd(solver.get(), 'S', 'S', int(m), int(n), M.data(), int(m),
                                          S.data(), Um.data(), int(m), VTm.data(), int(n),
                                          work.data(), lwork, rwork.data(), info.data()));
  int status = 0;
  LORALAB_CUDA_CHECK(
      cudaMemcpyAsync(&status, info.data(), sizeof(int), cudaMemcpyDeviceToHost, stream_));
  std::vector<double> sv(static_cast<std::size_t>(n));
  LORALAB_CUDA_CHECK(cudaMemcpyAsync(sv.data(), S.data(), std::size_t(n) * sizeof(double),
                                     cudaMemcpyDeviceToHost, stream_));

  // The selected columns of U [out x k] and V [in x k] of W. Tall: U = Um, V = VTm^T. Wide
  // (W = M^T = Vm S Um^T): U = VTm^T, V = Um. A column of Um is contiguous; a column of VTm^T is
  // a row of the column-major VTm, read with a pitch of n.
  std::vector<double> u(static_cast<std::size_t>(out_ * r)),
      v(static_cast<std::size_t>(in_ * r));  // column j: selected j
  auto fetch_column = [&](const DeviceBuffer<double>& Um_or_VTm, bool contiguous, int c,
                          double* dst, std::int64_t len) {
    if (contiguous) {
      LORALAB_CUDA_CHECK(cudaMemcpyAsync(dst, Um_or_VTm.data() + std::int64_t(c) * m,
                                         std::size_t(len) * sizeof(double), cudaMemcpyDeviceToHost,
                                         stream_));
    } else {
      LORALAB_CUDA_CHECK(cudaMemcpy2DAsync(dst, sizeof(double), Um_or_VTm.data() + c,
                                           std::size_t(n) * sizeof(double), sizeof(double),
                                           std::size_t(len), cudaMemcpyDeviceToHost, stream_));
    }
  };
  for (std::int64_t j = 0; j < r; ++j) {
    const int c = I[std::size_t(j)];
    double* uj = u.data() + j * out_;
    double* vj = v.data() + j * in_;
    if (tall) {
      fetch_column(Um, true, c, uj, out_);
      fetch_column(VTm, false, c, vj, in_);
    } else {
      fetch_column(VTm, false, c, uj, out_);
      fetch_column(Um, true, c, vj, in_);
    }
  }
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  LORALAB_CHECK(status == 0, "[loralab.numeric] ROSA factorization: cusolverDnDgesvd info ", status,
                " (", status > 0 ? "did not converge" : "bad argument", ")");

  // Sign rule (cpu::svd_slice): the first largest-magnitude entry of each U column is positive.
  // Then B = U_I [out x r], A = diag(S_I) V_I^T / s [r x in] (fp32 masters), and the unscaled
  // slice U_I diag(S_I) V_I^T in double for the complement.
  std::vector<float> values(params_.size());
  std::vector<double> slice_a(static_cast<std::size_t>(r * in_)),
      slice_b(static_cast<std::size_t>(out_ * r));
  for (std::int64_t j = 0; j < r; ++j) {
    double* uj = u.data() + j * out_;
    double* vj = v.data() + j * in_;
    std::int64_t at = 0;
    for (std::int64_t i = 1; i < out_; ++i)
      if (std::abs(uj[i]) > std::abs(uj[at])) at = i;
    const double sign = uj[at] < 0 ? -1.0 : 1.0;
    const double s = sv[std::size_t(I[std::size_t(j)])];
    for (std::int64_t i = 0; i < out_; ++i) {
      slice_b[std::size_t(i * r + j)] = sign * uj[i];
      values[std::size_t(a_size() + i * r + j)] = static_cast<float>(sign * uj[i]);
    }
    for (std::int64_t i = 0; i < in_; ++i) {
      slice_a[std::size_t(j * in_ + i)] = sign * s * vj[i];
      values[std::size_t(j * in_ + i)] = static_cast<float>(sign * s * vj[i] / double(scale_));
    }
  }
  set_parameters(values);

  // W = merged - U_I diag(S_I) V_I^T, rounded to T once.
  DeviceBuffer<double> a_dev(slice_a.size()), b_dev(slice_b.size());
  a_dev.upload(std::span<const double>(slice_a), stream_);
  b_dev.upload(std::span<const double>(slice_b), stream_);
  detail::dgemm_row_major(h, out_, in_, r, -1.0, b_dev.data(), a_dev.data(), 1.0, merged.data());
  kernels::from_double<T><<<grid, kernels::kThreads, 0, stream_>>>(merged.data(), weight_, count);
  LORALAB_CUDA_CHECK(cudaGetLastError());
  zero_grad();
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the scratch buffers are freed on return
}

template <DeviceScalar T>
std::vector<DeviceParamTensor> LinearCore<T>::parameter_tensors() {
  bf16* shadow = nullptr;
  if constexpr (std::is_same_v<T, bf16>) shadow = compute_.data();
  if (flags_.freeze_a) {
    const std::size_t off = std::size_t(a_size());
    return {DeviceParamTensor{params_.data() + off, grads_.data() + off, nullptr,
                              shadow ? shadow + off : nullptr, params_.size() - off}};
  }
  return {DeviceParamTensor{params_.data(), grads_.data(), flags_.has_mask ? mask_.data() : nullptr,
                            shadow, params_.size()}};
}

template <DeviceScalar T>
MemoryReport LinearCore<T>::memory(std::int64_t tokens) const {
  MemoryReport m;
  const std::int64_t total = std::int64_t(params_.size());
  m.trainable_params = trainable_;
  m.frozen_adapter_params = total - trainable_;
  m.parameter_bytes = std::int64_t(params_.bytes() + compute_.bytes());
  m.gradient_bytes = std::int64_t(grads_.bytes());
  // cuda::AdamW: two fp32 moments per trainable entry, plus a uint32 index each when masked.
  m.optimizer_state_bytes = trainable_ * (8 + (flags_.has_mask ? 4 : 0));
  m.mask_bytes = std::int64_t(mask_.bytes());
  m.saved_input_bytes = flags_.freeze_a ? 0 : tokens * in_ * std::int64_t(sizeof(T));
  m.activation_bytes = tokens * rank_ * std::int64_t(sizeof(T)) + m.saved_input_bytes;
  return m;
}

}  // namespace loralab::cuda
