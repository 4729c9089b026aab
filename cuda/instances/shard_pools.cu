// Explicit home of cuda::ShardPools (the sharing schemes' gather and scatter on the device): its
// kernels and member definitions, compiled once (independent of the element type).
#include "loralab/cuda/shard_pools.cuh"
