// Explicit instantiation of the fp32 adapter's device code (one element type per TU keeps nvcc
// compile times bounded and parallel; STYLE.md L8).
#define LORALAB_CUDA_COMPILING_INSTANCES
#include "loralab/cuda/adapted_linear.cuh"

template class loralab::cuda::LinearCore<float>;
