/// \file
/// \brief `model::Gpt`: a GPT-2-style decoder (pre-LayerNorm, GELU MLP, learned positions,
/// causal multi-head attention, tied embeddings) on the CPU, whose linears carry adapters of a
/// composed type, with the hooks later methods need (per-block trainability, dropout places in
/// attention and on the MLP hidden, access to every linear's input).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/core/error.hpp"
#include "loralab/core/memory.hpp"
#include "loralab/cpu/adapted_linear.hpp"
#include "loralab/dropout/config.hpp"
#include "loralab/dropout/masks.hpp"
#include "loralab/model/consistency.hpp"
#include "loralab/model/layers.hpp"
#include "loralab/model/options.hpp"
#include "loralab/model/weights.hpp"
#include "loralab/optim/param_tensor.hpp"
#include "loralab/share/shard_plan.hpp"

namespace loralab::model {

/// \ingroup model
/// \brief Places where later methods (the dropout framework) act inside a block. Each is
/// optional; called with the block index.
template <class T>
struct ModelHooks {
  /// Attention hooks for block l of a (batch, seq) pass; the arrays must stay valid until the
  /// matching backward (the same hooks are passed to attention_backward).
  std::function<AttentionHooks(int layer, int batch, int seq)> attention;
  /// Applied in place to the MLP hidden (GELU output [n x ff]) in forward ...
  std::function<void(int layer, cpu::MatrixR<T>& hidden)> mlp_hidden_forward;
  /// ... and to its gradient in backward (the same element-wise map, e.g. mask / (1-p)).
  std::function<void(int layer, cpu::MatrixR<T>& grad_hidden)> mlp_hidden_backward;
};

/// \ingroup model
/// \brief The decoder. Holds a reference to caller-owned base weights (adapters merge into
/// them); in full mode it also holds their gradients.
/// \tparam Spec the adapter type of every targeted module. \tparam T float or double.
template <AdapterSpec Spec, class T>
class Gpt {
 public:
  /// \brief Builds adapters on the targeted modules (adapter mode) with module ids
  /// 4 * layer + module, so every adapter has its own random streams.
  Gpt(GptWeights<T>& weights, const GptOptions& opts)
      : w_(weights), opts_(opts), cfg_(weights.config()) {
    const int L = cfg_.layers;
    dropout::validate(opts.dropout, L);
    LORALAB_CHECK(!(Spec::dropout::has_input_dropout && opts.adapter.dropout > 0 &&
                    opts.dropout.site(dropout::Position::adapter_input)),
                  "[loralab.config] the dropout site adapter_input and the InputDropout policy "
                  "(AdapterConfig::dropout=",
                  opts.adapter.dropout, ") both drop the adapter input; use one");
    trainable_.assign(L, true);
    acts_.resize(L);
    adapters_.resize(std::size_t(L) * kModulesPerBlock);
    if (opts.mode == TrainMode::full) {
      grads_.assign(w_.flat().size(), T(0));
      return;
    }
    for (int l = 0; l < L; ++l)
      for (int m = 0; m < kModulesPerBlock; ++m) {
        const Module mod = static_cast<Module>(m);
        if (!opts.targets.contains(mod)) continue;
        AdapterConfig c = opts.adapter;
        c.module_id = static_cast<std::uint32_t>(kModulesPerBlock * l + m);
        c.check_finite = false;  // the model checks its own inputs (token ids) instead
        auto bias = w_.bias(l, mod);
        adapters_[index(l, mod)] = std::make_unique<cpu::AdaptedLinear<Spec, T>>(
            w_.weight(l, mod), std::span<const T>(bias.data(), bias.size()), c);
      }
    if constexpr (Spec::shares_factors) build_shared_factors();
  }

  /// \brief The configuration.
  const GptConfig& config() const { return cfg_; }
  /// \brief Options the model was built with.
  const GptOptions& options() const { return opts_; }
  /// \brief The adapter of module m in block l, or null when it carries none.
  cpu::AdaptedLinear<Spec, T>* adapter(int l, Module m) { return adapters_[index(l, m)].get(); }
  /// \brief The pools and index tables of a sharing policy (MoS, pure sharing, PRoLoRA), or null
  /// for private factors and in full mode.
  const share::ShardPlan* shard_plan() const { return plan_ ? &*plan_ : nullptr; }
  /// \brief The values of pool k of shard_plan() (model-owned, trained by the optimizer).
  std::span<T> pool_values(int k) { return plan_pools_.at(k)->value; }
  /// \brief The gradient of pool k of shard_plan().
  std::span<const T> pool_grad(int k) const { return plan_pools_.at(k)->grad; }
  /// \brief Re-assembles every adapter's A_i, B_i from the pools (done by every forward; call it
  /// after changing pool values by hand, e.g. before exporting the factors). No-op without pools.
  void sync_shared_factors() {
    if (!plan_) return;
    for (std::size_t m = 0; m < adapters_.size(); ++m) {
      if (!plan_->tables[m].active()) continue;
      const auto& t = plan_->tables[m];
      share::assemble_factors<T>(*plan_, int(m), plan_pools_[t.pool_a]->value,
                                 plan_pools_[t.pool_b]->value, adapters_[m]->A().data(),
                                 adapters_[m]->B().data());
    }
  }

