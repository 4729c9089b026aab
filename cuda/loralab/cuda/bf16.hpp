/// \file
/// \brief The element types of the CUDA backend (fp32, bf16) and their cuBLAS type tags.
#pragma once

#include <cuda_bf16.h>
#include <library_types.h>

#include <type_traits>

namespace loralab::cuda {

/// \ingroup cuda
/// \brief bfloat16 storage type (fp32 accumulation everywhere it is used).
using bf16 = __nv_bfloat16;

/// \ingroup cuda
/// \brief Element types the CUDA adapter is instantiated for.
template <class T>
concept DeviceScalar = std::is_same_v<T, float> || std::is_same_v<T, bf16>;

/// \ingroup cuda
/// \brief cuBLAS data type of T: CUDA_R_32F or CUDA_R_16BF.
template <DeviceScalar T>
constexpr cudaDataType_t data_type() {
  return std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_16BF;
}

/// \ingroup cuda
/// \brief Host-side conversion to T (round to nearest even for bf16).
template <DeviceScalar T>
inline T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return __float2bfloat16(x);
  }
}

/// \ingroup cuda
/// \brief Host-side conversion from T.
template <DeviceScalar T>
inline float to_float(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return __bfloat162float(x);
  }
}

}  // namespace loralab::cuda
