// ablate: the main job. Pretrains (or loads a cached) byte-level GPT-2-style base, then fine-tunes
// every arm on a task it was not trained for, over several seeds with the same data and budget,
// and prints a table (trainable parameters, optimizer state, accounted training memory, final
// metric mean +- spread, tokens/s); writes results.csv, curves.csv and curves.png.
//
// Tasks: a synthetic suite (pretrain on addition + copy + reversal, fine-tune on sorting by
// default; exact-match accuracy of the answer span) and `fortunes` (pretrain a byte LM on most
// fortune categories, fine-tune on held-out ones; validation bits per byte).
//
// Adding an arm is one line in make_arms(): a name, an adapter type, a train mode.
//
// --device cuda runs every arm (and the pretraining of the base) on the GPU: the same Trainer
// drives cuda::Gpt, fp32 or bf16 mixed precision (--dtype), and the table gains the measured peak
// device memory of each arm. The default stays the CPU, so the demo runs on any machine.
#include <loralab/loralab.hpp>
#include <loralab/train/trainer.hpp>
#include <loralab/train/weights_cache.hpp>
#if LORALAB_HAS_CUDA
#include <loralab/cuda/gpt.hpp>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace loralab;

struct Options {
  std::string task = "sorting";
  std::vector<std::string> arms = {"full", "lora", "lora-sp"};
  int rank = 8;
  double alpha = 16;
  std::int64_t steps = 600;
  std::int64_t pretrain_steps = 2000;
  int seeds = 3;
  int batch = 32;
  double lr_adapter = 3e-3, lr_full = 1e-3, lr_pretrain = 3e-3;
  int eval_examples = 100;
  std::int64_t eval_every = 200;
  fs::path out = "ablate-out";
  fs::path base_hf;  // start from a Hugging Face GPT-2 checkpoint instead of pretraining
  int threads =
      1;  // Eigen threads: on these tiny matrices OpenMP synchronization costs more than it gains
  model::GptConfig model;
  bool plot = true;
  std::string device = "cpu";  // cpu or cuda
  std::string dtype = "f32";   // cuda: f32 or bf16 (bf16 activations and base weights)
  bool recompute = false;      // cuda: recompute LayerNorm and GELU outputs in backward
  // Sharing arms (methods.md 3.9 [CHOICE]): MoS budget e, actual rank r = 4e, private p, shards l;
  // PRoLoRA at rank r with u unshared ranks and m = n copies of the shared chunk.
  int mos_budget = 2, mos_rank = 8, mos_private = 1, mos_shards = 4;
  int prolora_unshared = 1, prolora_multiple = 2;
  // Dropout arms (methods.md 4.6 [CHOICE]): rate of every dropping site, KL/JS weight, blocks.
  double drop_rate = 0.1, kl_lambda = 1.0;
  bool drop_all_layers = false;     // default: the latter half of the blocks (HiddenKey's decoders)
  std::int64_t train_examples = 0;  // > 0: fine-tune on this many examples only (overfitting)
  // Layer sampling and GaLore arms (methods.md 5.6 [CHOICE] for this model size): gamma blocks
  // (0 = max(1, L/4), OwLore's 5 of 32 rounded up), period K, GaLore rank (0 = --rank), refresh
  // period T and scale alpha (OwLore's 100 and 1), refresh method, optimizer-state policy, and
  // OWL's outlier threshold M.
  int sample_gamma = 0;
  std::int64_t sample_period = 20;
  int galore_rank = 0;
  std::int64_t galore_period = 100;
  double galore_scale = 1.0;
  std::string galore_refresh = "exact";
  std::string state_policy = "keep";
  double outlier_threshold = sampling::kOwloreOutlierThreshold;
  // ROSA arms: re-factorize every N steps (0 = steps / 4: four subspaces per run, [CHOICE]).
  std::int64_t rosa_every = 0;
  std::vector<double> outlier_ratios;  // D_l of the base, computed when an arm samples by them
};

int gamma_of(const Options& o) {
  return o.sample_gamma > 0 ? o.sample_gamma : std::max(1, o.model.layers / 4);
}

// The model type of an arm on the chosen device, built in place (models are not movable).
template <class Model>
std::unique_ptr<Model> build_model(model::GptWeights<float>& w, const model::GptOptions& opts,
                                   [[maybe_unused]] const Options& o) {
#if LORALAB_HAS_CUDA
  if constexpr (requires { typename Model::optimizer_type; }) {  // a device model
    cuda::GptDeviceOptions dev;
    dev.recompute = o.recompute;
    return std::make_unique<Model>(w, opts, dev);
  } else
#endif
  {
    return std::make_unique<Model>(w, opts);
  }
}

// Runs fn.template operator()<Model>() with the model type of (Spec, device, dtype).
template <class Spec, class Fn>
auto on_device(const Options& o, Fn&& fn) {
  if (o.device == "cuda") {
#if LORALAB_HAS_CUDA
    if (o.dtype == "bf16") return fn.template operator()<cuda::Gpt<Spec, cuda::bf16>>();
    return fn.template operator()<cuda::Gpt<Spec, float>>();
#else
    LORALAB_FAIL(
        "[loralab.config] --device cuda: this ablate was built without the CUDA backend "
        "(configure with LORALAB_CUDA=ON on a machine with nvcc)");
#endif
  }
  return fn.template operator()<model::Gpt<Spec, float>>();
}

