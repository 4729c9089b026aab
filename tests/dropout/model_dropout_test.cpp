// The dropout framework inside the decoder (methods.md 4.9): rates of 0 are the plain model bit
// for bit; gradients with fixed masks match finite differences for every position and pattern;
// the KL objective's gradient (one branch and both) matches finite differences; HiddenKey leaves
// the first half of the blocks identical across branches; eval mode is one deterministic pass;
// steps re-run bit for bit; the configuration is validated.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "loralab/model/gpt.hpp"
#include "support/testing.hpp"

using namespace loralab;
using dropout::Compensation;
using dropout::LayerRange;
using dropout::Pattern;
using dropout::Position;
using model::Gpt;
using model::GptConfig;
using model::GptOptions;
using model::GptWeights;
using model::Module;
using PlainLora = Adapter<DynamicRank>;

namespace {

GptConfig tiny(int layers = 4) {
  GptConfig c;
  c.vocab_size = 11;
  c.context = 6;
  c.layers = layers;
  c.heads = 2;
  c.d_model = 8;
  return c;
}

struct Data {
  std::vector<std::int32_t> tokens, targets;
  int batch = 2, seq = 6;
  Data() {
    for (int i = 0; i < batch * seq; ++i) {
      tokens.push_back((i * 7 + 3) % 11);
      targets.push_back(i % 5 == 1 ? -1 : (i * 5 + 1) % 11);
    }
  }
};

GptOptions options(dropout::Config d, model::TrainMode mode = model::TrainMode::adapters) {
  GptOptions o;
  o.mode = mode;
  o.adapter.rank = 2;
  o.adapter.alpha = 3;
  o.adapter.seed = testing::kSeed;
  o.dropout = std::move(d);
  return o;
}

dropout::Config one_site(Position p, Pattern pat, double rate, bool stop_gradient = true) {
  dropout::Config c;
  c.sites.push_back({p, pat, rate, {}, stop_gradient});
  return c;
}

// Non-zero B so every adapter gets a gradient, and larger base weights for a telling check.
void perturb(GptWeights<double>& w) {
  w.init_gpt2(testing::kSeed);
  for (double& x : w.flat()) x *= 4;
}
template <class M>
void randomize_adapters(M& m) {
  for (auto& p : m.parameters())
    for (std::size_t i = 0; i < p.value.size(); ++i)
      p.value[i] = 0.3 * std::sin(1.1 * double(i) + 0.2 * double(p.value.size()));
}

// Every trainable entry's gradient of `objective` against central differences.
template <class M>
void check_fd(M& m, const std::function<double()>& objective, const std::function<void()>& grad,
              const std::string& what, int stride = 1) {
  m.zero_grad();
  grad();
  int checked = 0;
  for (auto& p : m.parameters()) {
    const std::vector<double> g(p.grad.begin(), p.grad.end());
    for (std::size_t i = 0; i < p.value.size(); i += stride) {
      const double saved = p.value[i], h = 1e-6;
      p.value[i] = saved + h;
      const double up = objective();
      p.value[i] = saved - h;
      const double down = objective();
      p.value[i] = saved;
      const double fd = (up - down) / (2 * h);
      INFO(what << " entry " << i << ": analytic " << g[i] << ", fd " << fd);
      CHECK(std::abs(fd - g[i]) <= 1e-7 + 1e-5 * std::abs(fd));
      ++checked;
    }
  }
  CHECK(checked > 0);
}

}  // namespace

TEST_CASE("rates of 0 reproduce the plain model bit for bit (4.9.1)") {
  GptWeights<float> w1(tiny()), w2(tiny());
  w1.init_gpt2(testing::kSeed);
  w2.init_gpt2(testing::kSeed);
  dropout::Config zero;
  for (Position p : {Position::attention_logits, Position::ffn_hidden, Position::ffn_output,
                     Position::embeddings, Position::head_input, Position::adapter_weights})
    zero.sites.push_back({p, Pattern::element, 0.0, {}});
  Gpt<PlainLora, float> plain(w1, options({})), zeroed(w2, options(zero));
  const Data d;
  plain.zero_grad();
  zeroed.zero_grad();
  CHECK(plain.forward(d.tokens, d.targets, d.batch, d.seq, Pass{true, 5}) ==
        zeroed.forward(d.tokens, d.targets, d.batch, d.seq, Pass{true, 5}));
  plain.backward();
  zeroed.backward();
  const auto a = plain.parameters(), b = zeroed.parameters();
  REQUIRE(a.size() == b.size());
  for (std::size_t k = 0; k < a.size(); ++k)
    CHECK(std::equal(a[k].grad.begin(), a[k].grad.end(), b[k].grad.begin()));
  CHECK(plain.memory(12).trainable_params == zeroed.memory(12).trainable_params);  // 4.9.10
}

