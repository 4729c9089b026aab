/// \file
/// \brief The training loop: mask-aware AdamW, warmup + cosine schedule, gradient clipping and
/// accumulation, periodic evaluation with a CSV log, a progress line on stderr, and checkpoints
/// that resume to exactly the state an uninterrupted run would have.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/core/error.hpp"
#include "loralab/data/batch.hpp"
#include "loralab/io/safetensors.hpp"
#include "loralab/optim/optimizer_options.hpp"
#include "loralab/sampling/layer_sampler.hpp"
#include "loralab/train/host_optimizer.hpp"
#include "loralab/train/schedule.hpp"

namespace loralab::train {

/// \ingroup train
/// \brief Run-time knobs of a training run.
struct TrainConfig {
  std::int64_t steps = 200;          ///< optimizer steps
  int grad_accum = 1;                ///< micro-batches per optimizer step
  double lr = 3e-3;                  ///< peak learning rate
  std::int64_t warmup = 20;          ///< warmup steps
  double min_lr_ratio = 0.1;         ///< cosine floor as a fraction of lr
  double clip = 1.0;                 ///< global gradient-norm clip (0 = off)
  double weight_decay = 0.0;         ///< AdamW decoupled weight decay
  std::int64_t eval_every = 50;      ///< evaluate every N steps (and at the end)
  std::filesystem::path csv;         ///< CSV log of every evaluation (empty = none)
  std::filesystem::path checkpoint;  ///< checkpoint file: resumed from if present (empty = none)
  std::int64_t checkpoint_every =
      0;                         ///< save every N steps (0 = only at the end, if a path is set)
  std::int64_t stop_after = -1;  ///< stop (after saving) at this step, to test resumption
  bool progress = true;          ///< progress line on stderr
  std::string label = "train";   ///< shown in the progress line and the CSV
  OptimizerOptions optimizer;    ///< GaLore projection and the optimizer-state policy
  /// Layer sampling (LISA, OwLore): before steps 0, K, 2K, ... the sampler's blocks become the
  /// only trainable ones (model.set_block_trainable and the optimizer's active set); none = every
  /// block trains throughout.
  std::optional<sampling::LayerSampler> sampler;
  /// ROSA: re-factorize the model's adapters before steps N, 2N, ... (0 = never; one epoch of
  /// the ROSA code = the caller's steps per epoch), then start a fresh optimizer state; the
  /// learning rate follows the schedule of the global step, so it stays continuous.
  std::int64_t refactorize_every = 0;
};

/// \ingroup train
/// \brief One sampling period of a layer-sampled run: its first step and the blocks drawn.
struct SampledPeriod {
  std::int64_t step = 0;    ///< first step of the period
  std::vector<int> blocks;  ///< trainable blocks, ascending
};

/// \ingroup train
/// \brief What an evaluation returns: a loss and a task metric (accuracy, bits per byte, ...).
struct EvalResult {
  double loss = 0;    ///< validation loss
  double metric = 0;  ///< task metric
};

/// \ingroup train
/// \brief One row of the learning curve.
struct EvalPoint {
  std::int64_t step = 0;  ///< optimizer steps done
  double train_loss = 0;  ///< mean training loss since the previous evaluation
  EvalResult eval;        ///< the evaluation
  double lr = 0;          ///< learning rate of the last step
  double seconds = 0;     ///< wall time since the start of this run
};

/// \ingroup train
/// \brief The outcome of Trainer::run.
struct TrainResult {
  std::vector<EvalPoint> curve;        ///< every evaluation, in order
  double tokens_per_second = 0;        ///< training throughput (target tokens and context included)
  std::int64_t resumed_from = 0;       ///< step the run resumed at (0 = fresh)
  std::vector<SampledPeriod> sampled;  ///< layer sampling: every period this run trained
  std::int64_t peak_optimizer_state_bytes = 0;  ///< largest optimizer state seen after a step
};

/// \ingroup train
/// \brief The optimizer a Trainer uses for `Model`: `Model::optimizer_type` when the model names
/// one (device models: cuda::DeviceOptimizer), else HostOptimizer<T> over its parameters().
template <class Model, class T>
struct OptimizerFor {
  using type = HostOptimizer<T>;  ///< the default, host-memory parameters
};
/// \ingroup train
/// \brief The optimizer a model names for itself.
template <class Model, class T>
requires requires {
  typename Model::optimizer_type;
}
struct OptimizerFor<Model, T> {
  using type = typename Model::optimizer_type;  ///< e.g. cuda::DeviceOptimizer
};

/// \ingroup train
/// \brief Trains `Model` (anything with forward(tokens, targets, batch, seq, Pass) -> loss,
/// backward(), zero_grad(), parameters(); host models return vector<ParamTensor<T>>, device
/// models name their optimizer_type), on the CPU or the GPU alike.
///
/// Determinism: the batch of a step and every dropout mask are pure functions of the step
/// (`next_batch(step, micro)`, `Pass{true, step}`), so a checkpoint only needs the parameters, the
/// optimizer moments and the step.
template <class Model, class T = float>
class Trainer {
 public:
  /// \brief The optimizer type (see OptimizerFor).
  using Optimizer = typename OptimizerFor<Model, T>::type;
  static_assert(std::is_same_v<typename Optimizer::value_type, T>,
                "loralab: Trainer<Model, T>: T must be the optimizer's value type (float for "
                "device models)");

