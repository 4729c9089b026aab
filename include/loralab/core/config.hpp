/// \file
/// \brief Compiler portability macros shared by the CPU and CUDA backends.
#pragma once

/// Marks small pure functions (Philox, mask predicates, the AdamW element update) that are written
/// once and called from Eigen loops and from CUDA kernels (STYLE.md L6, like CUTE_HOST_DEVICE).
#if defined(__CUDACC__)
#define LORALAB_HOST_DEVICE __forceinline__ __host__ __device__
#else
#define LORALAB_HOST_DEVICE inline
#endif