  /// \brief Whether the adapters are re-factorized during training (ROSA's RosaSubspace init).
  static constexpr bool refactorizes = Spec::init::refactorizes;

  /// \brief ROSA: re-factorizes every adapter (merge, SVD, new slice drawn for `count`; see
  /// cpu::AdaptedLinear::refactorize). The model's function is unchanged; the base weights of
  /// the targeted modules now hold the complements. No-op for other inits.
  void refactorize(std::uint32_t count) {
    if constexpr (Spec::init::svd_slice)
      for (auto& a : adapters_)
        if (a) a->refactorize(count);
  }

  /// \brief Merges every adapter into its base weight (W <- W + s B A): the dense model of zero
  /// inference overhead, e.g. for io::export_hf_gpt2. unmerge_adapters() undoes it.
  void merge_adapters() {
    for (auto& a : adapters_)
      if (a) a->merge();
  }
  /// \brief Undoes merge_adapters() (up to rounding).
  void unmerge_adapters() {
    for (auto& a : adapters_)
      if (a) a->unmerge();
  }

  /// \brief The base weights (flat, GptWeights layout). ROSA changes them at every
  /// re-factorization, so checkpoints of such models carry them.
  std::span<T> base_weights() { return w_.flat(); }

  /// \brief Dropout places (see ModelHooks).
  ModelHooks<T>& hooks() { return hooks_; }

  /// \brief Layer-sampling hook: a frozen block's parameters get no gradient (its adapters, or
  /// its weights in full mode), while the gradient still flows through it.
  void set_block_trainable(int l, bool trainable) { trainable_.at(l) = trainable; }
  /// \brief Whether block l trains.
  bool block_trainable(int l) const { return trainable_.at(l); }

  /// \brief Forward of a batch of token ids [batch x seq] with next-token targets (-1 = ignored);
  /// returns the mean loss over non-ignored targets and keeps activations for backward.
  /// \throws Error on a sequence longer than the context or a token outside the vocabulary.
  double forward(std::span<const std::int32_t> tokens, std::span<const std::int32_t> targets,
                 int batch, int seq, Pass pass = {}) {
    LORALAB_CHECK(seq >= 1 && seq <= cfg_.context, "[loralab.shape] sequence length ", seq,
                  " outside [1, context=", cfg_.context, "]");
    targets_.assign(targets.begin(), targets.end());
    consistency_ = 0;
    two_pass_ = pass.training && opts_.dropout.two_pass();
    double reference_ce = 0;
    if (two_pass_) {  // the reference first: the main pass's activations must survive for backward
      const Pass ref = reference_pass(pass);
      forward_logits(tokens, batch, seq, ref);
      reference_ = logits_;
      if (opts_.dropout.backprop_both)
        reference_ce = cross_entropy_forward<T>(logits_, targets_, probs_).loss;
    }
    forward_logits(tokens, batch, seq, pass);
    const CrossEntropyResult ce = cross_entropy_forward<T>(logits_, targets_, probs_);
    count_ = ce.count;
    if (!two_pass_) return ce.loss;
    cpu::MatrixR<T> no_grad(0, 0);  // the value only
    consistency_ =
        consistency_loss<T>(consistency_kind(), logits_, reference_, targets_, 0.0, no_grad);
    // The task loss: branch 0's, or the mean of both branches' when both back-propagate.
    return opts_.dropout.backprop_both ? 0.5 * (ce.loss + reference_ce) : ce.loss;
  }

  /// \brief The consistency loss (KL or JS, unweighted) of the last training forward; 0 without
  /// a compensation. The trainer's objective is forward()'s loss + lambda * this.
  double consistency() const { return consistency_; }