// ---- the task: batches, evaluation, pretraining data -------------------------------------------
struct Task {
  std::function<data::Batch(std::uint64_t seed, std::int64_t step)> pretrain_batch;
  std::function<data::Batch(std::uint64_t seed, std::int64_t step)> finetune_batch;
  std::function<train::EvalResult(
      std::function<double(const data::Batch&)>,
      std::function<std::vector<std::int32_t>(std::vector<std::int32_t>)>)>
      evaluate;
  std::string metric_name;
  bool higher_is_better = true;
  std::string description;
};

Task make_synthetic(const Options& o, data::Task target) {
  const std::vector<data::Task> pre = {data::Task::addition, data::Task::copy,
                                       data::Task::reversal};
  const data::TaskOptions topt;
  const std::int64_t len = o.model.context;
  Task t;
  t.description = "pretrain on addition+copy+reversal, fine-tune on " + data::task_name(target);
  t.metric_name = "exact_match";
  t.pretrain_batch = [=](std::uint64_t seed, std::int64_t step) {
    return data::make_batch(data::mixture(pre, seed, std::uint64_t(step) * o.batch, o.batch, topt),
                            len);
  };
  t.finetune_batch = [=](std::uint64_t seed, std::int64_t step) {
    std::vector<data::Example> ex;
    for (int i = 0; i < o.batch; ++i) {
      std::uint64_t index = std::uint64_t(step) * o.batch + i;
      if (o.train_examples > 0) index %= std::uint64_t(o.train_examples);  // epochs over a set
      ex.push_back(data::make_example(target, seed, index, topt));
    }
    return data::make_batch(ex, len);
  };
  // Held out: a fixed seed no training seed uses, indices far from the training range.
  std::vector<data::Example> held;
  for (int i = 0; i < o.eval_examples; ++i)
    held.push_back(data::make_example(target, 0xE7A1, 1'000'000 + i, topt));
  t.evaluate = [=](std::function<double(const data::Batch&)> loss_of,
                   std::function<std::vector<std::int32_t>(std::vector<std::int32_t>)> generate) {
    const double loss = loss_of(
        data::make_batch(std::span(held).first(std::min<std::size_t>(64, held.size())), len));
    const double acc = data::exact_match(held, [&](const std::string& prompt) {
      std::vector<std::int32_t> toks = data::encode(prompt);
      toks.insert(toks.begin(), data::kBos);
      return data::decode(generate(toks));
    });
    return train::EvalResult{loss, acc};
  };
  return t;
}

Task make_fortunes(const Options& o) {
  const data::FortuneCorpus corpus = data::load_fortunes();
  const auto held = data::default_held_out_categories();
  auto split = std::make_shared<data::DomainSplit>(data::domain_split(corpus, held, 0.1, 7));
  const std::int64_t len = o.model.context;
  Task t;
  t.description = "pretrain a byte LM on " +
                  std::to_string(corpus.by_category.size() - held.size()) +
                  " fortune categories, fine-tune on the held-out computing ones";
  t.metric_name = "bits_per_byte";
  t.higher_is_better = false;
  t.pretrain_batch = [=](std::uint64_t seed, std::int64_t step) {
    return data::lm_batch(split->pretrain.train, o.batch, len, seed, std::uint64_t(step));
  };
  if (o.train_examples > 0) {  // a prefix of train_examples windows: many epochs over it
    const std::size_t keep = std::size_t(o.train_examples * len + 1);
    LORALAB_CHECK(split->finetune.train.size() >= keep, "[loralab.config] --train-examples ",
                  o.train_examples, " needs ", keep, " bytes of fine-tuning text, have ",
                  split->finetune.train.size());
    split->finetune.train.resize(keep);
  }
  t.finetune_batch = [=](std::uint64_t seed, std::int64_t step) {
    return data::lm_batch(split->finetune.train, o.batch, len, seed, std::uint64_t(step));
  };
  t.evaluate = [=](std::function<double(const data::Batch&)> loss_of, auto) {
    const std::int64_t n = std::min<std::int64_t>(
        8, data::lm_sequential_batch_count(split->finetune.valid.size(), o.batch, len));
    double sum = 0;
    for (std::int64_t i = 0; i < n; ++i)
      sum += loss_of(data::lm_sequential_batch(split->finetune.valid, o.batch, len, i));
    const double loss = sum / double(n);
    return train::EvalResult{loss, loss / std::log(2.0)};
  };
  return t;
}