  /// \brief `next_batch(step, micro)` gives the micro-batch; `evaluate()` runs the validation.
  Trainer(Model& model, TrainConfig cfg, std::function<data::Batch(std::int64_t, int)> next_batch,
          std::function<EvalResult()> evaluate)
      : model_(model),
        cfg_(std::move(cfg)),
        next_batch_(std::move(next_batch)),
        evaluate_(std::move(evaluate)),
        opt_(make_optimizer(model, cfg_)) {
    LORALAB_CHECK(cfg_.steps >= 1 && cfg_.grad_accum >= 1 && cfg_.eval_every >= 1,
                  "[loralab.config] TrainConfig needs steps >= 1, grad_accum >= 1, eval_every >= "
                  "1; got steps=",
                  cfg_.steps, " grad_accum=", cfg_.grad_accum, " eval_every=", cfg_.eval_every);
  }

  /// \brief Trains (resuming from cfg.checkpoint when that file exists) and returns the curve.
  TrainResult run() {
    TrainResult result;
    std::int64_t step = 0;
    if (!cfg_.checkpoint.empty() && std::filesystem::exists(cfg_.checkpoint)) {
      step = load_checkpoint(cfg_.checkpoint);
      result.resumed_from = step;
      if (cfg_.progress)
        std::fprintf(stderr, "[%s] resumed from %s at step %lld\n", cfg_.label.c_str(),
                     cfg_.checkpoint.string().c_str(), static_cast<long long>(step));
    }
    const WarmupCosine schedule{cfg_.lr, cfg_.warmup, cfg_.steps, cfg_.min_lr_ratio};
    const auto start = std::chrono::steady_clock::now();
    auto last_print = start;
    double loss_sum = 0, tokens = 0;
    std::int64_t loss_count = 0;
    std::ofstream csv = open_csv(result.resumed_from > 0);
    const std::int64_t first_step = step;
    std::string blocks;  // the active blocks, for the progress line
    for (; step < cfg_.steps; ++step) {
      if (cfg_.sampler && cfg_.sampler->samples() &&
          (step == first_step || cfg_.sampler->resamples_at(step)))
        blocks = activate_blocks(step, result);
      if (cfg_.refactorize_every > 0 && step > 0 && step % cfg_.refactorize_every == 0)
        refactorize(step);
      model_.zero_grad();
      double step_loss = 0, step_consistency = 0;
      for (int micro = 0; micro < cfg_.grad_accum; ++micro) {
        const data::Batch b = next_batch_(step, micro);
        // A model with a dropout compensation runs its second pass inside forward (and, for
        // both-branch KL, inside backward): its cost shows in the tokens/s below.
        step_loss += model_.forward(b.tokens, b.targets, int(b.batch), int(b.length),
                                    Pass{true, std::uint64_t(step) * cfg_.grad_accum + micro});
        if constexpr (requires { model_.consistency(); })
          step_consistency += model_.consistency() / cfg_.grad_accum;
        model_.backward();
        tokens += double(b.batch * b.length);
      }
      step_loss /= cfg_.grad_accum;
      LORALAB_CHECK(std::isfinite(step_loss), "[loralab.numeric] training loss is ", step_loss,
                    " at step ", step, " of '", cfg_.label,
                    "'; try a smaller learning rate (lr=", cfg_.lr, ") or a tighter clip");
      double scale = 1.0 / cfg_.grad_accum;  // the mean over micro-batches
      if (cfg_.clip > 0) {
        const double norm = opt_.grad_norm() * scale;
        if (norm > cfg_.clip) scale *= cfg_.clip / norm;
      }
      const double lr = schedule(step);
      opt_.set_lr(lr);
      opt_.step(scale);
      result.peak_optimizer_state_bytes =
          std::max(result.peak_optimizer_state_bytes, opt_.state_bytes());
      loss_sum += step_loss;
      ++loss_count;
      const std::int64_t done = step + 1;
      const auto now = std::chrono::steady_clock::now();
      const double elapsed = std::chrono::duration<double>(now - start).count();
      if (cfg_.progress &&
          (std::chrono::duration<double>(now - last_print).count() > 2.0 || done == cfg_.steps)) {
        last_print = now;
        const double per_step = elapsed / double(done - result.resumed_from);
        char consistency[48] = "";
        if (step_consistency > 0)
          std::snprintf(consistency, sizeof consistency, "  consistency %.4f", step_consistency);
        std::fprintf(stderr, "[%s] step %lld/%lld  loss %.4f%s  lr %.2e  %.0f tok/s  ETA %.0fs%s\n",
                     cfg_.label.c_str(), static_cast<long long>(done),
                     static_cast<long long>(cfg_.steps), step_loss, consistency, lr,
                     tokens / std::max(elapsed, 1e-9), per_step * double(cfg_.steps - done),
                     blocks.c_str());
      }
      if (done % cfg_.eval_every == 0 || done == cfg_.steps) {
        EvalPoint p{done, loss_sum / double(std::max<std::int64_t>(1, loss_count)), evaluate_(), lr,
                    elapsed};
        loss_sum = 0;
        loss_count = 0;
        result.curve.push_back(p);
        if (csv) {
          csv << cfg_.label << ',' << p.step << ',' << p.train_loss << ',' << p.eval.loss << ','
              << p.eval.metric << ',' << p.lr << ',' << p.seconds << '\n';
          csv.flush();
        }
      }
      const bool stop_here = cfg_.stop_after >= 0 && done == cfg_.stop_after;
      if (!cfg_.checkpoint.empty() &&
          ((cfg_.checkpoint_every > 0 && done % cfg_.checkpoint_every == 0) || done == cfg_.steps ||
           stop_here))
        save_checkpoint(cfg_.checkpoint, done);
      if (stop_here) {
        ++step;
        break;
      }
    }
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    result.tokens_per_second = tokens / std::max(elapsed, 1e-9);
    return result;
  }

