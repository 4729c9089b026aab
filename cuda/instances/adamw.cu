// Explicit home of cuda::AdamW: its kernel and member definitions, compiled once.
#include "loralab/cuda/adamw.cuh"
