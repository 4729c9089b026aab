// Explicit instantiation of the bf16 adapter's device code (bf16 storage, fp32 accumulation).
#define LORALAB_CUDA_COMPILING_INSTANCES
#include "loralab/cuda/adapted_linear.cuh"

template class loralab::cuda::LinearCore<loralab::cuda::bf16>;
