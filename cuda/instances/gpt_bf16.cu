// Explicit instantiation of the bf16 mixed-precision device decoder (cuda::GptCore<bf16>: bf16
// weights and activations, fp32 statistics, master weights and optimizer state).
#define LORALAB_CUDA_COMPILING_INSTANCES
#include "loralab/cuda/gpt_core.cuh"

template class loralab::cuda::GptCore<loralab::cuda::bf16>;