  /// \brief Forward without a loss: logits [batch*seq x V] (e.g. for generation).
  const cpu::MatrixR<T>& forward_logits(std::span<const std::int32_t> tokens, int batch, int seq,
                                        Pass pass = {}) {
    const int d = cfg_.d_model;
    const Eigen::Index n = Eigen::Index(batch) * seq;
    batch_ = batch;
    seq_ = seq;
    pass_ = pass;
    sync_shared_factors();  // pools may have moved since the last forward
    apply_drop_connect();
    tokens_.assign(tokens.begin(), tokens.end());
    cpu::MatrixR<T> x(n, d);
    embedding_forward<T>(tokens_, batch, seq, w_.wte(), w_.wpe(), x);
    if (hidden_mask(dropout::Position::embeddings, 0, x.rows(), x.cols(), emb_scale_))
      x.array() *= emb_scale_.array();
    for (int l = 0; l < cfg_.layers; ++l) x = block_forward(l, std::move(x));
    final_in_ = std::move(x);
    hf_.resize(n, d);
    mean_f_.resize(n);
    rstd_f_.resize(n);
    layernorm_forward<T>(final_in_, w_.lnf_gamma(), w_.lnf_beta(), cfg_.ln_eps, hf_, mean_f_,
                         rstd_f_);
    if (hidden_mask(dropout::Position::head_input, 0, hf_.rows(), hf_.cols(), head_scale_))
      hf_.array() *= head_scale_.array();
    logits_.resize(n, cfg_.vocab_size);
    probs_.resize(n, cfg_.vocab_size);
    lm_head_forward<T>(hf_, w_.wte(), logits_);
    restore_drop_connect();  // the parameters hold their own values between calls
    return logits_;
  }

  /// \brief Backward of the last forward's mean loss; accumulates gradients of what trains.
  void backward() {
    LORALAB_CHECK(!targets_.empty(),
                  "[loralab.state] Gpt::backward without a forward with targets");
    const Eigen::Index n = Eigen::Index(batch_) * seq_;
    cpu::MatrixR<T> dlogits(n, cfg_.vocab_size);
    cross_entropy_backward<T>(probs_, targets_, count_, dlogits);
    apply_drop_connect();  // the masks of the last forward again (they are keyed by its pass)
    stash_drop_connect_grads();
    if (two_pass_) {
      if (opts_.dropout.backprop_both) dlogits *= T(0.5);  // the mean of the two task losses
      consistency_loss<T>(consistency_kind(), logits_, reference_, targets_, opts_.dropout.lambda,
                          dlogits);
    }
    backward_from_logits(dlogits);
    if (two_pass_ && opts_.dropout.backprop_both) {
      // R-Drop's both branches: re-run branch 1 (same masks) against branch 0 as the constant,
      // and back-propagate it too; the two halves sum to the gradient of the symmetric KL.
      cpu::MatrixR<T> branch0 = logits_;
      forward_logits(tokens_, batch_, seq_, reference_pass(pass_));
      reference_ = std::move(branch0);
      cross_entropy_forward<T>(logits_, targets_, probs_);
      cross_entropy_backward<T>(probs_, targets_, count_, dlogits);
      dlogits *= T(0.5);
      consistency_loss<T>(consistency_kind(), logits_, reference_, targets_, opts_.dropout.lambda,
                          dlogits);
      backward_from_logits(dlogits);
    }
    finish_drop_connect();
    scatter_shared_grads();
  }

 private:
  void backward_from_logits(const cpu::MatrixR<T>& dlogits) {
    const Eigen::Index n = Eigen::Index(batch_) * seq_;
    const int d = cfg_.d_model;
    cpu::MatrixR<T> dhf(n, d), dx = cpu::MatrixR<T>::Zero(n, d);
    if (full()) {
      lm_head_backward<T>(dlogits, hf_, w_.wte(), dhf, grad_view(0));
      if (head_scale_.size() > 0) dhf.array() *= head_scale_.array();
      layernorm_backward<T>(dhf, final_in_, w_.lnf_gamma(), mean_f_, rstd_f_, dx,
                            grad_vec(slots() - 2), grad_vec(slots() - 1));
    } else {
      dhf.noalias() = dlogits * w_.wte();  // the tied head is frozen: only the input gradient
      if (head_scale_.size() > 0) dhf.array() *= head_scale_.array();
      std::vector<T> scratch_g(d), scratch_b(d);
      layernorm_backward<T>(dhf, final_in_, w_.lnf_gamma(), mean_f_, rstd_f_, dx, scratch_g,
                            scratch_b);
    }
    for (int l = cfg_.layers - 1; l >= 0; --l) dx = block_backward(l, std::move(dx));
    if (emb_scale_.size() > 0) dx.array() *= emb_scale_.array();
    if (full()) embedding_backward<T>(dx, tokens_, batch_, seq_, grad_view(0), grad_view(1));
  }

 public:
  /// \brief A trainable buffer shared across blocks (cross-layer sharing such as MoS pools),
  /// owned by the model: created zero-filled on first use, included in parameters() and
  /// zero_grad(). \throws Error when an existing pool is requested with another size.
  struct SharedPool {
    std::vector<T> value;  ///< pool entries
    std::vector<T> grad;   ///< their gradient, summed over every block that uses them
  };
  /// \brief The pool named `name` with `size` entries (see SharedPool).
  SharedPool& shared_pool(const std::string& name, std::size_t size) {
    auto [it, inserted] = pools_.try_emplace(name);
    if (inserted) {
      it->second.value.assign(size, T(0));
      it->second.grad.assign(size, T(0));
    }
    LORALAB_CHECK(it->second.value.size() == size, "[loralab.shape] shared pool '", name, "' has ",
                  it->second.value.size(), " entries, requested ", size);
    return it->second;
  }

