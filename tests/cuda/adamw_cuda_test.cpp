// cuda::AdamW against cpu::AdamW<float>: several tensors in one fused launch (masked, unmasked,
// with a bf16 shadow, sizes around the 4096-entry chunk), ten steps of random gradients, then
// values, moments, frozen entries, shadows and state bytes compared. Host code only: the kernel
// lives in loralab_cuda_instances.
#include "loralab/cuda/adamw.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <stdexcept>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cpu/adamw.hpp"
#include "loralab/cuda/bf16.hpp"
#include "loralab/cuda/device_buffer.hpp"
#include "support/testing.hpp"

namespace {

using loralab::AdamWConfig;
using loralab::ParamTensor;
using loralab::cuda::bf16;
using loralab::cuda::DeviceBuffer;
using loralab::cuda::DeviceParamTensor;

// Tolerance of device vs host. Both evaluate loralab::adamw_update with the same double
// coefficients rounded to float, IEEE division and sqrt (nvcc's defaults -prec-div=true,
// -prec-sqrt=true; no fast math), in the same order. The one freedom left is FMA contraction of
// m + (1-b1)(g-m) and v b2 + g^2 (1-b2): nvcc contracts both, g++ only when the target has FMA
// (-march=native) and contraction is on. A host emulation of both roundings over 10 steps and
// 2e5 entries gave at most 1.5e-7 of (|x| + max|x|); typically the results are bit-identical.
// 1e-6 (about 8 ulp of the tensor's largest entry) leaves a margin and still catches any wrong
// index, missed step or wrong coefficient, which are off by orders of magnitude more.
constexpr double kTol = 1e-6;

// max_i |got_i - want_i| / (|want_i| + max_j |want_j|); NaN counts as infinite.
double normwise_error(std::span<const float> got, std::span<const float> want) {
  REQUIRE(got.size() == want.size());
  double scale = 0;
  for (float w : want) scale = std::max(scale, double(std::abs(w)));
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double e =
        std::abs(double(got[i]) - double(want[i])) / (std::abs(double(want[i])) + scale);
    if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e;
  }
  return worst;
}

std::uint16_t bits(bf16 x) {
  std::uint16_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

struct Spec {
  std::size_t size;
  double trainable_fraction;  // < 0: no mask
  bool shadow;
};

// One tensor on both sides: host copies for cpu::AdamW, device buffers for cuda::AdamW.
struct Tensor {
  Spec spec;
  std::vector<float> value, grad, initial;
  std::vector<std::uint8_t> mask;
  DeviceBuffer<float> d_value, d_grad;
  DeviceBuffer<std::uint8_t> d_mask;
  DeviceBuffer<bf16> d_shadow;

  Tensor(Spec s, std::mt19937_64& rng, cudaStream_t stream) : spec(s) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    value.resize(s.size);
    grad.assign(s.size, 0.0f);
    for (float& x : value) x = u(rng);
    initial = value;
    if (s.trainable_fraction >= 0) {
      std::bernoulli_distribution keep(s.trainable_fraction);
      mask.resize(s.size);
      for (auto& b : mask) b = keep(rng) ? 1 : 0;
    }
    d_value = DeviceBuffer<float>::from_host(value, stream);
    d_grad = DeviceBuffer<float>(s.size);
    if (!mask.empty()) d_mask = DeviceBuffer<std::uint8_t>::from_host(mask, stream);
    if (s.shadow) {
      std::vector<bf16> shadow(s.size);
      for (std::size_t i = 0; i < s.size; ++i)
        shadow[i] = loralab::cuda::from_float<bf16>(value[i]);
      d_shadow = DeviceBuffer<bf16>::from_host(shadow, stream);
    }
  }

  std::size_t trainable() const {
    return mask.empty() ? spec.size : std::size_t(std::count(mask.begin(), mask.end(), 1));
  }
  bool is_trainable(std::size_t i) const { return mask.empty() || mask[i] != 0; }

  // New gradient everywhere, frozen entries included: the optimizer must ignore those.
  void draw_gradient(std::mt19937_64& rng, cudaStream_t stream) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (float& g : grad) g = u(rng);
    if (!grad.empty()) d_grad.upload(grad, stream);
  }

  ParamTensor<float> host_view() { return {value, grad, mask}; }
  DeviceParamTensor device_view() {
    return {d_value.data(), d_grad.data(), d_mask.empty() ? nullptr : d_mask.data(),
            d_shadow.empty() ? nullptr : d_shadow.data(), spec.size};
  }
};

}  // namespace

