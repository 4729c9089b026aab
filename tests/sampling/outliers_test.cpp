// OWL's layerwise outlier ratios (methods.md 5.10 invariants 1-3): a hand-counted block, the
// block-wide mean, invariance to scaling a block's weights or its inputs, and the calibration run
// through a decoder against the ratio computed directly from its saved linear inputs.
#include "loralab/sampling/outliers.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "loralab/model/gpt.hpp"
#include "loralab/model/outliers.hpp"
#include "support/testing.hpp"

using namespace loralab;
using sampling::ChannelNorms;
using sampling::ScoredLinear;

TEST_CASE("channel norms: sqrt of the mean over samples of the per-sample sum of squares") {
  ChannelNorms n(2);
  const std::vector<float> s1 = {1, 2, 3, 4};  // 2 tokens x 2 channels
  const std::vector<float> s2 = {0, 1};        // 1 token
  n.add_sample(std::span<const float>(s1), 2);
  n.add_sample(std::span<const float>(s2), 1);
  const auto a = n.norms();
  CHECK(a[0] == doctest::Approx(std::sqrt((1.0 + 9.0 + 0.0) / 2)));
  CHECK(a[1] == doctest::Approx(std::sqrt((4.0 + 16.0 + 1.0) / 2)));
  CHECK(testing::error_of([&] {
          n.add_sample(std::span<const float>(s1), 3);
        }).find("4 values for 3 tokens") != std::string::npos);
}

TEST_CASE("a hand-counted block: the threshold is M times the mean over ALL its sublayers") {
  // Sublayer 1: scores {1, 1, 1, 1}; sublayer 2: scores {1, 1, 1, 9} (9 from |W| = 9, a = 1).
  // Block mean = 16/8 = 2; with M = 4 the cut is 8: one score (9) above: D = 100 / 8 = 12.5.
  const std::vector<double> w1 = {1, -1, 1, 1}, w2 = {1, 1, -1, 9}, a = {1, 1};
  std::vector<ScoredLinear<double>> block = {{w1, 2, 2, a}, {w2, 2, 2, a}};
  CHECK(sampling::block_outlier_ratio<double>(block, 4.0) == doctest::Approx(12.5));
  // Per-sublayer means would be 1 and 3: sublayer 2's cut 12 would find no outlier at all, so a
  // per-sublayer implementation gives 0 here.
  std::vector<ScoredLinear<double>> only2 = {{w2, 2, 2, a}};
  CHECK(sampling::block_outlier_ratio<double>(only2, 4.0) == 0.0);
  // Scaling ONE sublayer by 10 moves the block mean and changes D (invariant 3).
  const std::vector<double> w1x10 = {10, -10, 10, 10};
  std::vector<ScoredLinear<double>> scaled = {{w1x10, 2, 2, a}, {w2, 2, 2, a}};
  // scores {10, 10, 10, 10, 1, 1, 1, 9}, mean 6.5, M = 1.2: cut 7.8 -> 5 above.
  CHECK(sampling::block_outlier_ratio<double>(scaled, 1.2) == doctest::Approx(62.5));
  CHECK(sampling::block_outlier_ratio<double>(block, 1.2) == doctest::Approx(12.5));
}