// ---- the pretrained base, cached with its config and a hash of how it was made ----------------
model::GptWeights<float> pretrained_base(const Options& o, const Task& task) {
  std::ostringstream recipe;
  recipe << "loralab " << version_string << "|" << o.model.to_string()
         << "|task=" << task.description << "|steps=" << o.pretrain_steps << "|lr=" << o.lr_pretrain
         << "|batch=" << o.batch << "|seed=1";
  if (o.device != "cpu") recipe << "|device=" << o.device << "-" << o.dtype;  // other numerics
  const fs::path cache = o.out / ("base-" + train::recipe_hash(recipe.str()) + ".safetensors");
  model::GptWeights<float> w(o.model);
  std::string why;
  if (train::load_cached_weights(cache, recipe.str(), w, &why)) {
    std::fprintf(stderr, "[ablate] loaded the pretrained base from %s\n", cache.string().c_str());
    return w;
  }
  if (fs::exists(cache)) std::fprintf(stderr, "[ablate] %s; rebuilding it\n", why.c_str());
  std::fprintf(stderr, "[ablate] pretraining the base (%lld steps): %s\n",
               static_cast<long long>(o.pretrain_steps), recipe.str().c_str());
  w.init_gpt2(1);
  model::GptOptions opts;
  opts.mode = model::TrainMode::full;
  on_device<Adapter<DynamicRank>>(o, [&]<class Model>() {
    const auto m = build_model<Model>(w, opts, o);
    train::TrainConfig cfg;
    cfg.steps = o.pretrain_steps;
    cfg.lr = o.lr_pretrain;
    cfg.warmup = std::min<std::int64_t>(100, o.pretrain_steps / 10);
    cfg.eval_every = o.pretrain_steps;
    cfg.label = "pretrain";
    train::Trainer<Model> t(
        *m, cfg, [&](std::int64_t step, int) { return task.pretrain_batch(1, step); },
        [&] {
          const data::Batch b = task.pretrain_batch(999, 0);
          return train::EvalResult{
              m->forward(b.tokens, b.targets, int(b.batch), int(b.length), Pass{false, 0}), 0};
        });
    const auto r = t.run();
    if constexpr (requires { typename Model::optimizer_type; }) m->download(w);  // device -> host
    std::fprintf(stderr, "[ablate] pretraining done: held-out loss %.4f\n",
                 r.curve.back().eval.loss);
  });
  train::save_cached_weights(cache, recipe.str(), w);  // atomic: a crash never leaves a half file
  return w;
}

// ---- arms -------------------------------------------------------------------------------------
struct ArmRun {
  std::vector<train::EvalPoint> curve;
  double tokens_per_second = 0;
  MemoryReport memory;
  std::int64_t optimizer_bytes = 0;
  std::int64_t peak_device_bytes = -1;  // measured on the GPU (every DeviceBuffer); -1 on the CPU
  int rank = 0;                         // the adapters' (actual) rank
  std::int64_t trainable_per_step = 0;  // what trains in one period (layer sampling: E+H+gamma)
};

struct Arm {
  std::string name;
  std::string summary;  // for --help
  std::function<ArmRun(const Options&, const Task&, const model::GptWeights<float>&,
                       std::uint64_t seed)>
      run;
};

// Sets an arm's rank, sharing sizes and dropout from the options (default: --rank, none).
using Configure = std::function<void(const Options&, model::GptOptions&)>;
// Sets an arm's layer sampler and optimizer extras (GaLore, state policy); default: none.
using TrainSetup = std::function<void(const Options&, std::uint64_t seed, train::TrainConfig&)>;

// Entries of the tensors that train in the first sampling period (all of them without sampling).
template <class Params>
std::int64_t trainable_in_first_period(const Params& params, const train::TrainConfig& cfg) {
  const std::vector<bool> on = cfg.sampler ? cfg.sampler->active_at(0) : std::vector<bool>{};
  std::int64_t n = 0;
  for (const auto& p : params) {
    std::int64_t size = 0;
    if constexpr (requires { p.value.size(); })
      size = std::int64_t(p.value.size());
    else
      size = std::int64_t(p.size);
    if (p.block < 0 || on.empty() || on[std::size_t(p.block)]) n += size;
  }
  return n;
}

template <class Spec>
Arm make_arm(std::string name, model::TrainMode mode, std::string summary, Configure configure = {},
             TrainSetup setup = {}) {
  return Arm{
      name, std::move(summary),
      [name, mode, configure, setup](const Options& o, const Task& task,
                                     const model::GptWeights<float>& base, std::uint64_t seed) {
        return on_device<Spec>(o, [&]<class Model>() {
          model::GptWeights<float> w = base;  // every arm starts from the same base
          model::GptOptions opts;
          opts.mode = mode;
          opts.adapter.rank = o.rank;
          opts.adapter.alpha = o.alpha;
          opts.adapter.seed = seed;
          if (configure) configure(o, opts);
#if LORALAB_HAS_CUDA
          cuda::reset_device_memory_peak();
#endif
          const auto m = build_model<Model>(w, opts, o);
          train::TrainConfig cfg;
          cfg.steps = o.steps;
          cfg.lr = mode == model::TrainMode::full ? o.lr_full : o.lr_adapter;
          cfg.warmup = std::min<std::int64_t>(50, o.steps / 10);
          cfg.eval_every = o.eval_every;
          cfg.label = name + "/seed" + std::to_string(seed);
          if (setup) setup(o, seed, cfg);
          auto loss_of = [&](const data::Batch& b) {
            return m->forward(b.tokens, b.targets, int(b.batch), int(b.length), Pass{false, 0});
          };
          auto generate = [&](std::vector<std::int32_t> prompt) {
            return m->generate(std::move(prompt), 8, data::kEos);
          };
          train::Trainer<Model> t(
              *m, cfg, [&](std::int64_t step, int) { return task.finetune_batch(seed, step); },
              [&] { return task.evaluate(loss_of, generate); });
          ArmRun r;
          r.rank = mode == model::TrainMode::full ? 0 : opts.adapter.rank;
          const auto res = t.run();
          r.curve = res.curve;
          r.tokens_per_second = res.tokens_per_second;
          r.memory = m->memory(std::int64_t(o.batch) * o.model.context);
          r.optimizer_bytes = res.peak_optimizer_state_bytes;  // the largest held during the run
          r.trainable_per_step = trainable_in_first_period(m->parameters(), cfg);
#if LORALAB_HAS_CUDA
          if constexpr (requires { typename Model::optimizer_type; })
            r.peak_device_bytes = cuda::device_memory().peak;
#endif
          return r;
        });
      }};
}