  /// \brief Zeroes every gradient (adapters', shared pools', or the weights' in full mode).
  void zero_grad() {
    std::fill(grads_.begin(), grads_.end(), T(0));
    for (auto& [name, pool] : pools_) std::fill(pool.grad.begin(), pool.grad.end(), T(0));
    for (auto& a : adapters_)
      if (a) a->zero_grad();
  }

  /// \brief The tensors an optimizer updates: in full mode every weight tensor of gpt_layout()
  /// (views into the flat buffer, in storage order), else every adapter's (A, B, mask); then the
  /// shared pools. Each names its block (-1 for embeddings, final LayerNorm and pools); a block's
  /// linear weights are marked projectable with their [out x in] shape (GaLore).
  std::vector<ParamTensor<T>> parameters() {
    std::vector<ParamTensor<T>> out;
    if (full()) {
      const std::vector<TensorSlot>& slots = w_.slots();
      const std::size_t first_block = block_slot(0, 0), per_block = 12;
      for (std::size_t k = 0; k < slots.size(); ++k) {
        const TensorSlot& s = slots[k];
        const bool in_block = k >= first_block && k < first_block + per_block * cfg_.layers;
        const int block = in_block ? int((k - first_block) / per_block) : -1;
        const bool linear = in_block && s.rows > 1;
        out.push_back(
            ParamTensor<T>{w_.flat().subspan(s.offset, std::size_t(s.size())),
                           std::span<const T>(grads_).subspan(s.offset, std::size_t(s.size())),
                           {},
                           block,
                           linear ? s.rows : 0,
                           linear ? s.cols : 0,
                           linear});
      }
    }
    for (auto& [name, pool] : pools_) out.push_back(ParamTensor<T>{pool.value, pool.grad, {}});
    if (plan_ || full()) return out;  // sharing: adapters hold assembled copies of pool rows
    for (std::size_t m = 0; m < adapters_.size(); ++m)
      if (adapters_[m])
        for (auto& p : adapters_[m]->parameters()) {
          p.block = int(m) / kModulesPerBlock;
          out.push_back(p);
        }
    return out;
  }

  /// \brief Full mode: the gradient of every weight, laid out like GptWeights::flat().
  std::span<const T> full_grad() const { return grads_; }

  /// \brief The input of module m in block l saved by the last forward [n x in] (statistics
  /// hook, e.g. per-channel activation norms).
  const cpu::MatrixR<T>& linear_input(int l, Module m) const {
    const BlockActs& a = acts_.at(l);
    switch (m) {
      case Module::qkv:
        return a.h1;
      case Module::attn_proj:
        return a.att;
      case Module::fc:
        return a.h2;
      default:
        return a.g;
    }
  }

  /// \brief Trainable-parameter count and memory by category for a batch of `tokens` rows.
  MemoryReport memory(std::int64_t tokens) const {
    MemoryReport m;
    if (full()) {
      const std::int64_t n = std::int64_t(grads_.size());
      m.trainable_params = n;
      m.gradient_bytes = n * std::int64_t(sizeof(T));
      m.optimizer_state_bytes = 2 * n * std::int64_t(sizeof(T));
    } else {
      for (const auto& a : adapters_)
        if (a) m += a->memory(tokens);
      m.activation_bytes = 0;  // counted below for the whole model
      m.saved_input_bytes = 0;
      if (plan_) {  // trainable: the pools; the assembled factors and their gradients are transient
        const std::int64_t n = plan_->trainable_params(), sz = std::int64_t(sizeof(T));
        m.transient_bytes = m.parameter_bytes + m.gradient_bytes;
        m.trainable_params = n;
        m.parameter_bytes = n * sz;
        m.gradient_bytes = n * sz;
        m.optimizer_state_bytes = 2 * n * sz;
        m.index_bytes = plan_->index_entries() * std::int64_t(sizeof(std::int32_t));
      }
    }
    m.activation_bytes = activation_bytes(tokens);
    return m;
  }

  /// \brief Greedy decoding: appends up to `max_new` argmax tokens to `prompt`, stopping after
  /// `stop` (eval mode, no dropout). Returns only the generated tokens.
  std::vector<std::int32_t> generate(std::vector<std::int32_t> prompt, int max_new,
                                     std::int32_t stop) {
    std::vector<std::int32_t> out;
    for (int k = 0; k < max_new && int(prompt.size()) < cfg_.context; ++k) {
      const auto& logits = forward_logits(prompt, 1, int(prompt.size()), Pass{false, 0});
      Eigen::Index next = 0;
      logits.row(logits.rows() - 1).maxCoeff(&next);
      out.push_back(std::int32_t(next));
      if (std::int32_t(next) == stop) break;
      prompt.push_back(std::int32_t(next));
    }
    return out;
  }

