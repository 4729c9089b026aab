/// \file
/// \brief Definitions of cuda::GaloreProjector and cuda::GaloreAdamW (declared in galore.hpp):
/// the sketch, sign-fix, moment and apply kernels and the cuBLAS / cuSOLVER sequences. nvcc only.
/// The member definitions are not inline, so this header must be included in exactly one
/// translation unit of a program (cuda/instances/galore.cu in loralab_cuda_instances).
///
/// Layout notes. Gradients and projectors are row-major, as on the CPU; cuBLAS and cuSOLVER are
/// column-major, and a row-major [m x n] matrix is the column-major [n x m] matrix G^T with
/// leading dimension n. Every factorization below is written on column-major operands, with the
/// shape in a comment.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/core/philox.hpp"
#include "loralab/cuda/bf16.hpp"
#include "loralab/cuda/blas.hpp"
#include "loralab/cuda/error.hpp"
#include "loralab/cuda/galore.hpp"
#include "loralab/cuda/solver.hpp"
#include "loralab/optim/galore.hpp"

namespace loralab::cuda {

namespace galore_impl {

inline constexpr unsigned kThreads = 256;
inline constexpr std::uint64_t kChunkEntries = 4096;  // grad_squared_norm: entries per block

/// Scratch slots of GaloreContext, one purpose each within a step.
enum Slot : int {
  kScaled = 0,  // grad_scale * G [m x n]
  kProjected,   // R, then N [moment_rows x moment_cols]
  kUpdate,      // back-projected D [m x n]
  kBothTmp,     // `full` projection's intermediate
  kA,           // exact: the matrix gesvd destroys
  kSigma,       // singular values
  kU,           // gesvd's U
  kVT,          // gesvd's VT
  kWork,        // cuSOLVER workspace
  kRwork,       // gesvd's rwork
  kTau,         // geqrf's Householder scalars
  kOmega,       // randomized: sketch [n x k]
  kY,           // randomized: range basis Q [m x k]
  kZ,           // randomized: co-range basis [n x k]
  kBt,          // randomized: B^T = G^T Q [n x k], then Q2
  kR2,          // randomized: R2 [k x k] (then destroyed by its SVD)
  kLeftVec,     // randomized: U[:, :r] [m x r]
  kRightVec,    // randomized: V[:, :r] [n x r]
  kCount
};
static_assert(kCount <= GaloreContext::kSlots, "GaloreContext has too few scratch slots");

// Omega(i, j) = N(0, 1) draw of element i*k + j of the sketch stream, stored column-major
// [n x k]. The CPU's normal_element in the same double arithmetic (Box-Muller on one Philox
// block); device log1p and cos may differ from the host's in the last bit of a double, which the
// rounding to float hides but for a handful of entries (subspaces agree far below tolerance).
__global__ void __launch_bounds__(kThreads)
    omega_kernel(float* __restrict__ omega, std::int64_t n, std::int64_t k, std::uint64_t seed,
                 std::uint64_t stream) {
  const std::int64_t total = n * k;
  for (std::int64_t e = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t j = e / n, i = e % n;  // column-major: e = i + j n
    const Philox4x32Block b = philox_block(seed, stream, std::uint64_t(i * k + j));
    const double u1 = uniform01_double(b.v[0], b.v[1]);
    const double u2 = uniform01_double(b.v[2], b.v[3]);
    constexpr double kTwoPi = 6.283185307179586476925286766559;
    omega[e] = static_cast<float>(1.0 * sqrt(-2.0 * log1p(-u1)) * cos(kTwoPi * u2));
  }
}

__global__ void __launch_bounds__(kThreads)
    scale_kernel(const float* __restrict__ g, float s, float* __restrict__ out, std::int64_t n) {
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    out[i] = g[i] * s;  // the CPU's G * T(grad_scale)
}

// R2 [k x k] = the upper triangle of geqrf's output A (column-major, leading dimension lda).
__global__ void __launch_bounds__(kThreads)
    upper_kernel(const float* __restrict__ a, std::int64_t lda, float* __restrict__ r2,
                 std::int64_t k) {
  for (std::int64_t e = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < k * k;
       e += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t j = e / k, i = e % k;
    r2[e] = i <= j ? a[i + j * lda] : 0.0f;
  }
}

// Keeps the first failing cuSOLVER status word: info[1] = its value, info[2] = the call number.
__global__ void keep_first_failure(int* info, int call) {
  if (info[0] != 0 && info[1] == 0) {
    info[1] = info[0];
    info[2] = call;
  }
}

// One block per kept vector i: the entry of largest magnitude of the vector the projector keeps
// (U for the left and both sides, V for the right; the first index on ties, as Eigen's
// maxCoeff) sets the sign, applied to U(:, i) and V(:, i) together while they are written as
// left [m x r] and right [r x n], row-major.
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const float* __restrict__ u, std::int64_t u_es, std::int64_t u_vs,
                    const float* __restrict__ v, std::int64_t v_es, std::int64_t v_vs,
                    std::int64_t m, std::int64_t n, std::int64_t r, bool sign_on_u,
                    float* __restrict__ left, float* __restrict__ right) {
  __shared__ float best[kThreads];
  __shared__ std::int64_t where[kThreads];
  const std::int64_t i = blockIdx.x;
  const float* kept = sign_on_u ? u + i * u_vs : v + i * v_vs;
  const std::int64_t len = sign_on_u ? m : n, es = sign_on_u ? u_es : v_es;
  float b = -1.0f;
  std::int64_t at = std::numeric_limits<std::int64_t>::max();
  for (std::int64_t j = threadIdx.x; j < len; j += blockDim.x) {
    const float a = fabsf(kept[j * es]);
    if (a > b) b = a, at = j;  // j grows per thread: strict > keeps the first
  }
  best[threadIdx.x] = b;
  where[threadIdx.x] = at;
  __syncthreads();
  for (unsigned s = kThreads / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) {
      const float ob = best[threadIdx.x + s];
      const std::int64_t ow = where[threadIdx.x + s];
      if (ob > best[threadIdx.x] || (ob == best[threadIdx.x] && ow < where[threadIdx.x])) {
        best[threadIdx.x] = ob;
        where[threadIdx.x] = ow;
      }
    }
    __syncthreads();
  }
  const float sign = kept[where[0] * es] < 0.0f ? -1.0f : 1.0f;
  if (left)
    for (std::int64_t j = threadIdx.x; j < m; j += blockDim.x)
      left[j * r + i] = sign * u[j * u_es + i * u_vs];
  if (right)
    for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x)
      right[i * n + j] = sign * v[j * v_es + i * v_vs];
}