std::map<std::string, Arm> make_arms() {
  std::map<std::string, Arm> arms;
  auto add = [&](Arm a) { arms.emplace(a.name, std::move(a)); };
  constexpr auto adapters = model::TrainMode::adapters;
  add(make_arm<Adapter<DynamicRank>>("full", model::TrainMode::full, "full fine-tuning"));
  add(make_arm<Adapter<DynamicRank>>("lora", adapters, "LoRA at --rank"));
  add(make_arm<Adapter<DynamicRank, RandomMask<50>>>("lora-sp", adapters,
                                                     "LoRA-SP (half of A, B frozen) at --rank"));
  add(make_arm<Adapter<DynamicRank, FreezeA>>("lora-fa", adapters, "LoRA with A frozen"));

  // The sharing axis (methods.md 3): MoS and its ablations at budget e and rank r, pure sharing
  // and LoRA at the same budget, LoRA at rank r and 8e, PRoLoRA.
  const auto mos = [](const Options& o, model::GptOptions& g) {
    AdapterConfig& c = g.adapter;
    c.rank = o.mos_rank;
    c.share.budget_rank = o.mos_budget;
    c.share.private_rank = o.mos_private;
    c.share.shards = o.mos_shards;
  };
  const auto rank = [](int (*of)(const Options&)) {
    return [of](const Options& o, model::GptOptions& g) { g.adapter.rank = of(o); };
  };
  add(make_arm<Adapter<DynamicRank, MixtureOfShards<>>>(
      "mos", adapters, "MoS: budget --mos-budget e, rank --mos-rank r", mos));
  add(make_arm<Adapter<DynamicRank, MixtureOfShards<false>>>(
      "mos-no-subset", adapters, "MoS without subset selection (every block the same shards)",
      mos));
  add(make_arm<Adapter<DynamicRank, MixtureOfShards<true, false>>>(
      "mos-no-dissoc", adapters, "MoS without pair dissociation (B's shards where A's are)", mos));
  add(make_arm<Adapter<DynamicRank, MixtureOfShards<true, true, false>>>(
      "mos-no-vshard", adapters, "MoS without vector sharding (whole vectors)", mos));
  add(make_arm<Adapter<DynamicRank, MixtureOfShards<true, true, true, false>>>(
      "mos-no-private", adapters, "MoS without shard privatization (p = 0)", mos));
  add(make_arm<Adapter<DynamicRank, PureSharing>>(
      "pure-share", adapters, "one A/B pair per type for all blocks, rank e*L (MoS's budget)",
      [](const Options& o, model::GptOptions& g) {
        g.adapter.rank = o.mos_budget * o.model.layers;
      }));
  add(make_arm<Adapter<DynamicRank, Prolora<>>>(
      "prolora", adapters, "PRoLoRA at rank r (--prolora-unshared u, --prolora-multiple m=n)",
      [](const Options& o, model::GptOptions& g) {
        AdapterConfig& c = g.adapter;
        c.rank = o.mos_rank;
        c.share.unshared_rank = o.prolora_unshared;
        c.share.a_multiple = c.share.b_multiple = o.prolora_multiple;
      }));
  add(make_arm<Adapter<DynamicRank>>("lora-e", adapters, "LoRA at rank e (MoS's budget)",
                                     rank([](const Options& o) { return o.mos_budget; })));
  add(make_arm<Adapter<DynamicRank>>("lora-r", adapters, "LoRA at MoS's actual rank r",
                                     rank([](const Options& o) { return o.mos_rank; })));
  add(make_arm<Adapter<DynamicRank>>("lora-8e", adapters, "LoRA at rank 8e (the paper's claim)",
                                     rank([](const Options& o) { return 8 * o.mos_budget; })));

  // The dropout framework (methods.md 4): one site or preset per arm, at --drop-rate, in the
  // latter half of the blocks (or every block with --drop-all-layers), on LoRA at --rank.
  using dropout::Pattern;
  using dropout::Position;
  const auto site = [](Position p, Pattern pat, bool stop_gradient = true) {
    return [=](const Options& o, model::GptOptions& g) {
      dropout::LayerRange range{o.drop_all_layers ? dropout::LayerRange::Kind::all
                                                  : dropout::LayerRange::Kind::latter_half,
                                {}};
      g.dropout.sites.push_back({p, pat, o.drop_rate, range, stop_gradient});
    };
  };
  const auto preset = [](dropout::Compensation comp) {
    return [=](const Options& o, model::GptOptions& g) {
      g.dropout = dropout::hiddenkey(o.drop_rate, o.drop_rate, o.kl_lambda);
      g.dropout.compensation = comp;
      if (o.drop_all_layers)
        for (auto& s : g.dropout.sites) s.layers = {};
    };
  };
  add(make_arm<Adapter<DynamicRank, InputDropout>>(
      "lora-input-drop", adapters, "LoRA with PEFT's lora_dropout at --drop-rate",
      [](const Options& o, model::GptOptions& g) { g.adapter.dropout = o.drop_rate; }));
  add(make_arm<Adapter<DynamicRank>>("dropkey-element", adapters, "DropKey, element pattern",
                                     site(Position::attention_logits, Pattern::element)));
  add(make_arm<Adapter<DynamicRank>>("dropkey-column", adapters, "DropKey, column pattern",
                                     site(Position::attention_logits, Pattern::column)));
  add(make_arm<Adapter<DynamicRank>>("dropattention", adapters,
                                     "DropAttention (element, stop-gradient normalizer)",
                                     site(Position::attention_weights, Pattern::element)));
  add(make_arm<Adapter<DynamicRank>>("hiddencut-element", adapters,
                                     "dropout on the FFN hidden, element pattern",
                                     site(Position::ffn_hidden, Pattern::element)));
  add(make_arm<Adapter<DynamicRank>>("hiddencut-span", adapters,
                                     "dropout on the FFN hidden, span pattern",
                                     site(Position::ffn_hidden, Pattern::span)));
  add(make_arm<Adapter<DynamicRank>>("hiddenkey-minus", adapters,
                                     "column DropKey + element HiddenCut, one pass",
                                     preset(dropout::Compensation::none)));
  add(make_arm<Adapter<DynamicRank>>("hiddenkey", adapters,
                                     "HiddenKey: HiddenKey- + bidirectional KL (--kl-lambda)",
                                     preset(dropout::Compensation::symmetric_kl)));
  add(make_arm<Adapter<DynamicRank>>("hiddenkey-minus-js", adapters,
                                     "HiddenKey- + JS against the deterministic pass",
                                     preset(dropout::Compensation::js)));

  // Layer sampling and GaLore (methods.md 5): full fine-tuning with the projection, LISA's
  // uniform and decreasing draws, OwLore (OWL-weighted draws + GaLore) and OwLore without GaLore.
  constexpr auto full = model::TrainMode::full;
  const auto galore = [](const Options& o) {
    GaloreConfig g;
    g.rank = o.galore_rank > 0 ? o.galore_rank : o.rank;
    g.period = o.galore_period;
    g.scale = o.galore_scale;
    g.refresh =
        o.galore_refresh == "randomized" ? GaloreRefresh::randomized : GaloreRefresh::exact_svd;
    return g;
  };
  const auto sample = [galore]<class Policy>(Policy, bool with_galore) {
    return [=](const Options& o, std::uint64_t seed, train::TrainConfig& cfg) {
      cfg.sampler = sampling::LayerSampler::make<Policy>(
          o.model.layers,
          sampling::SamplerConfig{.gamma = gamma_of(o), .period = o.sample_period, .seed = seed},
          SamplingInputs{o.outlier_ratios, {}});
      cfg.optimizer.state = parse_state_policy(o.state_policy);
      if (with_galore) cfg.optimizer.galore = galore(o);
    };
  };
  add(make_arm<Adapter<DynamicRank>>(
      "galore", full, "full fine-tuning with GaLore (--galore-rank, --galore-period)", {},
      [galore](const Options& o, std::uint64_t, train::TrainConfig& cfg) {
        cfg.optimizer.galore = galore(o);
      }));
  add(make_arm<Adapter<DynamicRank>>("lisa", full,
                                     "LISA: --sample-gamma uniform blocks every --sample-period",
                                     {}, sample(UniformBlocks{}, false)));
  add(make_arm<Adapter<DynamicRank>>("lisa-d", full, "LISA with p_l proportional to L - l", {},
                                     sample(DecreasingBlocks{}, false)));
  add(make_arm<Adapter<DynamicRank>>("owlore", full,
                                     "OwLore: outlier-weighted blocks trained with GaLore", {},
                                     sample(OutlierWeighted{}, true)));
  add(make_arm<Adapter<DynamicRank>>("owlore-full-rank", full,
                                     "OwLore without GaLore (outlier-weighted LISA)", {},
                                     sample(OutlierWeighted{}, false)));

  // ROSA (methods.md 6): SVD-slice factors at scale 1, re-factorized every --rosa-every steps
  // (uniform subsets, or the released code's contiguous block), and PiSSA's principal slice.
  const auto scale_one = [](const Options& o, model::GptOptions& g) { g.adapter.alpha = o.rank; };
  const auto every = [](const Options& o, std::uint64_t, train::TrainConfig& cfg) {
    cfg.refactorize_every =
        o.rosa_every > 0 ? o.rosa_every : std::max<std::int64_t>(1, o.steps / 4);
  };
  add(make_arm<Adapter<DynamicRank, RosaSubspace<>>>(
      "rosa", adapters, "ROSA at --rank: uniform random subspace every --rosa-every steps",
      scale_one, every));
  add(make_arm<Adapter<DynamicRank, RosaSubspace<SubspaceLaw::contiguous>>>(
      "rosa-contiguous", adapters, "ROSA with the released code's contiguous subspace", scale_one,
      every));
  add(make_arm<Adapter<DynamicRank, PrincipalSubspace>>(
      "pissa", adapters, "PiSSA-style principal init (top-r slice, once) at --rank", scale_one));
  return arms;
}

