// Philox on the device equals Philox on the host, bit for bit: the known-answer vectors and a
// stretch of a dropout stream, computed by the same LORALAB_HOST_DEVICE function in a kernel.
// Without a CUDA device this exits 77 (ctest: skipped) after saying why.
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "loralab/core/philox.hpp"
#include "loralab/cuda/error.hpp"

namespace {

__global__ void philox_kernel(const loralab::Philox4x32Block* ctr, const std::uint32_t* key,
                              loralab::Philox4x32Block* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = loralab::philox4x32_10(ctr[i], key[2 * i], key[2 * i + 1]);
}

__global__ void words_kernel(std::uint64_t seed, std::uint64_t stream, std::uint32_t* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = loralab::philox_word(seed, stream, static_cast<std::uint64_t>(i));
}

}  // namespace

int run() {
  // Random123 kat_vectors, philox4x32 10: counter, key, expected.
  const std::vector<loralab::Philox4x32Block> ctr = {
      {{0, 0, 0, 0}},
      {{~0u, ~0u, ~0u, ~0u}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}};
  const std::vector<std::uint32_t> key = {0, 0, ~0u, ~0u, 0xa4093822u, 0x299f31d0u};
  const std::uint32_t expected[3][4] = {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u},
                                        {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu},
                                        {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}};
  loralab::Philox4x32Block *d_ctr, *d_out;
  std::uint32_t* d_key;
  LORALAB_CUDA_CHECK(cudaMalloc(&d_ctr, 3 * sizeof(loralab::Philox4x32Block)));
  LORALAB_CUDA_CHECK(cudaMalloc(&d_out, 3 * sizeof(loralab::Philox4x32Block)));
  LORALAB_CUDA_CHECK(cudaMalloc(&d_key, 6 * sizeof(std::uint32_t)));
  LORALAB_CUDA_CHECK(
      cudaMemcpy(d_ctr, ctr.data(), 3 * sizeof(loralab::Philox4x32Block), cudaMemcpyHostToDevice));
  LORALAB_CUDA_CHECK(
      cudaMemcpy(d_key, key.data(), 6 * sizeof(std::uint32_t), cudaMemcpyHostToDevice));
  philox_kernel<<<1, 32>>>(d_ctr, d_key, d_out, 3);
  LORALAB_CUDA_CHECK(cudaGetLastError());
  std::vector<loralab::Philox4x32Block> out(3);
  LORALAB_CUDA_CHECK(
      cudaMemcpy(out.data(), d_out, 3 * sizeof(loralab::Philox4x32Block), cudaMemcpyDeviceToHost));
  int failures = 0;
  for (int k = 0; k < 3; ++k)
    for (int w = 0; w < 4; ++w)
      if (out[k].v[w] != expected[k][w]) {
        std::printf("KAT %d word %d: device %08x, expected %08x\n", k, w, out[k].v[w],
                    expected[k][w]);
        ++failures;
      }

  const int n = 1 << 16;
  const std::uint64_t seed = 0x0123456789abcdefull;
  const std::uint64_t stream = loralab::make_stream(loralab::RngPurpose::input_dropout, 3, 42);
  std::uint32_t* d_words;
  LORALAB_CUDA_CHECK(cudaMalloc(&d_words, n * sizeof(std::uint32_t)));
  words_kernel<<<(n + 255) / 256, 256>>>(seed, stream, d_words, n);
  LORALAB_CUDA_CHECK(cudaGetLastError());
  std::vector<std::uint32_t> words(n);
  LORALAB_CUDA_CHECK(
      cudaMemcpy(words.data(), d_words, n * sizeof(std::uint32_t), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i)
    if (words[i] != loralab::philox_word(seed, stream, static_cast<std::uint64_t>(i)) &&
        failures++ < 10)
      std::printf("stream word %d differs between device and host\n", i);
  cudaFree(d_ctr);
  cudaFree(d_out);
  cudaFree(d_key);
  cudaFree(d_words);
  std::printf("%s: %d failures (3 KAT vectors, %d stream words)\n", failures ? "FAILED" : "PASSED",
              failures, n);
  return failures ? 1 : 0;
}

int main() {
  if (loralab::cuda::device_count() == 0) {
    std::printf("SKIPPED: no CUDA device on this machine (cudaGetDeviceCount reported none)\n");
    return 77;
  }
  try {
    return run();
  } catch (const loralab::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