TEST_CASE("cuda::AdamW matches cpu::AdamW over several tensors in one launch") {
  constexpr std::size_t kChunk = 4096;  // the kernel's chunk; sizes straddle it
  const std::vector<Spec> specs = {
      {3 * kChunk + 77, 0.5, false},   // masked, about 1.5 chunks of packed state
      {1, -1, false},                  // a single entry
      {2 * kChunk + 1, -1, true},      // unmasked, shadowed, last chunk of one entry
      {2 * kChunk + 333, 0.3, true},   // masked and shadowed: frozen shadow entries stay
      {0, -1, false},                  // empty, null pointers: no chunk at all
      {kChunk, -1, false},             // exactly one chunk
      {100, 0.0, false},               // masked with nothing trainable: no state, no chunk
      {5 * kChunk + 4095, -1, false},  // more than five chunks
  };
  loralab::cuda::Stream stream;
  std::mt19937_64 rng(loralab::testing::kSeed);
  std::vector<Tensor> tensors;
  tensors.reserve(specs.size());
  for (const Spec& s : specs) tensors.emplace_back(s, rng, stream.get());

  std::vector<ParamTensor<float>> host_views;
  std::vector<DeviceParamTensor> device_views;
  for (Tensor& t : tensors) {
    host_views.push_back(t.host_view());
    device_views.push_back(t.device_view());
  }
  const AdamWConfig cfg{.lr = 1e-2, .weight_decay = 0.1};  // decay visible within 10 steps
  loralab::cpu::AdamW<float> cpu_opt(host_views, cfg);
  loralab::cuda::AdamW gpu_opt(device_views, cfg, stream.get());

  std::int64_t want_bytes = 0;
  for (const Tensor& t : tensors)
    want_bytes += std::int64_t(t.trainable()) * (t.mask.empty() ? 8 : 12);  // m, v (+ index)
  CHECK(gpu_opt.state_bytes() == want_bytes);

  for (int step = 1; step <= 10; ++step) {
    if (step == 6) {  // a schedule changes the rate mid-way on both sides
      cpu_opt.set_lr(3e-3);
      gpu_opt.set_lr(3e-3);
    }
    for (Tensor& t : tensors) t.draw_gradient(rng, stream.get());
    cpu_opt.step();
    gpu_opt.step();
  }
  stream.synchronize();
  CHECK(gpu_opt.steps() == 10);
  CHECK(gpu_opt.lr() == doctest::Approx(3e-3));
  CHECK(gpu_opt.state_bytes() == want_bytes);

  for (std::size_t k = 0; k < tensors.size(); ++k) {
    const Tensor& t = tensors[k];
    CAPTURE(k);
    CAPTURE(t.spec.size);
    const std::vector<float> got = t.d_value.to_host(stream.get());
    REQUIRE(got.size() == t.spec.size);

    // Trainable entries: the CPU's values; frozen ones: their initial bits, never decayed.
    std::vector<float> got_trainable, want_trainable;
    std::size_t moved_frozen = 0, differing = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      if (t.is_trainable(i)) {
        got_trainable.push_back(got[i]);
        want_trainable.push_back(t.value[i]);
        differing +=
            std::bit_cast<std::uint32_t>(got[i]) != std::bit_cast<std::uint32_t>(t.value[i]);
      } else {
        moved_frozen +=
            std::bit_cast<std::uint32_t>(got[i]) != std::bit_cast<std::uint32_t>(t.initial[i]);
      }
    }
    CHECK(moved_frozen == 0);
    CHECK(normwise_error(got_trainable, want_trainable) <= kTol);
    MESSAGE("tensor " << k << ": " << differing << " of " << got_trainable.size()
                      << " trainable values differ in some bit from the CPU's");
    std::size_t unmoved = 0;  // random gradients and decay move every trainable entry
    for (std::size_t i = 0; i < got.size(); ++i)
      unmoved += t.is_trainable(i) && got[i] == t.initial[i];
    CHECK(unmoved == 0);

    // Packed moments, in the order of the trainable entries.
    const std::vector<float> m = gpu_opt.first_moment(k), v = gpu_opt.second_moment(k);
    CHECK(m.size() == t.trainable());
    CHECK(v.size() == t.trainable());
    CHECK(normwise_error(m, cpu_opt.first_moment(k)) <= kTol);
    CHECK(normwise_error(v, cpu_opt.second_moment(k)) <= kTol);

    // The bf16 copy is the rounding of the master value everywhere (frozen entries: still the
    // rounding of their unchanged initial value).
    if (t.spec.shadow) {
      const std::vector<bf16> shadow = t.d_shadow.to_host(stream.get());
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < got.size(); ++i)
        wrong += bits(shadow[i]) != bits(loralab::cuda::from_float<bf16>(got[i]));
      CHECK(wrong == 0);
    }
  }
}

TEST_CASE("cuda::AdamW with no tensors steps without launching") {
  loralab::cuda::AdamW opt(std::vector<DeviceParamTensor>{});
  opt.step();
  opt.step();
  CHECK(opt.steps() == 2);
  CHECK(opt.state_bytes() == 0);
  CHECK_THROWS_AS(opt.first_moment(0), std::out_of_range);
}

TEST_CASE("cuda::AdamW rejects a bad config and null pointers") {
  DeviceBuffer<float> value(4), grad(4);
  const DeviceParamTensor ok{value.data(), grad.data(), nullptr, nullptr, 4};
  CHECK_THROWS_WITH_AS(loralab::cuda::AdamW({ok}, {.beta1 = 1.0}),
                       doctest::Contains("[loralab.config] AdamW needs"), loralab::Error);
  CHECK_THROWS_WITH_AS(loralab::cuda::AdamW({ok}, {.eps = 0.0}),
                       doctest::Contains("[loralab.config]"), loralab::Error);
  DeviceParamTensor no_grad = ok;
  no_grad.grad = nullptr;
  CHECK_THROWS_WITH_AS(loralab::cuda::AdamW({ok, no_grad}),
                       doctest::Contains("AdamW tensor 1 has 4 entries but a null"),
                       loralab::Error);
  DeviceParamTensor no_value = ok;
  no_value.value = nullptr;
  CHECK_THROWS_AS(loralab::cuda::AdamW({no_value}), loralab::Error);
  const DeviceParamTensor empty{nullptr, nullptr, nullptr, nullptr, 0};  // nothing to update
  CHECK_NOTHROW(loralab::cuda::AdamW({ok, empty}));
}