 private:
  struct BlockActs {
    cpu::MatrixR<T> x_in, h1, qkv, att, x_mid, h2, f, g;  // [n x d|3d|d|d|d|ff|ff]
    cpu::MatrixR<T> probs;                                // [B*H*T x T]
    std::vector<T> mean1, rstd1, mean2, rstd2;            // [n]
    AttentionHooks hooks;
    // The dropout framework's masks of the last forward (empty where it does not act):
    std::vector<std::uint8_t> att_keep;          // [B*H*T x T] DropKey / DropAttention keep flags
    cpu::MatrixR<T> hidden_scale;                // [n x ff] 0 or 1/(1-p) on the FFN hidden
    cpu::MatrixR<T> out_scale;                   // [n x d] on the FFN output
    cpu::MatrixR<T> in_scale[kModulesPerBlock];  // [n x in] on each adapter's branch input
  };

  bool full() const { return opts_.mode == TrainMode::full; }
  std::size_t index(int l, Module m) const {
    return std::size_t(l) * kModulesPerBlock + static_cast<int>(m);
  }
  std::size_t slots() const { return w_.slots().size(); }
  std::size_t slot(int l, int k) const { return block_slot(l, k); }  // GptWeights layout
  cpu::MatrixMap<T> grad_view(std::size_t k) {
    const TensorSlot& s = w_.slots()[k];
    return {grads_.data() + s.offset, s.rows, s.cols};
  }
  std::span<T> grad_vec(std::size_t k) {
    const TensorSlot& s = w_.slots()[k];
    return {grads_.data() + s.offset, std::size_t(s.size())};
  }
  std::size_t weight_slot(int l, Module m) const {
    constexpr int k[] = {2, 4, 8, 10};
    return slot(l, k[static_cast<int>(m)]);
  }

  void linear_forward(int l, Module m, const cpu::MatrixR<T>& X, cpu::MatrixR<T>& Y) {
    auto W = w_.weight(l, m);
    Y.resize(X.rows(), W.rows());
    if (auto* a = adapter(l, m)) {
      // the framework's adapter_input site: a multiplier on the branch input, keyed by module
      cpu::MatrixR<T>& in_scale = acts_[l].in_scale[static_cast<int>(m)];
      const int module = kModulesPerBlock * l + static_cast<int>(m);
      const bool drop =
          hidden_mask(dropout::Position::adapter_input, l, X.rows(), X.cols(), in_scale, module);
      a->set_input_multiplier(drop ? in_scale.data() : nullptr);
      a->forward(X, Y, pass_);
      return;
    }
    Y.noalias() = X * W.transpose();
    const auto b = w_.bias(l, m);
    Y.rowwise() +=
        Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(b.data(), Eigen::Index(b.size()));
  }

  void linear_backward(int l, Module m, const cpu::MatrixR<T>& X, const cpu::MatrixR<T>& GY,
                       cpu::MatrixR<T>& dX) {
    dX.resize(X.rows(), X.cols());
    if (auto* a = adapter(l, m)) {
      if (trainable_[l])
        a->backward(X, GY, dX);
      else
        a->backward_input(X, GY, dX);
      return;
    }
    auto W = w_.weight(l, m);
    dX.noalias() = GY * W;
    if (full() && trainable_[l]) {
      const std::size_t k = weight_slot(l, m);
      grad_view(k).noalias() += GY.transpose() * X;  // dW [out x in]
      auto db = grad_vec(k + 1);
      Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(db.data(), Eigen::Index(db.size())) +=
          GY.colwise().sum();
    }
  }