TEST_CASE("gradients with fixed masks match finite differences for every position and pattern") {
  const Data d;
  struct Case {
    Position position;
    Pattern pattern;
    model::TrainMode mode;
  };
  std::vector<Case> cases;
  for (Pattern pat : {Pattern::element, Pattern::column, Pattern::span}) {
    for (Position p :
         {Position::attention_logits, Position::attention_weights, Position::ffn_hidden,
          Position::ffn_output, Position::head_input, Position::adapter_input})
      cases.push_back({p, pat, model::TrainMode::adapters});
    cases.push_back({Position::embeddings, pat, model::TrainMode::full});  // reaches wte, wpe
  }
  cases.push_back({Position::adapter_weights, Pattern::element, model::TrainMode::adapters});
  cases.push_back({Position::adapter_weights, Pattern::column, model::TrainMode::adapters});
  for (const Case& c : cases) {
    // DropAttention without the stop-gradient: the true gradient of its forward
    GptWeights<double> w(tiny(2));
    perturb(w);
    Gpt<PlainLora, double> m(w, options(one_site(c.position, c.pattern, 0.3, false), c.mode));
    if (c.mode == model::TrainMode::adapters) randomize_adapters(m);
    const Pass pass{true, 7};
    auto objective = [&] { return m.forward(d.tokens, d.targets, d.batch, d.seq, pass); };
    auto grad = [&] {
      objective();
      m.backward();
    };
    const std::string what =
        std::string(dropout::position_name(c.position)) + "/" + std::to_string(int(c.pattern));
    check_fd(m, objective, grad, what, c.mode == model::TrainMode::full ? 7 : 1);
  }
}

TEST_CASE("the consistency objective's gradient matches finite differences (4.9.7)") {
  const Data d;
  for (Compensation comp : {Compensation::symmetric_kl, Compensation::js})
    for (bool both : {false, true}) {
      if (both && comp == Compensation::js) continue;
      GptWeights<double> w(tiny(2));
      perturb(w);
      dropout::Config cfg = dropout::hiddenkey(0.3, 0.3, 0.7);
      cfg.sites[0].layers = {};  // every block, so both blocks carry noise
      cfg.sites[1].layers = {};
      cfg.compensation = comp;
      cfg.backprop_both = both;
      Gpt<PlainLora, double> m(w, options(cfg));
      randomize_adapters(m);
      const Pass pass{true, 3};
      const model::Consistency kind =
          comp == Compensation::js ? model::Consistency::js : model::Consistency::symmetric_kl;
      // The reference branch at the unperturbed parameters: a constant for one-branch training.
      const Pass ref = comp == Compensation::js ? Pass{false, 3, 0} : Pass{true, 3, 1};
      const cpu::MatrixR<double> fixed_ref = m.forward_logits(d.tokens, d.batch, d.seq, ref);
      cpu::MatrixR<double> none(0, 0);
      auto ce_of = [&](const cpu::MatrixR<double>& z) {
        cpu::MatrixR<double> probs(z.rows(), z.cols());
        return model::cross_entropy_forward<double>(z, d.targets, probs).loss;
      };
      auto objective = [&] {
        const cpu::MatrixR<double> z0 = m.forward_logits(d.tokens, d.batch, d.seq, pass);
        if (both) {  // 0.5 (CE0 + CE1) + lambda KL(z0, z1), both branches varying
          const cpu::MatrixR<double> z1 = m.forward_logits(d.tokens, d.batch, d.seq, ref);
          return 0.5 * (ce_of(z0) + ce_of(z1)) +
                 cfg.lambda * model::consistency_loss<double>(kind, z0, z1, d.targets, 0, none);
        }
        // CE0 + lambda * consistency(z0, reference held at the unperturbed parameters)
        return ce_of(z0) + cfg.lambda * model::consistency_loss<double>(kind, z0, fixed_ref,
                                                                        d.targets, 0, none);
      };
      auto grad = [&] {
        m.forward(d.tokens, d.targets, d.batch, d.seq, pass);
        m.backward();
      };
      INFO("compensation " << int(comp) << " both " << both);
      check_fd(m, objective, grad, "consistency", 3);
    }
}