  /// \brief Writes parameters, optimizer moments and the step (atomically: temp file + rename).
  void save_checkpoint(const std::filesystem::path& path, std::int64_t step) {
    io::SafetensorsWriter w;
    const std::size_t tensors = opt_.tensors();
    for (std::size_t k = 0; k < tensors; ++k) {
      const std::vector<T> p = opt_.values(k);
      w.add<T>("param." + std::to_string(k), {std::int64_t(p.size())}, std::span<const T>(p));
      const std::vector<T> m = opt_.first_moment(k), v = opt_.second_moment(k);
      w.add<T>("adamw.m." + std::to_string(k), {std::int64_t(m.size())}, std::span<const T>(m));
      w.add<T>("adamw.v." + std::to_string(k), {std::int64_t(v.size())}, std::span<const T>(v));
      if constexpr (requires { opt_.tensor_steps(k); }) {
        // per-tensor step counters (layer sampling) and GaLore projectors with their refreshes
        const std::vector<T> proj = opt_.projector_values(k);
        const std::int64_t counters[2] = {opt_.tensor_steps(k), opt_.projector_refreshes(k)};
        w.add<std::int64_t>("optim.t." + std::to_string(k), {2},
                            std::span<const std::int64_t>(counters));
        if (!proj.empty())
          w.add<T>("galore.p." + std::to_string(k), {std::int64_t(proj.size())},
                   std::span<const T>(proj));
      }
    }
    if constexpr (
        requires { Model::refactorizes; } && !requires { model_.base_weights(); })
      LORALAB_CHECK(!Model::refactorizes, "[loralab.config] '", cfg_.label,
                    "': checkpoints of a re-factorizing (ROSA) model need its base weights, which "
                    "this model does not expose (device models: not supported yet)");
    if constexpr (requires { model_.base_weights(); }) {
      if (Model::refactorizes) {  // ROSA: the base weights hold the last complements
        const std::span<T> base = model_.base_weights();
        w.add<T>("base", {std::int64_t(base.size())}, std::span<const T>(base));
      }
    }
    w.set_metadata("format", "loralab-checkpoint");
    w.set_metadata("step", std::to_string(step));
    w.set_metadata("adamw_steps", std::to_string(opt_.steps()));
    w.set_metadata("tensors", std::to_string(tensors));
    w.set_metadata("label", cfg_.label);
    w.write(path);
  }