  cpu::MatrixR<T> block_forward(int l, cpu::MatrixR<T> x) {
    BlockActs& a = acts_[l];
    const Eigen::Index n = x.rows();
    const int d = cfg_.d_model;
    a.x_in = std::move(x);
    a.h1.resize(n, d);
    a.mean1.resize(n);
    a.rstd1.resize(n);
    layernorm_forward<T>(a.x_in, w_.ln1_gamma(l), w_.ln1_beta(l), cfg_.ln_eps, a.h1, a.mean1,
                         a.rstd1);
    linear_forward(l, Module::qkv, a.h1, a.qkv);
    a.att.resize(n, d);
    a.probs.resize(Eigen::Index(batch_) * cfg_.heads * seq_, seq_);
    a.hooks = hooks_.attention ? hooks_.attention(l, batch_, seq_) : AttentionHooks{};
    attention_masks(l, a);
    attention_forward<T>(a.qkv, batch_, seq_, cfg_.heads, a.att, a.probs, a.hooks);
    cpu::MatrixR<T> proj;
    linear_forward(l, Module::attn_proj, a.att, proj);
    a.x_mid = a.x_in + proj;  // residual
    a.h2.resize(n, d);
    a.mean2.resize(n);
    a.rstd2.resize(n);
    layernorm_forward<T>(a.x_mid, w_.ln2_gamma(l), w_.ln2_beta(l), cfg_.ln_eps, a.h2, a.mean2,
                         a.rstd2);
    linear_forward(l, Module::fc, a.h2, a.f);
    a.g.resize(n, a.f.cols());
    gelu_forward<T>(a.f, a.g);
    if (hidden_mask(dropout::Position::ffn_hidden, l, a.g.rows(), a.g.cols(), a.hidden_scale))
      a.g.array() *= a.hidden_scale.array();  // HiddenCut
    if (hooks_.mlp_hidden_forward) hooks_.mlp_hidden_forward(l, a.g);
    cpu::MatrixR<T> mlp;
    linear_forward(l, Module::mlp_proj, a.g, mlp);
    if (hidden_mask(dropout::Position::ffn_output, l, mlp.rows(), mlp.cols(), a.out_scale))
      mlp.array() *= a.out_scale.array();
    return a.x_mid + mlp;  // residual
  }

  // dx: dL/d(block output) in, dL/d(block input) out.
  cpu::MatrixR<T> block_backward(int l, cpu::MatrixR<T> dx) {
    BlockActs& a = acts_[l];
    const int d = cfg_.d_model;
    const bool train_ln = full() && trainable_[l];
    std::vector<T> sg(d), sb(d);  // LayerNorm gradients when they do not train
    // MLP: x_out = x_mid + mlp_proj(hook(gelu(fc(ln2(x_mid)))))
    cpu::MatrixR<T> dg, df, dh2;
    if (a.out_scale.size() > 0) {
      const cpu::MatrixR<T> dmlp = dx.array() * a.out_scale.array();
      linear_backward(l, Module::mlp_proj, a.g, dmlp, dg);
    } else {
      linear_backward(l, Module::mlp_proj, a.g, dx, dg);
    }
    if (hooks_.mlp_hidden_backward) hooks_.mlp_hidden_backward(l, dg);
    if (a.hidden_scale.size() > 0) dg.array() *= a.hidden_scale.array();
    df.resize(dg.rows(), dg.cols());
    gelu_backward<T>(a.f, dg, df);
    linear_backward(l, Module::fc, a.h2, df, dh2);
    cpu::MatrixR<T> dmid = dx;  // residual branch
    layernorm_backward<T>(dh2, a.x_mid, w_.ln2_gamma(l), a.mean2, a.rstd2, dmid,
                          train_ln ? grad_vec(slot(l, 6)) : std::span<T>(sg),
                          train_ln ? grad_vec(slot(l, 7)) : std::span<T>(sb));
    // Attention: x_mid = x_in + attn_proj(attention(qkv(ln1(x_in))))
    cpu::MatrixR<T> datt, dqkv(a.qkv.rows(), a.qkv.cols()), dh1;
    linear_backward(l, Module::attn_proj, a.att, dmid, datt);
    attention_backward<T>(datt, a.qkv, a.probs, batch_, seq_, cfg_.heads, dqkv, a.hooks);
    linear_backward(l, Module::qkv, a.h1, dqkv, dh1);
    cpu::MatrixR<T> din = dmid;  // residual branch
    std::fill(sg.begin(), sg.end(), T(0));
    std::fill(sb.begin(), sb.end(), T(0));
    layernorm_backward<T>(dh1, a.x_in, w_.ln1_gamma(l), a.mean1, a.rstd1, din,
                          train_ln ? grad_vec(slot(l, 0)) : std::span<T>(sg),
                          train_ln ? grad_vec(slot(l, 1)) : std::span<T>(sb));
    return din;
  }

