// Mask-aware AdamW: a two-step example computed by hand, packed state, frozen entries untouched.
#include "loralab/cpu/adamw.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

using loralab::AdamWConfig;
using loralab::ParamTensor;

TEST_CASE("AdamW matches a hand-computed two-step example") {
  // p0 = 1, g1 = 0.5, g2 = -0.25, lr = 0.1, betas (0.9, 0.999), eps = 1e-8, wd = 0.01.
  std::vector<double> p = {1.0};
  std::vector<double> g = {0.5};
  loralab::cpu::AdamW<double> opt(
      {ParamTensor<double>{p, g, {}}},
      AdamWConfig{.lr = 0.1, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01});
  opt.step();
  // Step 1: p = 1 * (1 - 0.1*0.01) = 0.999; m = 0.05; v = 0.00025; m_hat = 0.5; v_hat = 0.25;
  // p = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8).
  const double p1 = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8);
  CHECK(p[0] == doctest::Approx(p1).epsilon(1e-14));
  g[0] = -0.25;
  opt.step();
  // Step 2: decay; m = 0.9*0.05 + 0.1*(-0.25) = 0.02; v = 0.999*0.00025 + 0.001*0.0625 =
  // 0.00031225; m_hat = 0.02 / 0.19; v_hat = 0.00031225 / (1 - 0.999^2).
  const double m_hat = 0.02 / (1 - 0.81), v_hat = 0.00031225 / (1 - 0.998001);
  const double p2 = p1 * 0.999 - 0.1 * m_hat / (std::sqrt(v_hat) + 1e-8);
  CHECK(p[0] == doctest::Approx(p2).epsilon(1e-13));
  CHECK(opt.steps() == 2);
}

TEST_CASE("masked AdamW keeps packed state and never moves a frozen entry") {
  std::vector<float> p = {1, 2, 3, 4, 5, 6};
  std::vector<float> g = {1, 1, 1, 1, 1, 1};
  const std::vector<std::uint8_t> mask = {1, 0, 0, 1, 1, 0};
  std::vector<float> q = p;  // unmasked twin for the trainable entries
  loralab::cpu::AdamW<float> masked({ParamTensor<float>{p, g, mask}},
                                    {.lr = 0.1, .weight_decay = 0.5});
  loralab::cpu::AdamW<float> plain({ParamTensor<float>{q, g, {}}},
                                   {.lr = 0.1, .weight_decay = 0.5});
  CHECK(masked.state_bytes() == 2 * 3 * 4);
  CHECK(plain.state_bytes() == 2 * 6 * 4);
  for (int i = 0; i < 5; ++i) {
    masked.step();
    plain.step();
  }
  for (int i = 0; i < 6; ++i) {
    if (mask[i])
      CHECK(p[i] == q[i]);  // same arithmetic as the unmasked optimizer
    else
      CHECK(p[i] == float(i + 1));  // no decay, no update
  }
  CHECK(masked.first_moment(0).size() == 3);
}

TEST_CASE("AdamW rejects inconsistent tensors and configs") {
  std::vector<float> p(4), g(3);
  CHECK_THROWS_AS(loralab::cpu::AdamW<float>({ParamTensor<float>{p, g, {}}}), loralab::Error);
  std::vector<float> g4(4);
  const std::vector<std::uint8_t> mask(5);
  CHECK_THROWS_AS(loralab::cpu::AdamW<float>({ParamTensor<float>{p, g4, mask}}), loralab::Error);
  CHECK_THROWS_AS(loralab::cpu::AdamW<float>({ParamTensor<float>{p, g4, {}}}, {.beta1 = 1.0}),
                  loralab::Error);
}
