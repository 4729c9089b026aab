// The whole decoder: finite-difference gradients (double) in full fine-tuning, with adapters, and
// with blocks switched frozen; zero-B adapters reproduce the base model; hooks are honoured.
#include "loralab/model/gpt.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "support/testing.hpp"

using namespace loralab;
using model::Gpt;
using model::GptConfig;
using model::GptOptions;
using model::GptWeights;
using model::Module;
using model::TrainMode;

namespace {

GptConfig tiny() {
  GptConfig c;
  c.vocab_size = 11;
  c.context = 6;
  c.layers = 2;
  c.heads = 2;
  c.d_model = 8;
  return c;
}

struct Data {
  std::vector<std::int32_t> tokens, targets;
  int batch = 2, seq = 5;
  Data() {
    for (int i = 0; i < batch * seq; ++i) {
      tokens.push_back((i * 7 + 3) % 11);
      targets.push_back(i % 4 == 1 ? -1 : (i * 5 + 1) % 11);  // some ignored positions
    }
  }
};

// Central differences on `values[i]` for every i in [0, count), against `grad`.
template <class Model>
void check_fd(Model& m, const Data& data, double* values, const double* grad, std::size_t count,
              const char* what, std::span<const std::uint8_t> mask = {}) {
  int checked = 0;
  for (std::size_t i = 0; i < count; ++i) {
    if (!mask.empty() && !mask[i])
      continue;  // frozen: its gradient must be 0 (checked by the caller)
    const double saved = values[i];
    const double h = 1e-6 * std::max(1.0, std::abs(saved));
    values[i] = saved + h;
    const double up = m.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 3});
    values[i] = saved - h;
    const double down = m.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 3});
    values[i] = saved;
    const double fd = (up - down) / (2 * h);
    INFO(std::string(what) << "[" << i << "]: analytic " << grad[i] << ", finite difference "
                           << fd);
    CHECK(std::abs(fd - grad[i]) <= 1e-7 + 1e-5 * std::abs(fd));
    ++checked;
  }
  CHECK(checked > 0);
}

}  // namespace

TEST_CASE("full fine-tuning: every weight's gradient matches finite differences") {
  GptWeights<double> w(tiny());
  w.init_gpt2(testing::kSeed);
  for (double& x : w.flat()) x *= 5;  // larger weights: a less linear, more telling check
  GptOptions opts;
  opts.mode = TrainMode::full;
  Gpt<Adapter<Rank<2>>, double> m(w, opts);
  const Data data;
  m.zero_grad();
  m.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 3});
  m.backward();
  const auto params = m.parameters();
  REQUIRE(params.size() == w.slots().size());  // one tensor per weight, in storage order
  const std::vector<double> grad(m.full_grad().begin(), m.full_grad().end());
  check_fd(m, data, w.flat().data(), grad.data(), grad.size(), "weights");
  for (std::size_t k = 0; k < params.size(); ++k) {  // views of the flat buffer, slot by slot
    CHECK(params[k].value.data() == w.flat().data() + w.slots()[k].offset);
    CHECK(params[k].grad.data() == m.full_grad().data() + w.slots()[k].offset);
    const model::TensorSlot& s = w.slots()[k];  // a block's linear weight: c_attn, c_proj, c_fc
    CHECK(params[k].projectable == (s.name.starts_with("h.") && s.rows > 1));
    CHECK(params[k].block == (s.name.starts_with("h.") ? std::stoi(s.name.substr(2)) : -1));
  }
}

TEST_CASE("adapters with dropout: every adapter entry's gradient matches finite differences") {
  GptWeights<double> w(tiny());
  w.init_gpt2(testing::kSeed);
  GptOptions opts;
  opts.adapter.alpha = 4;
  opts.adapter.dropout = 0.2;
  Gpt<Adapter<Rank<2>, RandomMask<50>, InputDropout>, double> m(w, opts);
  std::srand(5);
  for (int l = 0; l < 2; ++l)
    for (int k = 0; k < model::kModulesPerBlock; ++k) m.adapter(l, Module(k))->B().setRandom();
  const Data data;
  m.zero_grad();
  m.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 3});
  m.backward();
  for (auto& p : m.parameters()) {
    const std::vector<double> grad(p.grad.begin(), p.grad.end());
    for (std::size_t i = 0; i < p.mask.size(); ++i)
      if (!p.mask[i]) CHECK(grad[i] == 0.0);
    check_fd(m, data, p.value.data(), grad.data(), grad.size(), "adapter", p.mask);
  }
}