  // ---- the dropout framework (methods.md 4) ----
  dropout::MaskKey mask_key(dropout::Position p, int layer) const {
    return {opts_.adapter.seed, p, std::uint32_t(layer), pass_.branch, pass_.step};
  }
  // The reference pass of a two-pass step: branch 1 (KL), or the deterministic pass (JS).
  Pass reference_pass(const Pass& pass) const {
    if (opts_.dropout.compensation == dropout::Compensation::js) return Pass{false, pass.step, 0u};
    return Pass{pass.training, pass.step, 1u};
  }
  Consistency consistency_kind() const {
    return opts_.dropout.compensation == dropout::Compensation::js ? Consistency::js
                                                                   : Consistency::symmetric_kl;
  }
  // Fills `scale` [rows x cols] with 0 (dropped) or the keep scale when position p acts in
  // block `layer` during a training pass; otherwise empties it. Returns whether it acts.
  bool hidden_mask(dropout::Position p, int layer, Eigen::Index rows, Eigen::Index cols,
                   cpu::MatrixR<T>& scale, int key_layer = -1) const {
    const dropout::Site* site = opts_.dropout.site(p);
    const double rate = pass_.training ? opts_.dropout.rate(p, layer, cfg_.layers) : 0.0;
    if (!site || rate <= 0) {
      scale.resize(0, 0);
      return false;
    }
    const dropout::MaskKey key = mask_key(p, key_layer >= 0 ? key_layer : layer);
    const T keep = T(dropout::hidden_keep_scale(site->pattern, rate, seq_));
    scale.resize(rows, cols);
    for (Eigen::Index r = 0; r < rows; ++r)
      for (Eigen::Index c = 0; c < cols; ++c)
        scale(r, c) =
            dropout::hidden_dropped(key, site->pattern, rate, seq_, cols, r, c) ? T(0) : keep;
    return true;
  }
  // DropKey (logits) or DropAttention (weights) keep flags for block l.
  void attention_masks(int l, BlockActs& a) {
    a.att_keep.clear();
    for (const auto p :
         {dropout::Position::attention_logits, dropout::Position::attention_weights}) {
      const dropout::Site* site = opts_.dropout.site(p);
      const double rate = pass_.training ? opts_.dropout.rate(p, l, cfg_.layers) : 0.0;
      if (!site || rate <= 0) continue;
      LORALAB_CHECK(!a.hooks.logit_keep && !a.hooks.weight_keep && !a.hooks.weight_scale,
                    "[loralab.config] block ", l, ": ModelHooks::attention and the dropout site ",
                    dropout::position_name(p), " both change attention");
      const int H = cfg_.heads, Tq = seq_;
      const dropout::MaskKey key = mask_key(p, l);
      a.att_keep.resize(std::size_t(batch_) * H * Tq * Tq);
      for (int b = 0; b < batch_; ++b)
        for (int h = 0; h < H; ++h)
          for (int i = 0; i < Tq; ++i)
            for (int j = 0; j < Tq; ++j)
              a.att_keep[((std::size_t(b) * H + h) * Tq + i) * Tq + j] =
                  dropout::attention_dropped(key, site->pattern, rate, H, Tq, b, h, i, j) ? 0 : 1;
      if (p == dropout::Position::attention_logits) {
        a.hooks.logit_keep = a.att_keep.data();
      } else {
        a.hooks.weight_keep = a.att_keep.data();
        a.hooks.normalizer_stop_gradient = site->stop_gradient;
      }
    }
  }
  // DropConnect on the adapters' factors (position adapter_weights): in a training pass, keep
  // A and B of every adapter in range and scale the kept entries by 1/(1-p), until
  // restore_drop_connect(). Keyed by the module id (4 * block + module) and the pass.
  void apply_drop_connect() {
    const dropout::Site* site = opts_.dropout.site(dropout::Position::adapter_weights);
    if (!site || !pass_.training || dc_active_) return;
    dc_saved_.assign(adapters_.size(), {});
    dc_scale_.assign(adapters_.size(), {});
    for (std::size_t m = 0; m < adapters_.size(); ++m) {
      const int l = int(m) / kModulesPerBlock;
      const double rate = opts_.dropout.rate(dropout::Position::adapter_weights, l, cfg_.layers);
      if (!adapters_[m] || rate <= 0) continue;
      auto* a = adapters_[m].get();
      auto v = a->factor_values();
      const Eigen::Index r = a->rank(), in = a->in_features();
      const dropout::MaskKey key = mask_key(dropout::Position::adapter_weights, int(m));
      const T keep = T(1.0 / (1.0 - rate));
      dc_saved_[m].assign(v.begin(), v.end());
      dc_scale_[m].resize(v.size());
      for (std::size_t i = 0; i < v.size(); ++i) {
        const Eigen::Index e = Eigen::Index(i);
        // column: one decision per input column of A (all ranks) and per output row of B
        const std::uint64_t counter = site->pattern == dropout::Pattern::element ? std::uint64_t(e)
                                      : e < r * in ? std::uint64_t(e % in)
                                                   : std::uint64_t(in + (e - r * in) / r);
        dc_scale_[m][i] = dropout::dropped_at(key, counter, rate) ? T(0) : keep;
        v[i] *= dc_scale_[m][i];
      }
      dc_active_ = true;
    }
  }
  void restore_drop_connect() {
    if (!dc_active_) return;
    for (std::size_t m = 0; m < adapters_.size(); ++m)
      if (!dc_saved_[m].empty()) {
        auto v = adapters_[m]->factor_values();
        std::copy(dc_saved_[m].begin(), dc_saved_[m].end(), v.begin());
      }
    dc_active_ = false;
  }
  // Gradient accumulation: the factor gradients of earlier micro-batches are set aside, so the
  // mask scales only this backward's contribution.
  void stash_drop_connect_grads() {
    if (!dc_active_) return;
    dc_grad_stash_.assign(adapters_.size(), {});
    for (std::size_t m = 0; m < adapters_.size(); ++m)
      if (!dc_scale_[m].empty()) {
        auto g = adapters_[m]->factor_grads();
        dc_grad_stash_[m].assign(g.begin(), g.end());
        std::fill(g.begin(), g.end(), T(0));
      }
  }
  // dL/d(factor) = dL/d(dropped factor) .* scale, plus the earlier micro-batches; then restore.
  void finish_drop_connect() {
    if (!dc_active_) return;
    for (std::size_t m = 0; m < adapters_.size(); ++m)
      if (!dc_scale_[m].empty()) {
        auto g = adapters_[m]->factor_grads();
        for (std::size_t i = 0; i < g.size(); ++i)
          g[i] = g[i] * dc_scale_[m][i] + dc_grad_stash_[m][i];
      }
    restore_drop_connect();
  }

