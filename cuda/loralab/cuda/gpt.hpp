/// \file
/// \brief `cuda::Gpt`: the GPT-2-style decoder on the device with adapters of a composed type on
/// its linears; the mirror of model::Gpt (same member names, same parameter order, so a
/// train::Trainer drives either and checkpoints move between them). Host code, readable by g++;
/// the device work is in GptCore and LinearCore, linked from loralab::cuda_instances.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/core/error.hpp"
#include "loralab/core/memory.hpp"
#include "loralab/cuda/adamw.hpp"
#include "loralab/cuda/adapted_linear.hpp"
#include "loralab/cuda/gpt_core.hpp"
#include "loralab/cuda/optimizer.hpp"
#include "loralab/cuda/shard_pools.hpp"
#include "loralab/dropout/config.hpp"
#include "loralab/model/gpt.hpp"
#include "loralab/model/weights.hpp"
#include "loralab/share/shard_plan.hpp"

namespace loralab::cuda {

/// \ingroup cuda
/// \brief The decoder on the device. Copies the base weights from a host GptWeights<float>
/// (rounded to T once); adapters get module ids 4 * layer + module, as on the CPU, so their
/// initial values, LoRA-SP masks and dropout masks are the CPU's bit for bit. Under a sharing
/// policy (MoS, pure sharing, PRoLoRA) the model owns fp32 pools named as on the CPU
/// ("share." + pool name, same initial values), assembles every adapter's A_i, B_i from them at
/// each forward and scatters the factor gradients into them after each backward (ShardPools).
/// The dropout framework (GptOptions::dropout: sites, patterns, layer ranges, the two-pass KL /
/// JS compensation) runs on the device with model::Gpt's masks bit for bit (GptCore).
/// \tparam Spec the adapter type of every targeted module. \tparam T float or bf16.
template <AdapterSpec Spec, DeviceScalar T>
class Gpt {
 public:
  /// \brief The optimizer train::Trainer uses for this model (fused AdamW on the device).
  using optimizer_type = DeviceOptimizer;
  /// \brief True for ROSA (adapters re-sliced during training; train::Trainer's
  /// refactorize_every), as model::Gpt::refactorizes.
  static constexpr bool refactorizes = Spec::init::refactorizes;

  /// \brief Uploads `weights` and builds the adapters of `opts` (adapter mode).
  /// \throws Error on a bad configuration, as model::Gpt (the dropout configuration is checked
  /// with dropout::validate before anything is uploaded).
  Gpt(const model::GptWeights<float>& weights, const model::GptOptions& opts,
      const GptDeviceOptions& device = {})
      : opts_(checked(opts, weights.config())),
        core_(weights.config(), weights.flat(), opts.mode, device) {
    const model::GptConfig& cfg = core_.config();
    adapters_.resize(std::size_t(cfg.layers) * model::kModulesPerBlock);
    if (opts.mode != model::TrainMode::full) build_adapters(weights);
    core_.configure_dropout(opts_.dropout, opts_.adapter.seed);  // after the adapters exist
  }

  /// \brief The configuration.
  const model::GptConfig& config() const { return core_.config(); }
  /// \brief Options the model was built with.
  const model::GptOptions& options() const { return opts_; }
  /// \brief The stream of every launch.
  cudaStream_t stream() const { return core_.stream(); }
  /// \brief The adapter of module m in block l, or null when it carries none.
  AdaptedLinear<Spec, T>* adapter(int l, model::Module m) {
    return adapters_.at(std::size_t(l) * model::kModulesPerBlock + std::size_t(m)).get();
  }
  /// \brief The pools and index tables of a sharing policy (MoS, pure sharing, PRoLoRA), or null
  /// for private factors and in full mode; the same plan as model::Gpt's.
  const share::ShardPlan* shard_plan() const { return plan_ ? &*plan_ : nullptr; }
  /// \brief Pool k of shard_plan() on the device (fp32 values and gradient).
  DeviceSharedPool& pool(int k) { return *plan_pools_.at(std::size_t(k)); }
  /// \brief The values of pool k, copied to the host.
  std::vector<float> pool_values_host(int k) const {
    return plan_pools_.at(std::size_t(k))->value.to_host(stream());
  }
  /// \brief The gradient of pool k, copied to the host.
  std::vector<float> pool_grad_host(int k) const {
    return plan_pools_.at(std::size_t(k))->grad.to_host(stream());
  }
  /// \brief Overwrites the values of pool k (host values; the next forward assembles from them).
  /// \throws Error on a length mismatch.
  void set_pool_values(int k, std::span<const float> values) {
    plan_pools_.at(std::size_t(k))->value.upload(values, stream());
  }
  /// \brief Re-assembles every adapter's A_i, B_i (fp32 master and bf16 copy) from the pools, in
  /// one launch (done by every forward; call it after changing pool values by hand, e.g. before
  /// reading or merging the factors). No-op without pools.
  void sync_shared_factors() {
    if (shard_pools_) shard_pools_->assemble();
  }
  /// \brief The device tables and kernels of the sharing policy, or null (see shard_plan()).
  const ShardPools* shard_pools() const { return shard_pools_.get(); }