TEST_CASE("a frozen block gets no gradient while earlier blocks still do") {
  GptWeights<double> w(tiny());
  w.init_gpt2(testing::kSeed);
  Gpt<Adapter<Rank<2>>, double> m(w, GptOptions{});
  for (int l = 0; l < 2; ++l)
    for (int k = 0; k < model::kModulesPerBlock; ++k) m.adapter(l, Module(k))->B().setConstant(0.3);
  m.set_block_trainable(1, false);
  const Data data;
  m.zero_grad();
  m.forward(data.tokens, data.targets, data.batch, data.seq, Pass{true, 3});
  m.backward();
  for (int k = 0; k < model::kModulesPerBlock; ++k) {
    CHECK(m.adapter(1, Module(k))->grad_B().cwiseAbs().maxCoeff() == 0.0);
    CHECK(m.adapter(1, Module(k))->grad_A().cwiseAbs().maxCoeff() == 0.0);
  }
  auto* first = m.adapter(0, Module::qkv);
  const cpu::MatrixR<double> dB = first->grad_B();
  CHECK(dB.cwiseAbs().maxCoeff() > 0.0);
  check_fd(m, data, first->B().data(), dB.data(), std::size_t(dB.size()), "block 0 qkv B");

  GptOptions full;
  full.mode = TrainMode::full;
  Gpt<Adapter<Rank<2>>, double> f(w, full);
  f.set_block_trainable(0, false);
  f.zero_grad();
  f.forward(data.tokens, data.targets, data.batch, data.seq);
  f.backward();
  const auto grad = f.full_grad();
  for (const auto& s : w.slots()) {
    double norm = 0;
    for (std::int64_t i = 0; i < s.size(); ++i) norm += std::abs(grad[s.offset + i]);
    INFO(s.name);
    if (s.name.starts_with("h.0."))
      CHECK(norm == 0.0);
    else
      CHECK(norm > 0.0);  // embeddings, head, final norm and block 1 still train
  }
}

TEST_CASE("zero-B adapters reproduce the base model exactly at step 0") {
  GptWeights<float> w(tiny());
  w.init_gpt2(testing::kSeed);
  GptOptions full;
  full.mode = TrainMode::full;
  Gpt<Adapter<Rank<2>>, float> base(w, full);
  Gpt<Adapter<Rank<2>, RandomMask<50>>, float> lora(w, GptOptions{});
  const Data data;
  const double lb = base.forward(data.tokens, data.targets, data.batch, data.seq);
  const cpu::MatrixR<float> logits_base = base.forward_logits(data.tokens, data.batch, data.seq);
  const double ll = lora.forward(data.tokens, data.targets, data.batch, data.seq);
  const cpu::MatrixR<float> logits_lora = lora.forward_logits(data.tokens, data.batch, data.seq);
  CHECK(lb == ll);
  CHECK((logits_base - logits_lora).cwiseAbs().maxCoeff() == 0.0f);
  CHECK(std::abs(lb - std::log(11.0)) < 0.5);  // a fresh model is close to uniform
}

TEST_CASE("hooks: MLP hidden and attention places are called; linear inputs are exposed") {
  GptWeights<double> w(tiny());
  w.init_gpt2(testing::kSeed);
  Gpt<Adapter<Rank<2>>, double> m(w, GptOptions{});
  int fwd = 0, bwd = 0, att = 0;
  const Data data;
  std::vector<std::uint8_t> keep(std::size_t(data.batch) * 2 * data.seq * data.seq, 1);
  m.hooks().mlp_hidden_forward = [&](int, cpu::MatrixR<double>& h) {
    ++fwd;
    h.col(0).setZero();  // drop one hidden unit
  };
  m.hooks().mlp_hidden_backward = [&](int, cpu::MatrixR<double>& g) {
    ++bwd;
    g.col(0).setZero();
  };
  m.hooks().attention = [&](int, int, int) {
    ++att;
    return model::AttentionHooks{keep.data(), nullptr};
  };
  m.forward(data.tokens, data.targets, data.batch, data.seq);
  m.backward();
  CHECK(fwd == 2);
  CHECK(bwd == 2);
  CHECK(att == 2);
  CHECK(m.linear_input(1, Module::mlp_proj).col(0).cwiseAbs().maxCoeff() == 0.0);
  CHECK(m.linear_input(0, Module::qkv).rows() == data.batch * data.seq);
}

TEST_CASE("bad input: too long a sequence, a token outside the vocabulary, unknown target module") {
  GptWeights<float> w(tiny());
  Gpt<Adapter<Rank<2>>, float> m(w, GptOptions{});
  std::vector<std::int32_t> tokens(7, 1), targets(7, 1);
  CHECK_THROWS_WITH_AS(m.forward(tokens, targets, 1, 7), doctest::Contains("sequence length 7"),
                       Error);
  tokens.resize(5);
  targets.resize(5);
  tokens[2] = 11;
  CHECK_THROWS_AS(m.forward(tokens, targets, 1, 5), Error);
  CHECK_THROWS_WITH_AS(model::ModuleSet::parse("c_attn,q_proj"),
                       doctest::Contains("unknown target module 'q_proj'"), Error);
}

TEST_CASE("shared pools are owned by the model and reach the optimizer") {
  GptWeights<float> w(tiny());
  Gpt<Adapter<Rank<2>>, float> m(w, GptOptions{});
  const std::size_t before = m.parameters().size();
  auto& pool = m.shared_pool("mos.A.qkv", 40);
  pool.grad[3] = 1.5f;
  CHECK(&m.shared_pool("mos.A.qkv", 40) == &pool);
  CHECK_THROWS_WITH_AS(m.shared_pool("mos.A.qkv", 41),
                       doctest::Contains("has 40 entries, requested 41"), Error);
  CHECK(m.parameters().size() == before + 1);
  m.zero_grad();
  CHECK(pool.grad[3] == 0.0f);
}