// OWL's outlier ratios of the base (methods.md 5.2): calibration on 4 batches of the
// pretraining distribution (our C4), through the frozen base on the CPU; written to the output.
std::vector<double> base_outlier_ratios(const Options& o, const Task& task,
                                        const model::GptWeights<float>& base) {
  model::GptWeights<float> w = base;
  model::GptOptions opts;
  opts.mode = model::TrainMode::full;
  model::Gpt<Adapter<DynamicRank>, float> m(w, opts);
  std::vector<data::Batch> calibration;
  for (int k = 0; k < 4; ++k) calibration.push_back(task.pretrain_batch(0xCA11B, k));
  const std::vector<double> d =
      model::outlier_ratios(m, w, std::span<const data::Batch>(calibration), o.outlier_threshold);
  const std::vector<double> p = sampling::outlier_probabilities(d);
  std::ofstream csv(o.out / "outlier_ratios.csv");
  csv << "block,outlier_ratio_percent,probability\n";
  std::fprintf(stderr, "[ablate] OWL outlier ratios (M=%g, %zu calibration sequences):",
               o.outlier_threshold, calibration.size() * std::size_t(o.batch));
  for (std::size_t l = 0; l < d.size(); ++l) {
    csv << l << ',' << d[l] << ',' << p[l] << '\n';
    std::fprintf(stderr, " %.3f", d[l]);
  }
  std::fprintf(stderr, " (written to %s)\n", (o.out / "outlier_ratios.csv").string().c_str());
  return d;
}