  /// \brief Restores a checkpoint written by save_checkpoint; returns its step.
  /// \throws Error when the file does not match this model (tensor count or sizes).
  std::int64_t load_checkpoint(const std::filesystem::path& path) {
    const io::SafetensorsFile f = io::SafetensorsFile::load(path);
    const auto& meta = f.metadata();
    LORALAB_CHECK(meta.count("format") && meta.at("format") == "loralab-checkpoint",
                  "[loralab.io] ", path.string(),
                  " is not a loralab checkpoint (no format=loralab-checkpoint)");
    const std::size_t tensors = opt_.tensors();
    LORALAB_CHECK(std::to_string(tensors) == meta.at("tensors"), "[loralab.io] ", path.string(),
                  " holds ", meta.at("tensors"), " parameter tensors, this model has ", tensors);
    const std::int64_t adamw_steps = std::stoll(meta.at("adamw_steps"));
    if constexpr (requires { model_.base_weights(); }) {
      if (Model::refactorizes) {
        LORALAB_CHECK(f.contains("base"), "[loralab.io] ", path.string(),
                      " has no base weights, which a re-factorizing (ROSA) model needs");
        const std::vector<T> base = f.read<T>("base");
        const std::span<T> dst = model_.base_weights();
        LORALAB_CHECK(base.size() == dst.size(), "[loralab.io] ", path.string(), ": base has ",
                      base.size(), " entries, the model's ", dst.size());
        std::copy(base.begin(), base.end(), dst.begin());
      }
    }
    for (std::size_t k = 0; k < tensors; ++k) {
      const std::vector<T> values = f.read<T>("param." + std::to_string(k));
      const std::size_t want = opt_.values(k).size();
      LORALAB_CHECK(values.size() == want, "[loralab.io] ", path.string(), ": tensor ", k, " has ",
                    values.size(), " entries, the model's has ", want);
      opt_.set_values(k, values);
      const std::vector<T> m = f.read<T>("adamw.m." + std::to_string(k));
      const std::vector<T> v = f.read<T>("adamw.v." + std::to_string(k));
      opt_.restore(adamw_steps, k, m, v);
      if constexpr (requires { opt_.tensor_steps(k); }) {
        const std::string t_name = "optim.t." + std::to_string(k);
        if (!f.contains(t_name)) continue;  // written before per-tensor counters existed
        const std::vector<std::int64_t> counters = f.read<std::int64_t>(t_name);
        LORALAB_CHECK(counters.size() == 2, "[loralab.io] ", path.string(), ": ", t_name, " holds ",
                      counters.size(), " values, expected 2");
        opt_.set_tensor_steps(k, counters[0]);
        const std::string p_name = "galore.p." + std::to_string(k);
        const std::vector<T> proj = f.contains(p_name) ? f.read<T>(p_name) : std::vector<T>{};
        opt_.set_projector_values(k, proj, counters[1]);
      }
    }
    return std::stoll(meta.at("step"));
  }

