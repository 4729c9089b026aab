// Explicit instantiation of the decoder layers' device code (cuda/loralab/cuda/model/*.cuh) for
// fp32; one element type per TU, as linear_{f32,bf16}.cu.
#define LORALAB_CUDA_COMPILING_INSTANCES
#include "loralab/cuda/model/attention.cuh"
#include "loralab/cuda/model/embedding.cuh"
#include "loralab/cuda/model/gelu.cuh"
#include "loralab/cuda/model/layernorm.cuh"
#include "loralab/cuda/model/loss.cuh"
#include "loralab/cuda/model/residual.cuh"

namespace lm = loralab::cuda::layers;
using T = float;

template void lm::layernorm_forward<T>(const T*, const T*, const T*, float, T*, float*, float*,
                                       std::int64_t, int, cudaStream_t);
template void lm::layernorm_backward<T>(const T*, const T*, const T*, const float*, const float*,
                                        T*, float*, float*, std::int64_t, int, float*,
                                        cudaStream_t);
template void lm::gelu_forward<T>(const T*, T*, std::int64_t, cudaStream_t);
template void lm::gelu_backward<T>(const T*, const T*, T*, std::int64_t, cudaStream_t);
template void lm::add<T>(const T*, const T*, T*, std::int64_t, cudaStream_t);
template void lm::accumulate<T>(T*, const T*, std::int64_t, cudaStream_t);
template void lm::fill_rows<T>(T*, const T*, std::int64_t, int, cudaStream_t);
template void lm::column_sum<T>(const T*, std::int64_t, int, float*, float*, cudaStream_t);
template void lm::convert<T>(const float*, T*, std::int64_t, cudaStream_t);
template void lm::embedding_forward<T>(const std::int32_t*, const T*, const T*, T*, int, int, int,
                                       cudaStream_t);
template void lm::embedding_backward<T>(const T*, const std::int32_t*, float*, float*, int, int,
                                        int, cudaStream_t);
template void lm::cross_entropy_forward<T>(const T*, const std::int32_t*, std::int64_t, int, float*,
                                           float*, cudaStream_t);
template void lm::cross_entropy_backward<T>(T*, const std::int32_t*, const float*, std::int64_t,
                                            int, float, cudaStream_t);
template void lm::attention_forward<T>(const T*, int, int, int, int, T*, T*,
                                       const lm::AttentionHooks&, lm::AttentionScratch<T>&,
                                       cublasHandle_t, cudaStream_t);
template void lm::attention_backward<T>(const T*, const T*, const T*, int, int, int, int, T*,
                                        const lm::AttentionHooks&, lm::AttentionScratch<T>&,
                                        cublasHandle_t, cudaStream_t);