// ---- command line -----------------------------------------------------------------------------
std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

void usage(const std::map<std::string, Arm>& arms) {
  std::printf(
      "usage: ablate [options]\n"
      "  --task NAME          sorting (default), addition, copy, reversal, multiplication, "
      "fortunes\n"
      "  --arms LIST          comma list of arms (default full,lora,lora-sp), or 'sharing' for\n"
      "                       mos,mos-no-subset,mos-no-dissoc,mos-no-vshard,mos-no-private,"
      "pure-share,\n"
      "                       prolora,lora-e,lora-r,lora-8e, or 'dropout' for "
      "lora,lora-input-drop,\n"
      "                       dropkey-element,dropkey-column,dropattention,hiddencut-element,\n"
      "                       hiddencut-span,hiddenkey-minus,hiddenkey,hiddenkey-minus-js, or "
      "'owlore' for\n"
      "                       full,lora,galore,lisa,owlore,owlore-full-rank, or 'rosa' for\n"
      "                       lora,rosa,rosa-contiguous,pissa; available:\n");
  for (const auto& [name, arm] : arms)
    std::printf("                         %-15s %s\n", name.c_str(), arm.summary.c_str());
  std::printf(
      "  --rank R             adapter rank (default 8); --alpha A (default 16)\n"
      "  --steps N            fine-tuning steps per arm and seed (default 600)\n"
      "  --pretrain-steps N   pretraining steps of the base (default 2000; cached)\n"
      "  --seeds K            seeds per arm (default 3)\n"
      "  --batch B            sequences per step (default 32)\n"
      "  --eval-every N       evaluation period (default 200); --eval-examples N (default 100)\n"
      "  --d-model D --layers L --heads H --context C   model size (default 64, 2, 4, 24; "
      "fortunes: C=64)\n"
      "  --out DIR            output folder (default ablate-out)\n"
      "  --threads N          Eigen threads (default 1: faster for these small matrices)\n"
      "  --base-hf DIR        fine-tune a Hugging Face GPT-2 checkpoint (config.json + "
      "model.safetensors)\n"
      "                       instead of pretraining; tokens stay bytes (ids 0..259), so the "
      "vocabulary\n"
      "                       must hold at least 260 entries\n"
      "  --device cpu|cuda    where every arm trains (default cpu); cuda needs a build with "
      "the CUDA backend\n"
      "  --dtype f32|bf16     cuda: fp32, or bf16 activations and base weights with fp32 adapters "
      "and\n"
      "                       optimizer state (default f32)\n"
      "  --recompute          cuda: recompute LayerNorm and GELU outputs in backward instead of "
      "keeping them\n"
      "  --mos-budget E --mos-rank R --mos-private P --mos-shards L\n"
      "                       MoS sizes (default 2, 8, 1, 4; methods.md 3.9)\n"
      "  --prolora-unshared U --prolora-multiple M   PRoLoRA sizes (default 1, 2)\n"
      "  --drop-rate P        rate of every dropout arm's sites (default 0.1)\n"
      "  --kl-lambda W        weight of the KL / JS consistency loss (default 1)\n"
      "  --drop-all-layers    dropout arms act in every block (default: the latter half)\n"
      "  --train-examples N   fine-tune on N examples only (synthetic) or N windows of text\n"
      "                       (fortunes), for many epochs: the regime where LoRA overfits\n"
      "  --sample-gamma G     blocks trained per period by lisa, lisa-d, owlore* (default "
      "max(1, L/4))\n"
      "  --sample-period K    steps between draws (default 20)\n"
      "  --galore-rank R      GaLore rank (default --rank); --galore-period T (default 100);\n"
      "                       --galore-scale A (default 1); --galore-refresh exact|randomized\n"
      "  --state-policy P     optimizer state of unsampled blocks: keep (default), reset, drop\n"
      "  --outlier-threshold M   OWL's M for the owlore arms (default 13)\n"
      "  --rosa-every N       ROSA re-factorization period in steps (default steps/4)\n"
      "  --no-plot            skip curves.png\n");
}

