// doctest main of the CUDA suite: without a device it says why and exits 77 (ctest: skipped).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cuda_runtime_api.h>

#include <cstdio>

#include "loralab/cuda/error.hpp"
#include "loralab/version.hpp"
#include "support/testing.hpp"

int main(int argc, char** argv) {
  const int devices = loralab::cuda::device_count();
  if (devices == 0) {
    std::printf(
        "SKIPPED: no CUDA device on this machine (cudaGetDeviceCount reported none); "
        "the CPU-vs-CUDA tests need a GPU\n");
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("loralab %s CUDA tests on %s (sm_%d%d), test seed %llu\n", loralab::version_string,
              prop.name, prop.major, prop.minor,
              static_cast<unsigned long long>(loralab::testing::kSeed));
  doctest::Context context(argc, argv);
  return context.run();
}
