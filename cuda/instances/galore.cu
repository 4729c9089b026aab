// Explicit home of cuda::GaloreProjector and cuda::GaloreAdamW (GaLore on the device): their
// kernels and member definitions, compiled once (fp32 master weights only).
#include "loralab/cuda/galore.cuh"