Options parse(int argc, char** argv, const std::map<std::string, Arm>& arms) {
  Options o;
  o.model.vocab_size = data::kVocabSize;
  o.model.context = 0;
  o.model.layers = 2;
  o.model.heads = 4;
  o.model.d_model = 64;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      LORALAB_CHECK(i + 1 < argc, "[loralab.config] option ", a, " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage(arms);
      std::exit(0);
    } else if (a == "--task")
      o.task = value();
    else if (a == "--arms") {
      o.arms = split_list(value());
      if (o.arms == std::vector<std::string>{"sharing"})
        o.arms = {"mos",        "mos-no-subset", "mos-no-dissoc", "mos-no-vshard", "mos-no-private",
                  "pure-share", "prolora",       "lora-e",        "lora-r",        "lora-8e"};
      if (o.arms == std::vector<std::string>{"dropout"})
        o.arms = {"lora",          "lora-input-drop",   "dropkey-element", "dropkey-column",
                  "dropattention", "hiddencut-element", "hiddencut-span",  "hiddenkey-minus",
                  "hiddenkey",     "hiddenkey-minus-js"};
      if (o.arms == std::vector<std::string>{"rosa"})
        o.arms = {"lora", "rosa", "rosa-contiguous", "pissa"};
      if (o.arms == std::vector<std::string>{"owlore"})
        o.arms = {"full", "lora", "galore", "lisa", "owlore", "owlore-full-rank"};
    } else if (a == "--sample-gamma")
      o.sample_gamma = std::stoi(value());
    else if (a == "--sample-period")
      o.sample_period = std::stoll(value());
    else if (a == "--galore-rank")
      o.galore_rank = std::stoi(value());
    else if (a == "--galore-period")
      o.galore_period = std::stoll(value());
    else if (a == "--galore-scale")
      o.galore_scale = std::stod(value());
    else if (a == "--galore-refresh")
      o.galore_refresh = value();
    else if (a == "--state-policy")
      o.state_policy = value();
    else if (a == "--rosa-every")
      o.rosa_every = std::stoll(value());
    else if (a == "--outlier-threshold")
      o.outlier_threshold = std::stod(value());
    else if (a == "--mos-budget")
      o.mos_budget = std::stoi(value());
    else if (a == "--mos-rank")
      o.mos_rank = std::stoi(value());
    else if (a == "--mos-private")
      o.mos_private = std::stoi(value());
    else if (a == "--mos-shards")
      o.mos_shards = std::stoi(value());
    else if (a == "--prolora-unshared")
      o.prolora_unshared = std::stoi(value());
    else if (a == "--prolora-multiple")
      o.prolora_multiple = std::stoi(value());
    else if (a == "--drop-rate")
      o.drop_rate = std::stod(value());
    else if (a == "--kl-lambda")
      o.kl_lambda = std::stod(value());
    else if (a == "--drop-all-layers")
      o.drop_all_layers = true;
    else if (a == "--train-examples")
      o.train_examples = std::stoll(value());
    else if (a == "--rank")
      o.rank = std::stoi(value());
    else if (a == "--alpha")
      o.alpha = std::stod(value());
    else if (a == "--steps")
      o.steps = std::stoll(value());
    else if (a == "--pretrain-steps")
      o.pretrain_steps = std::stoll(value());
    else if (a == "--seeds")
      o.seeds = std::stoi(value());
    else if (a == "--batch")
      o.batch = std::stoi(value());
    else if (a == "--eval-every")
      o.eval_every = std::stoll(value());
    else if (a == "--eval-examples")
      o.eval_examples = std::stoi(value());
    else if (a == "--d-model")
      o.model.d_model = std::stoi(value());
    else if (a == "--layers")
      o.model.layers = std::stoi(value());
    else if (a == "--heads")
      o.model.heads = std::stoi(value());
    else if (a == "--context")
      o.model.context = std::stoi(value());
    else if (a == "--out")
      o.out = value();
    else if (a == "--no-plot")
      o.plot = false;
    else if (a == "--threads")
      o.threads = std::stoi(value());
    else if (a == "--base-hf")
      o.base_hf = value();
    else if (a == "--device")
      o.device = value();
    else if (a == "--dtype")
      o.dtype = value();
    else if (a == "--recompute")
      o.recompute = true;
    else
      LORALAB_FAIL("[loralab.config] unknown option '", a, "' (see --help)");
  }
  if (o.model.context == 0) o.model.context = o.task == "fortunes" ? 64 : 24;
  LORALAB_CHECK(o.device == "cpu" || o.device == "cuda", "[loralab.config] --device '", o.device,
                "': use cpu or cuda");
  LORALAB_CHECK(o.dtype == "f32" || o.dtype == "bf16", "[loralab.config] --dtype '", o.dtype,
                "': use f32 or bf16");
#if !LORALAB_HAS_CUDA
  LORALAB_CHECK(o.device == "cpu",
                "[loralab.config] --device cuda: this ablate was built "
                "without the CUDA backend (configure with LORALAB_CUDA=ON on a machine with nvcc)");