  // Sharing policies: the plan from the seed, the pools it names (created here, model-owned),
  // initial pool values, and the first assembly.
  void build_shared_factors() {
    if (full()) return;
    std::vector<share::TypeShape> types;
    for (int m = 0; m < kModulesPerBlock; ++m) {
      const Module mod = static_cast<Module>(m);
      if (!opts_.targets.contains(mod)) continue;
      const auto W = w_.weight(0, mod);
      types.push_back({m, module_name(mod), W.cols(), W.rows()});
    }
    if (types.empty()) return;
    plan_ = share::make_shard_plan(Spec::share::scheme, opts_.adapter.share,
                                   Spec::rank_for(opts_.adapter), cfg_.layers, kModulesPerBlock,
                                   types, opts_.adapter.seed);
    for (std::size_t k = 0; k < plan_->pools.size(); ++k) {
      const share::Pool& p = plan_->pools[k];
      SharedPool& pool = shared_pool("share." + p.name, std::size_t(p.size()));
      share::fill_initial_pool<T>(*plan_, int(k), opts_.adapter.seed, pool.value);
      plan_pools_.push_back(&pool);
    }
    sync_shared_factors();
  }

  // Sums every adapter's factor gradient into the pools (fixed order), then clears the adapters'
  // gradients so the next backward (gradient accumulation) adds only its own contribution.
  void scatter_shared_grads() {
    if (!plan_) return;
    for (std::size_t k = 0; k < plan_->pools.size(); ++k) {
      const bool side_a = plan_->pools[k].side == share::Side::a;
      share::scatter_pool_grad<T>(*plan_, int(k), plan_pools_[k]->grad, [&](int m) {
        return side_a ? adapters_[m]->grad_A().data() : adapters_[m]->grad_B().data();
      });
    }
    for (auto& a : adapters_)
      if (a) a->zero_grad();
  }

  std::int64_t activation_bytes(std::int64_t tokens) const {
    const std::int64_t d = cfg_.d_model, ff = cfg_.ff(), H = cfg_.heads, T_ = cfg_.context;
    // per block: x_in, h1, qkv(3d), att, x_mid, h2, f, g, LayerNorm stats, attention weights
    const std::int64_t per_block = tokens * (6 * d + 2 * ff + 4) + tokens * H * T_;
    return std::int64_t(sizeof(T)) *
           (cfg_.layers * per_block + tokens * (2 * d + 2 * cfg_.vocab_size));
  }

  GptWeights<T>& w_;
  GptOptions opts_;
  GptConfig cfg_;
  ModelHooks<T> hooks_;
  std::vector<std::unique_ptr<cpu::AdaptedLinear<Spec, T>>> adapters_;  // [L x 4], null = none
  std::vector<T> grads_;                                                // full mode: like w_.flat()
  std::map<std::string, SharedPool> pools_;
  std::optional<share::ShardPlan> plan_;    // sharing policies only
  cpu::MatrixR<T> emb_scale_, head_scale_;  // dropout masks on the embeddings, the head input
  cpu::MatrixR<T> reference_;               // logits of a two-pass step's reference pass
  double consistency_ = 0;
  bool two_pass_ = false;
  std::vector<std::vector<T>> dc_saved_, dc_scale_, dc_grad_stash_;  // DropConnect
  bool dc_active_ = false;
  std::vector<SharedPool*> plan_pools_;  // plan_->pools[k] lives in pools_ (stable map nodes)
  std::vector<bool> trainable_;
  std::vector<BlockActs> acts_;
  std::vector<std::int32_t> tokens_, targets_;
  int batch_ = 0, seq_ = 0;
  Pass pass_{};
  cpu::MatrixR<T> final_in_, hf_, logits_, probs_;
  std::vector<T> mean_f_, rstd_f_;
  Eigen::Index count_ = 0;
};

}  // namespace loralab::model