  /// \brief Dropout places (see DeviceModelHooks).
  DeviceModelHooks<T>& hooks() { return core_.hooks(); }
  /// \brief Layer-sampling hook, as model::Gpt::set_block_trainable.
  void set_block_trainable(int l, bool trainable) { core_.set_block_trainable(l, trainable); }
  /// \brief Whether block l trains.
  bool block_trainable(int l) const { return core_.block_trainable(l); }

  /// \brief Forward of token ids [batch x seq] with next-token targets (-1 ignored); returns the
  /// mean loss and keeps what backward needs. \throws Error as model::Gpt::forward.
  double forward(std::span<const std::int32_t> tokens, std::span<const std::int32_t> targets,
                 int batch, int seq, Pass pass = {}) {
    sync_shared_factors();  // pools may have moved since the last forward
    return core_.forward(tokens, targets, batch, seq, pass);
  }
  /// \brief The consistency loss (KL or JS, unweighted) of the last training forward; 0 without
  /// a compensation. The objective is forward()'s loss + lambda * this (model::Gpt::consistency).
  double consistency() const { return core_.consistency(); }
  /// \brief Forward without a loss; returns the logits [batch*seq x V] on the host (fp32).
  std::vector<float> forward_logits(std::span<const std::int32_t> tokens, int batch, int seq,
                                    Pass pass = {}) {
    sync_shared_factors();
    core_.forward_logits(tokens, batch, seq, pass);
    return core_.logits_host();
  }
  /// \brief Backward of the last forward's mean loss; accumulates what trains (under a sharing
  /// policy: into the pools, in a fixed order, leaving the adapters' gradients at zero).
  void backward() {
    core_.backward();
    scatter_shared_grads();
  }
  /// \brief Zeroes every gradient.
  void zero_grad() {
    core_.zero_grad();
    for (auto& a : adapters_)
      if (a) a->zero_grad();
  }
  /// \brief The tensors an optimizer updates, in model::Gpt's order: in full mode one tensor per
  /// gpt_layout() slot (block ids, projectable linears) then the pools; otherwise the shared pools
  /// then every adapter's (A, B, mask) with its block; only the pools under a sharing policy.
  std::vector<DeviceParamTensor> parameters() {
    std::vector<DeviceParamTensor> out = core_.own_parameters();
    if (plan_) return out;  // the adapters hold assembled copies of pool rows, not parameters
    for (std::size_t m = 0; m < adapters_.size(); ++m)
      if (adapters_[m])
        for (auto& p : adapters_[m]->parameters()) {
          p.block = int(m) / model::kModulesPerBlock;
          out.push_back(p);
        }
    return out;
  }
  /// \brief A trainable pool shared across blocks (see DeviceSharedPool).
  DeviceSharedPool& shared_pool(const std::string& name, std::size_t size) {
    return core_.shared_pool(name, size);
  }
  /// \brief Device input of module m in block l saved by the last forward.
  const T* linear_input(int l, model::Module m) const { return core_.linear_input(l, m); }
  /// \brief The input of module m in block l saved by the last forward, on the host as fp32
  /// (row-major [batch*seq x in]; what model::outlier_ratios reads). \throws Error as
  /// linear_input.
  std::vector<float> linear_input_host(int l, model::Module m) const {
    return core_.linear_input_host(l, m);
  }

