// Explicit instantiation of the fp32 device decoder (cuda::GptCore<float>).
#define LORALAB_CUDA_COMPILING_INSTANCES
#include "loralab/cuda/gpt_core.cuh"

template class loralab::cuda::GptCore<float>;
