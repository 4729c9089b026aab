// Explicit home of the device dropout masks (attention keep flags, hidden dropout for fp32 and
// bf16, DropConnect): kernels and definitions, compiled once.
#define LORALAB_CUDA_COMPILING_INSTANCES
#include "loralab/cuda/dropout/masks.cuh"