  /// \brief Trainable parameters and device bytes by category for a batch of `tokens` rows
  /// (adapters' storage, gradients, AdamW state as cuda::AdamW holds it, masks, activations).
  /// Under a sharing policy, as model::Gpt: trainable = the pools (fp32 values, gradients, two
  /// moments); the assembled factors, their bf16 copies and gradients are transient_bytes;
  /// index_bytes are the device tables and use lists (ShardPools::bytes()), which include the
  /// use lists the CPU report leaves out.
  MemoryReport memory(std::int64_t tokens) const {
    MemoryReport m;
    if (opts_.mode == model::TrainMode::full) {
      const std::int64_t n = core_.weight_count();
      m.trainable_params = n;
      m.gradient_bytes = 4 * n;
      m.optimizer_state_bytes = 8 * n;
    } else {
      for (const auto& a : adapters_)
        if (a) m += a->memory(tokens);
      m.saved_input_bytes = 0;  // the model's activations are counted once below
      if (plan_) {
        const std::int64_t n = plan_->trainable_params();
        m.transient_bytes = m.parameter_bytes + m.gradient_bytes;
        m.trainable_params = n;
        m.frozen_adapter_params = 0;
        m.parameter_bytes = 4 * n;
        m.gradient_bytes = 4 * n;
        m.optimizer_state_bytes = 8 * n;
        m.mask_bytes = 0;
        m.index_bytes = shard_pools_->bytes();
      }
    }
    m.activation_bytes = core_.activation_bytes(tokens);
    return m;
  }

  /// \brief Greedy decoding, as model::Gpt::generate (eval mode, one forward per token).
  std::vector<std::int32_t> generate(std::vector<std::int32_t> prompt, int max_new,
                                     std::int32_t stop) {
    std::vector<std::int32_t> out;
    sync_shared_factors();
    for (int k = 0; k < max_new && int(prompt.size()) < config().context; ++k) {
      core_.forward_logits(prompt, 1, int(prompt.size()), Pass{false, 0});
      const std::vector<float> row = core_.logits_row(std::int64_t(prompt.size()) - 1);
      std::int32_t next = 0;
      for (std::size_t v = 1; v < row.size(); ++v)
        if (row[v] > row[std::size_t(next)]) next = std::int32_t(v);
      out.push_back(next);
      if (next == stop) break;
      prompt.push_back(next);
    }
    return out;
  }

  /// \brief Copies the base weights to `out` (trained weights in full mode; adapters stay
  /// separate, unmerged).
  void download(model::GptWeights<float>& out) const {
    LORALAB_CHECK(out.config().to_string() == config().to_string(),
                  "[loralab.shape] download: the weights are for ", out.config().to_string(),
                  ", the model is ", config().to_string());
    core_.download(out.flat());
  }

  /// \brief ROSA: re-factorizes every adapter on the device (merge, SVD, new slice drawn for
  /// `count`; see AdaptedLinear::refactorize), one layer at a time. The model's function is
  /// unchanged; the base weights of the targeted modules now hold the complements (download()
  /// returns them). No-op for other inits, as model::Gpt::refactorize.
  void refactorize(std::uint32_t count) {
    if constexpr (Spec::init::svd_slice)
      for (auto& a : adapters_)
        if (a) a->refactorize(count);
  }
  /// \brief Merges every adapter into its base weight on the device (W <- W + s B A), as
  /// model::Gpt::merge_adapters; unmerge_adapters() undoes it.
  void merge_adapters() {
    for (auto& a : adapters_)
      if (a) a->merge();
  }
  /// \brief Undoes merge_adapters() (up to rounding).
  void unmerge_adapters() {
    for (auto& a : adapters_)
      if (a) a->unmerge();
  }

  /// \brief The compiled core (for tests and tools that drive layers directly).
  GptCore<T>& core() { return core_; }

 private:
  // Options checked before anything is uploaded (the dropout framework's sites included).
  static const model::GptOptions& checked(const model::GptOptions& opts,
                                          const model::GptConfig& cfg) {
    dropout::validate(opts.dropout, cfg.layers);
    LORALAB_CHECK(!(Spec::dropout::has_input_dropout && opts.adapter.dropout > 0 &&
                    opts.dropout.site(dropout::Position::adapter_input)),
                  "[loralab.config] the dropout site adapter_input and the InputDropout policy "
                  "(AdapterConfig::dropout=",
                  opts.adapter.dropout, ") both drop the adapter input; use one");
    return opts;
  }

