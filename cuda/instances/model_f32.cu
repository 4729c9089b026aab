// Explicit instantiation of the decoder layers' device code (cuda/loralab/cuda/model/*.cuh) for
// fp32; one element type per TU, as linear_{f32,bf16}.cu.
#define LORALAB_CUDA_COMPILING_INSTANCES
#include "loralab/cuda/model/instantiate.cuh"

LORALAB_INSTANTIATE_LAYERS(float)