TEST_CASE("D is invariant to scaling the whole block's weights or its inputs; p sums to 1") {
  std::vector<double> w(6 * 4), a(4);
  for (std::size_t i = 0; i < w.size(); ++i)
    w[i] = std::sin(double(i) * 1.7) * (i % 7 == 0 ? 9 : 1);
  for (std::size_t c = 0; c < a.size(); ++c) a[c] = 0.5 + double(c);
  std::vector<double> w_scaled = w, a_scaled = a;
  for (double& x : w_scaled) x *= 3.25;
  for (double& x : a_scaled) x *= 0.125;
  const std::vector<double> w2 = {0.1, 0.2, -0.3, 0.4, 5.0, 0.6, 0.7, 0.8};
  const std::vector<double> a2 = {1.0, 2.0, 3.0, 4.0};
  const std::vector<double> w2s = {0.325, 0.65, -0.975, 1.3, 16.25, 1.95, 2.275, 2.6};
  std::vector<ScoredLinear<double>> base = {{w, 6, 4, a}, {w2, 2, 4, a2}};
  std::vector<ScoredLinear<double>> by_weight = {{w_scaled, 6, 4, a}, {w2s, 2, 4, a2}};
  const std::vector<double> a2s = {0.125, 0.25, 0.375, 0.5};
  std::vector<ScoredLinear<double>> by_input = {{w, 6, 4, a_scaled}, {w2, 2, 4, a2s}};
  for (double M : {1.5, 2.0, 3.0}) {
    const double d = sampling::block_outlier_ratio<double>(base, M);
    CHECK(d > 0);
    CHECK(d <= 100);
    CHECK(sampling::block_outlier_ratio<double>(by_weight, M) == d);
    CHECK(sampling::block_outlier_ratio<double>(by_input, M) == d);
  }
  const std::vector<double> ratios = {0.268, 0.295, 0.018, 0.082};
  const auto p = sampling::outlier_probabilities(ratios);
  double sum = 0;
  for (double x : p) sum += x;
  CHECK(std::abs(sum - 1.0) <= 1e-12);
  CHECK(p[1] / p[3] == doctest::Approx(0.295 / 0.082));
  const std::vector<double> zeros = {0, 0};
  CHECK(testing::error_of([&] { sampling::outlier_probabilities(zeros); }).find("smaller M") !=
        std::string::npos);
}

TEST_CASE("calibration through the decoder: D_l from its own linear inputs, block by block") {
  model::GptConfig c;
  c.vocab_size = 13;
  c.context = 8;
  c.layers = 3;
  c.heads = 2;
  c.d_model = 8;
  model::GptWeights<double> w(c);
  w.init_gpt2(testing::kSeed);
  model::GptOptions opts;
  opts.mode = model::TrainMode::full;
  model::Gpt<Adapter<Rank<2>>, double> m(w, opts);
  std::vector<data::Batch> calib(2);
  for (int k = 0; k < 2; ++k) {
    calib[k].batch = 3;
    calib[k].length = 7;
    for (int i = 0; i < 21; ++i) {
      calib[k].tokens.push_back((i * 5 + k * 3 + 1) % 13);
      calib[k].targets.push_back(-1);
    }
  }
  const double M = 3.0;
  const std::vector<double> d = model::outlier_ratios(m, w, std::span<const data::Batch>(calib), M);
  REQUIRE(d.size() == 3);
  // Independent recomputation: per channel, the sum of squares over all 6 sequences' tokens
  // divided by 6 samples, from the forward's saved inputs of each batch.
  std::vector<std::vector<double>> sum_sq(3 * 4);
  for (const auto& b : calib) {
    m.forward_logits(b.tokens, 3, 7, Pass{false, 0});
    for (int l = 0; l < 3; ++l)
      for (int k = 0; k < 4; ++k) {
        const auto& X = m.linear_input(l, model::Module(k));
        auto& s = sum_sq[l * 4 + k];
        s.resize(std::size_t(X.cols()), 0.0);
        for (Eigen::Index r = 0; r < X.rows(); ++r)
          for (Eigen::Index j = 0; j < X.cols(); ++j) s[j] += X(r, j) * X(r, j);
      }
  }
  for (int l = 0; l < 3; ++l) {
    double total = 0, count = 0;
    std::vector<double> scores;
    for (int k = 0; k < 4; ++k) {
      auto W = w.weight(l, model::Module(k));
      for (Eigen::Index o = 0; o < W.rows(); ++o)
        for (Eigen::Index j = 0; j < W.cols(); ++j)
          scores.push_back(std::abs(W(o, j)) * std::sqrt(sum_sq[l * 4 + k][j] / 6.0));
    }
    for (double s : scores) total += s, count += 1;
    double above = 0;
    for (double s : scores) above += s > M * total / count;
    INFO("block " << l);
    CHECK(d[l] == doctest::Approx(100.0 * above / count).epsilon(1e-12));
    CHECK(d[l] > 0);
  }
  // Changing block 2's weights leaves the earlier blocks' ratios bitwise alone (their inputs and
  // weights are untouched), and changes block 2's.
  for (int k = 0; k < 4; ++k) w.weight(2, model::Module(k)).row(0) *= 40.0;
  const std::vector<double> d2 =
      model::outlier_ratios(m, w, std::span<const data::Batch>(calib), M);
  CHECK(d2[0] == d[0]);
  CHECK(d2[1] == d[1]);
  CHECK(d2[2] != d[2]);
}