// R <- N = galore_moment_update(R, Mo, Ve) element-wise (the CPU's loop, the same function).
__global__ void __launch_bounds__(kThreads)
    moment_kernel(float* __restrict__ r, float* __restrict__ m, float* __restrict__ v,
                  std::int64_t n, GaloreStepCoefficients c) {
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    float mi = m[i], vi = v[i];
    r[i] = galore_moment_update<float>(r[i], mi, vi, c);
    m[i] = mi;
    v[i] = vi;
  }
}

// W <- galore_apply(W, D) element-wise, then the bf16 copy.
__global__ void __launch_bounds__(kThreads)
    apply_kernel(float* __restrict__ w, const float* __restrict__ d, bf16* __restrict__ shadow,
                 std::int64_t n, GaloreStepCoefficients c) {
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    float p = w[i];
    galore_apply<float>(p, d[i], c);
    w[i] = p;
    if (shadow) shadow[i] = __float2bfloat16(p);
  }
}

// partial[b] = sum of g^2 over entries [b * kChunkEntries, ...) of one tensor, tree-reduced in
// a fixed order.
__global__ void __launch_bounds__(kThreads)
    squares_kernel(const float* __restrict__ g, std::int64_t n, double* __restrict__ partial) {
  __shared__ double buf[kThreads];
  const std::int64_t begin = std::int64_t(blockIdx.x) * std::int64_t(kChunkEntries);
  const std::int64_t end = std::min<std::int64_t>(begin + std::int64_t(kChunkEntries), n);
  double acc = 0;
  for (std::int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
    const double x = g[j];
    acc += x * x;
  }
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (unsigned s = kThreads / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

inline unsigned grid_for(std::int64_t n) {
  return static_cast<unsigned>(
      std::clamp<std::int64_t>((n + kThreads - 1) / kThreads, 1, std::int64_t(1) << 16));
}

inline int to_int(std::int64_t x, const char* what) {
  LORALAB_CHECK(x <= std::numeric_limits<int>::max(), "[loralab.shape] GaLore: ", what, " = ", x,
                " exceeds the 32-bit sizes of cuBLAS / cuSOLVER");
  return static_cast<int>(x);
}

// C [m x n] = op(A) op(B), column-major fp32 (no TF32: the handle's default math mode).
inline void sgemm(GaloreContext& ctx, bool ta, bool tb, std::int64_t m, std::int64_t n,
                  std::int64_t k, const float* a, std::int64_t lda, const float* b,
                  std::int64_t ldb, float* c, std::int64_t ldc) {
  const float one = 1.0f, zero = 0.0f;
  LORALAB_CUBLAS_CHECK(cublasSgemm(ctx.blas(), ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   tb ? CUBLAS_OP_T : CUBLAS_OP_N, to_int(m, "m"), to_int(n, "n"),
                                   to_int(k, "k"), &one, a, to_int(lda, "lda"), b,
                                   to_int(ldb, "ldb"), &zero, c, to_int(ldc, "ldc")));
}

inline void record_info(GaloreContext& ctx, int call) {
  keep_first_failure<<<1, 1, 0, ctx.stream()>>>(ctx.info(), call);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

// A [rows x cols] column-major (lda = rows, rows >= cols) <- its thin Householder Q.
inline void orthonormalize(GaloreContext& ctx, float* a, std::int64_t rows, std::int64_t cols,
                           int& call) {
  const int m = to_int(rows, "rows"), n = to_int(cols, "cols");
  float* tau = ctx.scratch(kTau, std::size_t(cols));
  int lw_qr = 0, lw_q = 0;
  LORALAB_CUSOLVER_CHECK(cusolverDnSgeqrf_bufferSize(ctx.solver(), m, n, a, m, &lw_qr));
  LORALAB_CUSOLVER_CHECK(cusolverDnSorgqr_bufferSize(ctx.solver(), m, n, n, a, m, tau, &lw_q));
  float* work = ctx.scratch(kWork, std::size_t(std::max(lw_qr, lw_q)));
  LORALAB_CUSOLVER_CHECK(cusolverDnSgeqrf(ctx.solver(), m, n, a, m, tau, work, lw_qr, ctx.info()));
  record_info(ctx, ++call);
  LORALAB_CUSOLVER_CHECK(
      cusolverDnSorgqr(ctx.solver(), m, n, n, a, m, tau, work, lw_q, ctx.info()));
  record_info(ctx, ++call);
}

// Thin SVD of A [rows x cols] column-major (lda = rows, rows >= cols, destroyed): U [rows x cols]
// (ld rows) when want_u, VT [cols x cols] (ld cols) when want_vt, singular values descending.
inline void thin_svd(GaloreContext& ctx, float* a, std::int64_t rows, std::int64_t cols,
                     bool want_u, bool want_vt, float* u, float* vt, int& call) {
  const int m = to_int(rows, "rows"), n = to_int(cols, "cols");
  int lwork = 0;
  LORALAB_CUSOLVER_CHECK(cusolverDnSgesvd_bufferSize(ctx.solver(), m, n, &lwork));
  float* work = ctx.scratch(kWork, std::size_t(lwork));
  float* sigma = ctx.scratch(kSigma, std::size_t(n));
  float* rwork = ctx.scratch(kRwork, std::size_t(n));
  LORALAB_CUSOLVER_CHECK(cusolverDnSgesvd(ctx.solver(), want_u ? 'S' : 'N', want_vt ? 'S' : 'N', m,
                                          n, a, m, sigma, u, m, vt, n, work, lwork, rwork,
                                          ctx.info()));
  record_info(ctx, ++call);
}

// A cuSOLVER Jacobi-SVD parameter set (default tolerance: machine accuracy; default sweep
// limit), owned for one refresh.
class JacobiParams {
 public:
  JacobiParams() { LORALAB_CUSOLVER_CHECK(cusolverDnCreateGesvdjInfo(&info_)); }
  ~JacobiParams() {
    if (info_) cusolverDnDestroyGesvdjInfo(info_);
  }
  JacobiParams(const JacobiParams&) = delete;
  JacobiParams& operator=(const JacobiParams&) = delete;
  gesvdjInfo_t get() const { return info_; }

 private:
  gesvdjInfo_t info_ = nullptr;
};

// SVD of a small square A [k x k] column-major (destroyed) by one-sided Jacobi (gesvdj, suited to
// small matrices, where gesvd's bidiagonalization is launch-bound): A = U S V^T with U, V
// [k x k] (ld k), singular values descending.
inline void small_svd(GaloreContext& ctx, float* a, std::int64_t k, float* u, float* v,
                      const JacobiParams& params, int& call) {
  const int n = to_int(k, "k");
  float* sigma = ctx.scratch(kSigma, std::size_t(k));
  int lwork = 0;
  LORALAB_CUSOLVER_CHECK(cusolverDnSgesvdj_bufferSize(ctx.solver(), CUSOLVER_EIG_MODE_VECTOR,
                                                      /*econ=*/0, n, n, a, n, sigma, u, n, v, n,
                                                      &lwork, params.get()));
  float* work = ctx.scratch(kWork, std::size_t(lwork));
  LORALAB_CUSOLVER_CHECK(cusolverDnSgesvdj(ctx.solver(), CUSOLVER_EIG_MODE_VECTOR, 0, n, n, a, n,
                                           sigma, u, n, v, n, work, lwork, ctx.info(),
                                           params.get()));
  record_info(ctx, ++call);
}

}  // namespace galore_impl

// ---- GaloreProjector -----------------------------------------------------------------------

GaloreProjector::GaloreProjector(const GaloreConfig& cfg, std::int64_t rows, std::int64_t cols)
    : cfg_(cfg), rows_(rows), cols_(cols), shapes_(GaloreShapes::make(cfg, rows, cols)) {
  validate(cfg);
  LORALAB_CHECK(rows >= 1 && cols >= 1, "[loralab.shape] GaLore projector for [", rows, " x ", cols,
                "]");
}

void GaloreProjector::clear() {
  ready_ = false;
  left_ = DeviceBuffer<float>();
  right_ = DeviceBuffer<float>();
}

void GaloreProjector::check_ready(const char* what) const {
  LORALAB_CHECK(ready_, "[loralab.state] cuda::GaloreProjector::", what,
                " before the first refresh");
}

void GaloreProjector::refresh(const float* G, std::uint32_t tensor, GaloreContext& ctx) {
  LORALAB_CHECK(G != nullptr, "[loralab.state] GaLore refresh of a null gradient");
  LORALAB_CUDA_CHECK(cudaMemsetAsync(ctx.info(), 0, 4 * sizeof(int), ctx.stream()));
  if (cfg_.refresh == GaloreRefresh::exact_svd)
    exact(G, ctx);
  else
    randomized(G, tensor, ctx);
  int info[4] = {0, 0, 0, 0};
  LORALAB_CUDA_CHECK(
      cudaMemcpyAsync(info, ctx.info(), sizeof info, cudaMemcpyDeviceToHost, ctx.stream()));
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  LORALAB_CHECK(info[1] == 0, "[loralab.cuda] GaLore refresh of a [", rows_, " x ", cols_,
                "] gradient: cuSOLVER call ", info[2], " reported info = ", info[1],
                info[1] > 0 ? " (the SVD did not converge)" : " (a bad argument)");
  ready_ = true;
  ++refreshes_;
}

void GaloreProjector::exact(const float* G, GaloreContext& ctx) {
  using namespace galore_impl;
  const std::int64_t m = rows_, n = cols_;
  const bool need_u = shapes_.side != GaloreSide::right, need_v = shapes_.side != GaloreSide::left;
  int call = 0;
  float* a = ctx.scratch(kA, std::size_t(m * n));
  if (n >= m) {
    // A = G^T [n x m] is G's storage; A = Ua S VTa gives V = Ua [n x m], U^T = VTa [m x m].
    LORALAB_CUDA_CHECK(cudaMemcpyAsync(a, G, std::size_t(m * n) * sizeof(float),
                                       cudaMemcpyDeviceToDevice, ctx.stream()));
    float* ua = ctx.scratch(kU, std::size_t(n * m));
    float* vta = ctx.scratch(kVT, std::size_t(m * m));
    thin_svd(ctx, a, n, m, need_v, need_u, ua, vta, call);
    finalize(need_u ? vta : nullptr, /*u_es=*/m, /*u_vs=*/1, need_v ? ua : nullptr,
             /*v_es=*/1, /*v_vs=*/n, ctx);
  } else {
    // A = G [m x n] column-major (a transposed copy); A = Ua S VTa gives U = Ua, V^T = VTa.
    const float one = 1.0f, zero = 0.0f;
    LORALAB_CUBLAS_CHECK(cublasSgeam(ctx.blas(), CUBLAS_OP_T, CUBLAS_OP_N, to_int(m, "m"),
                                     to_int(n, "n"), &one, G, to_int(n, "n"), &zero, a,
                                     to_int(m, "m"), a, to_int(m, "m")));
    float* ua = ctx.scratch(kU, std::size_t(m * n));
    float* vta = ctx.scratch(kVT, std::size_t(n * n));
    thin_svd(ctx, a, m, n, need_u, need_v, ua, vta, call);
    finalize(need_u ? ua : nullptr, 1, m, need_v ? vta : nullptr, n, 1, ctx);
  }
}

void GaloreProjector::randomized(const float* G, std::uint32_t tensor, GaloreContext& ctx) {
  using namespace galore_impl;
  const std::int64_t m = rows_, n = cols_, r = shapes_.rank;
  const std::int64_t k = std::min<std::int64_t>(r + cfg_.oversample, std::min(m, n));
  const bool need_u = shapes_.side != GaloreSide::right, need_v = shapes_.side != GaloreSide::left;
  const std::uint64_t stream =
      make_stream(RngPurpose::galore_sketch, tensor, std::uint32_t(refreshes_));
  int call = 0;
  // Gt = G^T [n x m] column-major (ld n) is G's storage.
  float* omega = ctx.scratch(kOmega, std::size_t(n * k));  // [n x k]
  omega_kernel<<<grid_for(n * k), kThreads, 0, ctx.stream()>>>(omega, n, k, cfg_.seed, stream);
  LORALAB_CUDA_CHECK(cudaGetLastError());
  float* y = ctx.scratch(kY, std::size_t(m * k));          // [m x k]
  float* z = ctx.scratch(kZ, std::size_t(n * k));          // [n x k]
  sgemm(ctx, true, false, m, k, n, G, n, omega, n, y, m);  // Y = G Omega
  orthonormalize(ctx, y, m, k, call);
  for (int q = 0; q < cfg_.power_iterations; ++q) {
    sgemm(ctx, false, false, n, k, m, G, n, y, m, z, n);  // Z = G^T Q
    orthonormalize(ctx, z, n, k, call);
    sgemm(ctx, true, false, m, k, n, G, n, z, n, y, m);  // Y = G Z
    orthonormalize(ctx, y, m, k, call);
  }
  // B^T = G^T Q [n x k] = Q2 R2 (QR) and R2 = Ur S Vr^T (SVD), so B = Vr S (Q2 Ur)^T:
  // U_B = Vr and V_B = Q2 Ur, hence G ~ Q B gives U = Q Vr and V = Q2 Ur.
  float* bt = ctx.scratch(kBt, std::size_t(n * k));
  sgemm(ctx, false, false, n, k, m, G, n, y, m, bt, n);
  float* r2 = ctx.scratch(kR2, std::size_t(k * k));
  {
    const int nn = to_int(n, "n"), kk = to_int(k, "k");
    float* tau = ctx.scratch(kTau, std::size_t(k));
    int lw_qr = 0, lw_q = 0;
    LORALAB_CUSOLVER_CHECK(cusolverDnSgeqrf_bufferSize(ctx.solver(), nn, kk, bt, nn, &lw_qr));
    LORALAB_CUSOLVER_CHECK(
        cusolverDnSorgqr_bufferSize(ctx.solver(), nn, kk, kk, bt, nn, tau, &lw_q));
    float* work = ctx.scratch(kWork, std::size_t(std::max(lw_qr, lw_q)));
    LORALAB_CUSOLVER_CHECK(
        cusolverDnSgeqrf(ctx.solver(), nn, kk, bt, nn, tau, work, lw_qr, ctx.info()));
    record_info(ctx, ++call);
    upper_kernel<<<grid_for(k * k), kThreads, 0, ctx.stream()>>>(bt, n, r2, k);
    LORALAB_CUDA_CHECK(cudaGetLastError());
    LORALAB_CUSOLVER_CHECK(
        cusolverDnSorgqr(ctx.solver(), nn, kk, kk, bt, nn, tau, work, lw_q, ctx.info()));
    record_info(ctx, ++call);
  }
  float* ur = ctx.scratch(kU, std::size_t(k * k));
  float* vr = ctx.scratch(kVT, std::size_t(k * k));
  const JacobiParams jacobi;
  small_svd(ctx, r2, k, ur, vr, jacobi, call);
  float* uu = nullptr;
  float* vv = nullptr;
  if (need_u) {  // U[:, :r] = Q Vr[:, :r] [m x r]
    uu = ctx.scratch(kLeftVec, std::size_t(m * r));
    sgemm(ctx, false, false, m, r, k, y, m, vr, k, uu, m);
  }
  if (need_v) {  // V[:, :r] = Q2 Ur[:, :r] [n x r]
    vv = ctx.scratch(kRightVec, std::size_t(n * r));
    sgemm(ctx, false, false, n, r, k, bt, n, ur, k, vv, n);
  }
  finalize(uu, 1, m, vv, 1, n, ctx);
  // The Jacobi parameters must outlive the solver's use of them (refresh waits anyway).
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
}

void GaloreProjector::finalize(const float* u, std::int64_t u_es, std::int64_t u_vs, const float* v,
                               std::int64_t v_es, std::int64_t v_vs, GaloreContext& ctx) {
  using namespace galore_impl;
  const std::int64_t m = rows_, n = cols_, r = shapes_.rank;
  const bool sign_on_u = shapes_.side != GaloreSide::right;
  if (u && left_.size() != std::size_t(m * r)) left_ = DeviceBuffer<float>(std::size_t(m * r));
  if (v && right_.size() != std::size_t(r * n)) right_ = DeviceBuffer<float>(std::size_t(r * n));
  finalize_kernel<<<static_cast<unsigned>(r), kThreads, 0, ctx.stream()>>>(
      u, u_es, u_vs, v, v_es, v_vs, m, n, r, sign_on_u, u ? left_.data() : nullptr,
      v ? right_.data() : nullptr);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

void GaloreProjector::project(const float* G, float* R, GaloreContext& ctx) const {
  check_ready("project");
  const std::int64_t m = rows_, n = cols_, r = shapes_.rank;
  cublasHandle_t h = ctx.blas();
  switch (shapes_.side) {
    case GaloreSide::right:  // R [m x r] = G P^T
      gemm_row_major(h, false, true, m, r, n, 1.0f, G, CUDA_R_32F, n, right_.data(), CUDA_R_32F, n,
                     0.0f, R, CUDA_R_32F, r);
      break;
    case GaloreSide::left:  // R [r x n] = P^T G
      gemm_row_major(h, true, false, r, n, m, 1.0f, left_.data(), CUDA_R_32F, r, G, CUDA_R_32F, n,
                     0.0f, R, CUDA_R_32F, n);
      break;
    case GaloreSide::both: {  // T [r x n] = U^T G, R [r x r] = T Vh^T
      float* t = ctx.scratch(galore_impl::kBothTmp, std::size_t(r * n));
      gemm_row_major(h, true, false, r, n, m, 1.0f, left_.data(), CUDA_R_32F, r, G, CUDA_R_32F, n,
                     0.0f, t, CUDA_R_32F, n);
      gemm_row_major(h, false, true, r, r, n, 1.0f, t, CUDA_R_32F, n, right_.data(), CUDA_R_32F, n,
                     0.0f, R, CUDA_R_32F, r);
      break;
    }
  }
}

void GaloreProjector::back_project(const float* N, float* D, GaloreContext& ctx) const {
  check_ready("back_project");
  const std::int64_t m = rows_, n = cols_, r = shapes_.rank;
  cublasHandle_t h = ctx.blas();
  switch (shapes_.side) {
    case GaloreSide::right:  // D [m x n] = N P
      gemm_row_major(h, false, false, m, n, r, 1.0f, N, CUDA_R_32F, r, right_.data(), CUDA_R_32F, n,
                     0.0f, D, CUDA_R_32F, n);
      break;
    case GaloreSide::left:  // D = P N
      gemm_row_major(h, false, false, m, n, r, 1.0f, left_.data(), CUDA_R_32F, r, N, CUDA_R_32F, n,
                     0.0f, D, CUDA_R_32F, n);
      break;
    case GaloreSide::both: {  // T [m x r] = U N, D = T Vh
      float* t = ctx.scratch(galore_impl::kBothTmp, std::size_t(m * r));
      gemm_row_major(h, false, false, m, r, r, 1.0f, left_.data(), CUDA_R_32F, r, N, CUDA_R_32F, r,
                     0.0f, t, CUDA_R_32F, r);
      gemm_row_major(h, false, false, m, n, r, 1.0f, t, CUDA_R_32F, r, right_.data(), CUDA_R_32F, n,
                     0.0f, D, CUDA_R_32F, n);
      break;
    }
  }
}

std::vector<float> GaloreProjector::values(cudaStream_t stream) const {
  std::vector<float> out;
  if (!ready_) return out;
  if (shapes_.side != GaloreSide::right) {
    const std::vector<float> l = left_.to_host(stream);
    out.insert(out.end(), l.begin(), l.end());
  }
  if (shapes_.side != GaloreSide::left) {
    const std::vector<float> r = right_.to_host(stream);
    out.insert(out.end(), r.begin(), r.end());
  }
  return out;
}

void GaloreProjector::set_values(std::span<const float> v, std::int64_t refreshes,
                                 cudaStream_t stream) {
  refreshes_ = refreshes;
  if (v.empty()) {
    clear();
    return;
  }
  LORALAB_CHECK(std::int64_t(v.size()) == shapes_.projector_size, "[loralab.state] GaLore ",
                "projector of ", v.size(), " entries, expected ", shapes_.projector_size);
  const std::size_t left_size = std::size_t(rows_ * shapes_.rank);
  const std::size_t right_size = std::size_t(shapes_.rank * cols_);
  std::size_t off = 0;
  if (shapes_.side != GaloreSide::right) {
    left_ = DeviceBuffer<float>(left_size);
    left_.upload(v.subspan(0, left_size), stream);
    off = left_size;
  }
  if (shapes_.side != GaloreSide::left) {
    right_ = DeviceBuffer<float>(right_size);
    right_.upload(v.subspan(off, right_size), stream);
  }
  ready_ = true;
}

// ---- GaloreAdamW ---------------------------------------------------------------------------

GaloreAdamW::GaloreAdamW(std::vector<DeviceParamTensor> params, std::vector<std::uint32_t> ids,
                         const AdamWConfig& cfg, const GaloreConfig& galore, cudaStream_t stream)
    : cfg_(cfg),
      galore_(galore),
      lr_(cfg.lr),
      stream_(stream),
      ctx_(std::make_unique<GaloreContext>(stream)) {
  loralab::validate(cfg);
  loralab::validate(galore);
  LORALAB_CHECK(ids.size() == params.size(), "[loralab.config] GaloreAdamW: ", params.size(),
                " tensors but ", ids.size(), " ids");
  slots_.reserve(params.size());
  for (std::size_t k = 0; k < params.size(); ++k) {
    const DeviceParamTensor& p = params[k];
    LORALAB_CHECK(p.mask == nullptr && p.value != nullptr && p.grad != nullptr && p.rows >= 1 &&
                      p.cols >= 1 && std::int64_t(p.size) == p.rows * p.cols,
                  "[loralab.shape] GaLore tensor ", ids[k], " must be an unmasked [rows x cols] ",
                  "matrix with values and gradient; it is [", p.rows, " x ", p.cols, "] with ",
                  p.size, " entries", p.mask ? " and a mask" : "");
    Slot s{p, ids[k], GaloreProjector(galore, p.rows, p.cols), {}, {}, 0, true, true};
    const std::size_t moments = std::size_t(s.proj.shapes().moment_size());
    s.m = DeviceBuffer<float>(moments);
    s.v = DeviceBuffer<float>(moments);
    s.m.zero(stream_);
    s.v.zero(stream_);
    slots_.push_back(std::move(s));
  }
}

void GaloreAdamW::reset_state(std::size_t k) {
  Slot& s = slots_.at(k);
  const std::size_t moments = std::size_t(s.proj.shapes().moment_size());
  if (!s.held) {
    s.m = DeviceBuffer<float>(moments);
    s.v = DeviceBuffer<float>(moments);
    s.held = true;
  }
  s.m.zero(stream_);
  s.v.zero(stream_);
  s.t = 0;
  s.proj.clear();
}

void GaloreAdamW::release_state(std::size_t k) {
  Slot& s = slots_.at(k);
  s.m = DeviceBuffer<float>();
  s.v = DeviceBuffer<float>();
  s.t = 0;
  s.proj.clear();
  s.held = false;
}

void GaloreAdamW::restore(std::int64_t steps, std::size_t k, std::span<const float> m,
                          std::span<const float> v) {
  Slot& s = slots_.at(k);
  const std::size_t moments = std::size_t(s.proj.shapes().moment_size());
  if (m.empty() && v.empty() && moments > 0) {
    release_state(k);
    return;
  }
  LORALAB_CHECK(m.size() == moments && v.size() == moments,
                "[loralab.state] optimizer restore: ", "GaLore tensor ", s.id, " expects ", moments,
                " moments, got ", m.size(), " and ", v.size());
  reset_state(k);
  s.t = steps;
  s.m.upload(m, stream_);
  s.v.upload(v, stream_);
}

std::vector<float> GaloreAdamW::first_moment(std::size_t k) const {
  return slots_.at(k).m.to_host(stream_);
}

std::vector<float> GaloreAdamW::second_moment(std::size_t k) const {
  return slots_.at(k).v.to_host(stream_);
}

std::int64_t GaloreAdamW::state_bytes() const {
  std::int64_t b = 0;
  for (const Slot& s : slots_) b += std::int64_t(s.m.bytes() + s.v.bytes()) + s.proj.bytes();
  return b;
}

void GaloreAdamW::step(double grad_scale) {
  for (std::size_t k = 0; k < slots_.size(); ++k) {
    Slot& s = slots_[k];
    if (!s.active) continue;
    if (!s.held) reset_state(k);  // dropped earlier and drawn again: fresh state
    step_tensor(s, grad_scale);
  }
}

// galore_torch/adamw.py, as HostOptimizer::galore_step: refresh when due (counter before the
// increment), project, Adam in the projected space, back-project, apply with alpha and decay.
void GaloreAdamW::step_tensor(Slot& s, double grad_scale) {
  using namespace galore_impl;
  GaloreContext& ctx = *ctx_;
  const std::int64_t size = s.tensor.rows * s.tensor.cols;
  const float* G = s.tensor.grad;
  if (grad_scale != 1.0) {  // x * 1.0f is exact: skipping the multiply changes nothing
    float* scaled = ctx.scratch(kScaled, std::size_t(size));
    scale_kernel<<<grid_for(size), kThreads, 0, stream_>>>(G, static_cast<float>(grad_scale),
                                                           scaled, size);
    LORALAB_CUDA_CHECK(cudaGetLastError());
    G = scaled;
  }
  if (galore_refresh_due(s.t, galore_.period, s.proj.ready())) s.proj.refresh(G, s.id, ctx);
  const std::int64_t moments = s.proj.shapes().moment_size();
  float* R = ctx.scratch(kProjected, std::size_t(moments));
  s.proj.project(G, R, ctx);
  const GaloreStepCoefficients c = GaloreStepCoefficients::make(
      lr_, cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay, galore_.scale, ++s.t);
  moment_kernel<<<grid_for(moments), kThreads, 0, stream_>>>(R, s.m.data(), s.v.data(), moments, c);
  LORALAB_CUDA_CHECK(cudaGetLastError());
  float* D = ctx.scratch(kUpdate, std::size_t(size));
  s.proj.back_project(R, D, ctx);
  apply_kernel<<<grid_for(size), kThreads, 0, stream_>>>(s.tensor.value, D, s.tensor.shadow, size,
                                                         c);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

double GaloreAdamW::grad_squared_norm() {
  using namespace galore_impl;
  std::size_t chunks = 0;
  for (const Slot& s : slots_) chunks += (s.tensor.size + kChunkEntries - 1) / kChunkEntries;
  if (chunks == 0) return 0.0;
  partial_.reserve_discard(chunks);
  std::size_t at = 0;
  for (const Slot& s : slots_) {
    const std::size_t c = (s.tensor.size + kChunkEntries - 1) / kChunkEntries;
    if (c == 0) continue;
    squares_kernel<<<static_cast<unsigned>(c), kThreads, 0, stream_>>>(
        s.tensor.grad, std::int64_t(s.tensor.size), partial_.data() + at);
    LORALAB_CUDA_CHECK(cudaGetLastError());
    at += c;
  }
  std::vector<double> host(chunks);
  LORALAB_CUDA_CHECK(cudaMemcpyAsync(host.data(), partial_.data(), chunks * sizeof(double),
                                     cudaMemcpyDeviceToHost, stream_));
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  double sum = 0;
  for (double p : host) sum += p;
  return sum;
}

}  // namespace loralab::cuda