  // One AdaptedLinear per targeted module, module id 4 * layer + module (as model::Gpt), attached
  // to the core; then the pools of a sharing policy.
  void build_adapters(const model::GptWeights<float>& weights) {
    const model::GptOptions& opts = opts_;
    for (int l = 0; l < config().layers; ++l)
      for (int m = 0; m < model::kModulesPerBlock; ++m) {
        const auto mod = static_cast<model::Module>(m);
        if (!opts.targets.contains(mod)) continue;
        AdapterConfig c = opts.adapter;
        c.module_id = static_cast<std::uint32_t>(model::kModulesPerBlock * l + m);
        c.check_finite = false;  // the model checks its token ids instead (no sync per linear)
        const model::TensorSlot& s = weights.slots()[model::weight_slot(l, mod)];
        auto a = std::make_unique<AdaptedLinear<Spec, T>>(core_.weight(l, mod), s.rows, s.cols,
                                                          core_.bias(l, mod), c, core_.stream());
        core_.attach(l, mod, &a->core());
        adapters_[std::size_t(l) * model::kModulesPerBlock + std::size_t(m)] = std::move(a);
      }
    if constexpr (Spec::shares_factors) build_shared_factors(weights);
  }

  // Sharing policies, as model::Gpt::build_shared_factors: the plan from the same arguments (so
  // the same tables), the pools it names with the CPU's initial values, the device tables bound
  // to the pools and to every adapter's factor buffers, and the first assembly.
  void build_shared_factors(const model::GptWeights<float>& weights) {
    if (opts_.mode == model::TrainMode::full) return;
    std::vector<share::TypeShape> types;
    for (int m = 0; m < model::kModulesPerBlock; ++m) {
      const auto mod = static_cast<model::Module>(m);
      if (!opts_.targets.contains(mod)) continue;
      const model::TensorSlot& s = weights.slots()[model::weight_slot(0, mod)];
      types.push_back({m, model::module_name(mod), s.cols, s.rows});
    }
    if (types.empty()) return;
    plan_ = share::make_shard_plan(Spec::share::scheme, opts_.adapter.share,
                                   Spec::rank_for(opts_.adapter), config().layers,
                                   model::kModulesPerBlock, types, opts_.adapter.seed);
    std::vector<ShardPoolBuffers> pools;
    for (std::size_t k = 0; k < plan_->pools.size(); ++k) {
      const share::Pool& p = plan_->pools[k];
      DeviceSharedPool& pool = core_.shared_pool("share." + p.name, std::size_t(p.size()));
      std::vector<float> init(std::size_t(p.size()));
      share::fill_initial_pool<float>(*plan_, int(k), opts_.adapter.seed, init);
      pool.value.upload(init, stream());
      plan_pools_.push_back(&pool);
      pools.push_back({pool.value.data(), pool.grad.data()});
    }
    std::vector<ShardFactors> factors(plan_->tables.size());
    for (std::size_t m = 0; m < factors.size(); ++m) {
      if (!adapters_[m]) continue;
      // A sharing policy has no mask and no FreezeA (Adapter's static_asserts), so the one tensor
      // is A then B whole: the fp32 master, its bf16 copy (null for fp32) and the gradients.
      const std::vector<DeviceParamTensor> t = adapters_[m]->parameters();
      LORALAB_CHECK(t.size() == 1 && t[0].mask == nullptr &&
                        t[0].size == std::size_t(adapters_[m]->rank()) *
                                         std::size_t(adapters_[m]->in_features() +
                                                     adapters_[m]->out_features()),
                    "[loralab.share] adapter ", m, " does not expose A then B whole");
      factors[m] = {t[0].value, t[0].shadow, t[0].grad};
    }
    shard_pools_ = std::make_unique<ShardPools>(*plan_, stream());
    shard_pools_->bind(pools, factors);
    sync_shared_factors();
  }

  // Sums every adapter's factor gradient into the pools (one launch, fixed order), then clears
  // the adapters' gradients so the next backward (gradient accumulation) adds only its own.
  void scatter_shared_grads() {
    if (!shard_pools_) return;
    shard_pools_->scatter();
    for (auto& a : adapters_)
      if (a) a->zero_grad();
  }

  model::GptOptions opts_;
  GptCore<T> core_;
  std::vector<std::unique_ptr<AdaptedLinear<Spec, T>>> adapters_;  // [L x 4], null = none
  std::optional<share::ShardPlan> plan_;                           // sharing policies only
  std::vector<DeviceSharedPool*> plan_pools_;  // pool k of plan_, held by core_ (stable nodes)
  std::unique_ptr<ShardPools> shard_pools_;    // plan_'s tables on the device, bound
};

}  // namespace loralab::cuda