#endif
  LORALAB_CHECK(o.device == "cuda" || (o.dtype == "f32" && !o.recompute),
                "[loralab.config] --dtype bf16 and --recompute apply to --device cuda only");
  LORALAB_CHECK(o.seeds >= 1 && o.steps >= 1 && o.pretrain_steps >= 1 && o.batch >= 1,
                "[loralab.config] seeds, steps, pretrain-steps and batch must be >= 1");
  for (const auto& name : o.arms)
    LORALAB_CHECK(arms.count(name), "[loralab.config] unknown arm '", name,
                  "' (see --help for the list)");
  LORALAB_CHECK(o.galore_refresh == "exact" || o.galore_refresh == "randomized",
                "[loralab.config] --galore-refresh '", o.galore_refresh,
                "': use exact or randomized");
  parse_state_policy(o.state_policy);  // throws with the accepted names
  o.model.validate();
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const auto arms = make_arms();
    Options o = parse(argc, argv, arms);
    fs::create_directories(o.out);
    Eigen::setNbThreads(o.threads);
    const Task task =
        o.task == "fortunes" ? make_fortunes(o) : make_synthetic(o, data::parse_task(o.task));
    std::printf(
        "loralab %s ablate: %s\nmodel: %s\narms: %zu x %d seeds, %lld steps each, rank %d\n\n",
        version_string, task.description.c_str(), o.model.to_string().c_str(), o.arms.size(),
        o.seeds, static_cast<long long>(o.steps), o.rank);
    const model::GptWeights<float> base = [&] {
      if (o.base_hf.empty()) return pretrained_base(o, task);
      model::GptWeights<float> w = io::import_hf_gpt2<float>(o.base_hf);
      LORALAB_CHECK(
          w.config().vocab_size >= data::kVocabSize && w.config().context >= o.model.context,
          "[loralab.config] --base-hf ", o.base_hf.string(), ": vocab_size=", w.config().vocab_size,
          " context=", w.config().context, "; need vocab_size >= ", data::kVocabSize,
          " and context >= ", o.model.context);
      std::fprintf(stderr, "[ablate] fine-tuning the HF GPT-2 checkpoint %s (%s)\n",
                   o.base_hf.string().c_str(), w.config().to_string().c_str());
      return w;
    }();
    const std::int64_t base_bytes = std::int64_t(base.flat().size() * sizeof(float));
    if (std::any_of(o.arms.begin(), o.arms.end(),
                    [](const std::string& a) { return a.starts_with("owlore"); }))
      o.outlier_ratios = base_outlier_ratios(o, task, base);

    std::ofstream results(o.out / "results.csv"), curves(o.out / "curves.csv");
    results << "arm,seed,rank,trainable_params,trainable_per_step,optimizer_state_bytes,accounted_"
               "memory_bytes,final_eval_loss,final_"
            << task.metric_name << ",tokens_per_second,peak_device_bytes\n";
    curves << "arm,seed,step,train_loss,eval_loss," << task.metric_name << "\n";
    const bool gpu = o.device == "cuda";
    std::printf("device: %s%s\n", o.device.c_str(),
                gpu ? (" (" + o.dtype + (o.recompute ? ", recompute" : "") + ")").c_str() : "");
    std::printf("%-18s %4s %12s %12s %14s %22s %10s%s\n", "arm", "rank", "train/step",
                "optim bytes", "memory bytes", (task.metric_name + " (mean +- sd)").c_str(),
                "tok/s", gpu ? "  peak device bytes" : "");
    for (const auto& name : o.arms) {
      std::vector<double> finals;
      double tps = 0;
      ArmRun last;
      for (int s = 0; s < o.seeds; ++s) {
        const std::uint64_t seed = 1000 + std::uint64_t(s);
        last = arms.at(name).run(o, task, base, seed);
        const auto& end = last.curve.back();
        finals.push_back(end.eval.metric);
        tps += last.tokens_per_second / o.seeds;
        const std::int64_t memory = base_bytes + last.memory.total_bytes() -
                                    last.memory.optimizer_state_bytes + last.optimizer_bytes;
        results << name << ',' << seed << ',' << last.rank << ',' << last.memory.trainable_params
                << ',' << last.trainable_per_step << ',' << last.optimizer_bytes << ',' << memory
                << ',' << end.eval.loss << ',' << end.eval.metric << ',' << last.tokens_per_second
                << ',' << last.peak_device_bytes << '\n';
        for (const auto& p : last.curve)
          curves << name << ',' << seed << ',' << p.step << ',' << p.train_loss << ','
                 << p.eval.loss << ',' << p.eval.metric << '\n';
      }
      double mean = 0, var = 0;
      for (double f : finals) mean += f / double(finals.size());
      for (double f : finals)
        var += (f - mean) * (f - mean) / double(std::max<std::size_t>(1, finals.size() - 1));
      const std::int64_t memory = base_bytes + last.memory.total_bytes() -
                                  last.memory.optimizer_state_bytes + last.optimizer_bytes;
      const std::string rank = last.rank > 0 ? std::to_string(last.rank) : "-";
      std::printf("%-18s %4s %12lld %12lld %14lld %14.4f +- %.4f %10.0f", name.c_str(),
                  rank.c_str(), static_cast<long long>(last.trainable_per_step),
                  static_cast<long long>(last.optimizer_bytes), static_cast<long long>(memory),
                  mean, std::sqrt(var), tps);
      if (gpu) std::printf("  %17lld", static_cast<long long>(last.peak_device_bytes));
      std::printf("\n");
      std::fflush(stdout);
    }
    results.close();
    curves.close();
    std::printf("\nwrote %s and %s\n", (o.out / "results.csv").string().c_str(),
                (o.out / "curves.csv").string().c_str());
    if (o.plot) {
      const fs::path script = fs::path(LORALAB_SOURCE_DIR) / "examples" / "plot_curves.py";
      const std::string cmd = "/usr/bin/python3 '" + script.string() + "' '" +
                              (o.out / "curves.csv").string() + "' '" +
                              (o.out / "curves.png").string() + "' " + task.metric_name;
      if (std::system(cmd.c_str()) == 0)
        std::printf("wrote %s\n", (o.out / "curves.png").string().c_str());
      else
        std::fprintf(stderr, "[ablate] plotting failed (needs Debian's python3-matplotlib): %s\n",
                     cmd.c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ablate: %s\n", e.what());
    return 1;
  }
}