  /// \brief The optimizer (state bytes for the memory report).
  const Optimizer& optimizer() const { return opt_; }

 private:
  // ROSA: a new subspace for every adapter, and a fresh optimizer state.
  void refactorize(std::int64_t step) {
    if constexpr (requires {
                    model_.refactorize(0u);
                    opt_.reset_state();
                  }) {
      model_.refactorize(std::uint32_t(step / cfg_.refactorize_every));
      opt_.reset_state();
      if (cfg_.progress)
        std::fprintf(stderr, "[%s] step %lld: re-factorized the adapters (ROSA); optimizer reset\n",
                     cfg_.label.c_str(), static_cast<long long>(step));
    } else {
      LORALAB_CHECK(false, "[loralab.config] '", cfg_.label,
                    "': refactorize_every needs a model with refactorize() and an optimizer with "
                    "reset_state()");
    }
  }

  // Layer sampling: the blocks of step's period become the trainable ones (the state policy
  // applies on a fresh draw); returns the progress-line suffix.
  std::string activate_blocks(std::int64_t step, TrainResult& result) {
    const sampling::LayerSampler& s = *cfg_.sampler;
    const std::vector<bool> on = s.active_at(step);
    if constexpr (requires {
                    model_.set_block_trainable(0, true);
                    opt_.set_active_blocks(on, true);
                  }) {
      for (int l = 0; l < s.blocks(); ++l) model_.set_block_trainable(l, on[std::size_t(l)]);
      opt_.set_active_blocks(on, s.resamples_at(step));
    } else {
      LORALAB_CHECK(false, "[loralab.config] '", cfg_.label,
                    "': layer sampling needs a model with set_block_trainable and an optimizer "
                    "with set_active_blocks");
    }
    SampledPeriod period{step, s.blocks_at(step)};
    std::string text = "  blocks";
    for (int l : period.blocks) {
      text += ' ';
      text += std::to_string(l);
    }
    result.sampled.push_back(std::move(period));
    return text;
  }

  // The optimizer with the run's extras (GaLore, state policy) when it takes them.
  static Optimizer make_optimizer(Model& model, const TrainConfig& cfg) {
    const AdamWConfig adamw{.lr = cfg.lr, .weight_decay = cfg.weight_decay};
    if constexpr (std::is_constructible_v<Optimizer, Model&, AdamWConfig, OptimizerOptions>) {
      return Optimizer(model, adamw, cfg.optimizer);
    } else {
      LORALAB_CHECK(!cfg.optimizer.galore && cfg.optimizer.state == StatePolicy::keep,
                    "[loralab.config] '", cfg.label,
                    "': this model's optimizer takes no GaLore or state-policy options");
      return Optimizer(model, adamw);
    }
  }

  std::ofstream open_csv(bool append) {
    if (cfg_.csv.empty()) return {};
    const bool fresh = !append || !std::filesystem::exists(cfg_.csv);
    std::ofstream out(cfg_.csv, fresh ? std::ios::out : std::ios::app);
    LORALAB_CHECK(out.good(), "[loralab.io] cannot write the CSV log ", cfg_.csv.string());
    if (fresh) out << "label,step,train_loss,eval_loss,metric,lr,seconds\n";
    return out;
  }

  Model& model_;
  TrainConfig cfg_;
  std::function<data::Batch(std::int64_t, int)> next_batch_;
  std::function<EvalResult()> evaluate_;
  Optimizer opt_;
};

}  // namespace loralab::train