TEST_CASE("HiddenKey: the first half of the blocks sees identical activations in both branches") {
  GptWeights<float> w(tiny(4));
  w.init_gpt2(testing::kSeed);
  Gpt<PlainLora, float> m(w, options(dropout::hiddenkey(0.3, 0.3)));
  const Data d;
  std::vector<cpu::MatrixR<float>> branch0;
  m.forward_logits(d.tokens, d.batch, d.seq, Pass{true, 2, 0});
  for (int l = 0; l < 4; ++l)
    for (int k = 0; k < 4; ++k) branch0.push_back(m.linear_input(l, Module(k)));
  m.forward_logits(d.tokens, d.batch, d.seq, Pass{true, 2, 1});
  for (int l = 0; l < 4; ++l)
    for (int k = 0; k < 4; ++k) {
      const bool same = branch0[std::size_t(l * 4 + k)] == m.linear_input(l, Module(k));
      INFO("block " << l << " module " << k);
      // blocks 0, 1 and block 2's attention input: no noise yet; from block 2's attention on,
      // the branches differ
      if (l < 2 || (l == 2 && k == 0))
        CHECK(same);
      else
        CHECK(!same);
    }
}

TEST_CASE("eval mode is one deterministic pass; a step re-runs bit for bit (4.9.8, 4.9.9)") {
  GptWeights<float> w1(tiny()), w2(tiny());
  w1.init_gpt2(testing::kSeed);
  w2.init_gpt2(testing::kSeed);
  Gpt<PlainLora, float> plain(w1, options({})), hk(w2, options(dropout::hiddenkey(0.2, 0.2)));
  const Data d;
  const cpu::MatrixR<float> want = plain.forward_logits(d.tokens, d.batch, d.seq, Pass{false});
  CHECK(hk.forward_logits(d.tokens, d.batch, d.seq, Pass{false}) == want);
  CHECK(hk.forward(d.tokens, d.targets, d.batch, d.seq, Pass{false}) ==
        plain.forward(d.tokens, d.targets, d.batch, d.seq, Pass{false}));
  CHECK(hk.consistency() == 0.0);
  // training: two passes; the same step twice gives the same losses, another step others
  const double l1 = hk.forward(d.tokens, d.targets, d.batch, d.seq, Pass{true, 4});
  const double c1 = hk.consistency();
  CHECK(c1 > 0);
  CHECK(hk.forward(d.tokens, d.targets, d.batch, d.seq, Pass{true, 4}) == l1);
  CHECK(hk.consistency() == c1);
  hk.forward(d.tokens, d.targets, d.batch, d.seq, Pass{true, 5});
  CHECK(hk.consistency() != c1);
}

TEST_CASE("the configuration is validated with the offending site named") {
  GptWeights<float> w(tiny());
  w.init_gpt2(testing::kSeed);
  auto error = [&](dropout::Config c) {
    return testing::error_of([&] { Gpt<PlainLora, float> m(w, options(std::move(c))); });
  };
  CHECK(error(one_site(Position::ffn_hidden, Pattern::element, 1.0))
            .find("dropout site ffn_hidden: rate 1 outside [0, 1)") != std::string::npos);
  dropout::Config both = one_site(Position::attention_logits, Pattern::column, 0.1);
  both.sites.push_back({Position::attention_weights, Pattern::column, 0.1, {}});
  CHECK(error(both).find("do not combine") != std::string::npos);
  {
    GptOptions o = options(one_site(Position::adapter_input, Pattern::element, 0.1));
    o.adapter.dropout = 0.1;
    CHECK(testing::error_of([&] {
            Gpt<Adapter<DynamicRank, InputDropout>, float> m(w, o);
          }).find("both drop the adapter input") != std::string::npos);
  }
  dropout::Config list = one_site(Position::ffn_output, Pattern::span, 0.1);
  list.sites[0].layers = {LayerRange::Kind::list, {1, 9}};
  CHECK(error(list).find("ffn_output: layer 9 outside [0, 4)") != std::string::npos);
}
