/// \file
/// \brief Member definitions of cuda::GptCore (declared in gpt_core.hpp). nvcc only;
/// instantiated once per element type in cuda/instances/gpt_{f32,bf16}.cu.
///
/// The step mirrors model::Gpt line by line (same buffers, same order), so a reader can check one
/// against the other: GEMMs through cuBLAS with fp32 accumulation, every other layer through the
/// launchers of model/layers.hpp. Gradients of frozen base weights are never formed; in full
/// fine-tuning they accumulate in fp32 (GEMMs with an fp32 output, deterministic column sums).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cuda/gpt_core.hpp"
#include "loralab/cuda/gpt_dropout.cuh"
#include "loralab/cuda/model/layers.hpp"

namespace loralab::cuda {

namespace gpt_detail {

// Grows b to hold n elements and returns its data.
template <class U>
U* sized(DeviceBuffer<U>& b, std::size_t n) {
  b.reserve_discard(n);
  return b.data();
}

// Host-side copy into a possibly larger device buffer (pageable source: safe to free on return).
template <class U>
void upload_prefix(DeviceBuffer<U>& b, std::span<const U> host, cudaStream_t stream) {
  b.reserve_discard(host.size());
  if (!host.empty())
    LORALAB_CUDA_CHECK(
        cudaMemcpyAsync(b.data(), host.data(), host.size_bytes(), cudaMemcpyHostToDevice, stream));
}

}  // namespace gpt_detail

template <DeviceScalar T>
GptCore<T>::GptCore(const model::GptConfig& cfg, std::span<const float> flat, model::TrainMode mode,
                    const GptDeviceOptions& options)
    : cfg_(cfg), mode_(mode), opts_(options), stream_(options.stream), blas_(options.stream) {
  cfg.validate();
  slots_ = model::gpt_layout(cfg);
  total_ = slots_.back().offset + std::size_t(slots_.back().size());
  LORALAB_CHECK(flat.size() == total_, "[loralab.shape] cuda::Gpt: ", flat.size(),
                " weight entries given, the config ", cfg.to_string(), " needs ", total_);
  const int L = cfg.layers;
  adapters_.assign(std::size_t(L) * model::kModulesPerBlock, nullptr);
  trainable_.assign(std::size_t(L), true);
  acts_.resize(std::size_t(L));
  if (full()) {
    master_ = DeviceBuffer<float>::from_host(flat, stream_);
    grads_ = DeviceBuffer<float>(total_);
    grads_.zero(stream_);
    if constexpr (std::is_same_v<T, bf16>) {
      weights_ = DeviceBuffer<T>(total_);
      layers::convert<T>(master_.data(), weights_.data(), std::int64_t(total_), stream_);
    }
  } else if constexpr (std::is_same_v<T, float>) {
    weights_ = DeviceBuffer<float>::from_host(flat, stream_);
  } else {
    std::vector<T> host(total_);
    for (std::size_t i = 0; i < total_; ++i) host[i] = from_float<T>(flat[i]);
    weights_ = DeviceBuffer<T>::from_host(host, stream_);
  }
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <DeviceScalar T>
T* GptCore<T>::w(std::size_t k) {
  T* base = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    base = full() ? master_.data() : weights_.data();  // fp32 full mode trains the master in place
  } else {
    base = weights_.data();
  }
  return base + slots_[k].offset;
}

template <DeviceScalar T>
float* GptCore<T>::g(std::size_t k) {
  return grads_.data() + slots_[k].offset;
}

template <DeviceScalar T>
T* GptCore<T>::weight(int l, model::Module m) {
  LORALAB_CHECK(l >= 0 && l < cfg_.layers, "[loralab.shape] block ", l, " outside [0, ",
                cfg_.layers, ")");
  return w(model::weight_slot(l, m));
}

template <DeviceScalar T>
const T* GptCore<T>::bias(int l, model::Module m) {
  LORALAB_CHECK(l >= 0 && l < cfg_.layers, "[loralab.shape] block ", l, " outside [0, ",
                cfg_.layers, ")");
  return w(model::weight_slot(l, m) + 1);
}

template <DeviceScalar T>
void GptCore<T>::attach(int l, model::Module m, LinearCore<T>* adapter) {
  LORALAB_CHECK(l >= 0 && l < cfg_.layers, "[loralab.shape] block ", l, " outside [0, ",
                cfg_.layers, ")");
  LORALAB_CHECK(!full() || adapter == nullptr,
                "[loralab.config] full fine-tuning trains every weight; no adapters attach");
  adapters_[std::size_t(l) * model::kModulesPerBlock + std::size_t(m)] = adapter;
}

template <DeviceScalar T>
void GptCore<T>::upload_inputs(std::span<const std::int32_t> tokens, int batch, int seq) {
  LORALAB_CHECK(batch >= 1, "[loralab.shape] cuda::Gpt: batch=", batch, " must be >= 1");
  LORALAB_CHECK(seq >= 1 && seq <= cfg_.context, "[loralab.shape] sequence length ", seq,
                " outside [1, context=", cfg_.context, "]");
  LORALAB_CHECK(tokens.size() == std::size_t(batch) * std::size_t(seq), "[loralab.shape] ",
                tokens.size(), " tokens for batch=", batch, " x seq=", seq);
  for (std::size_t i = 0; i < tokens.size(); ++i)
    LORALAB_CHECK(tokens[i] >= 0 && tokens[i] < cfg_.vocab_size, "[loralab.data] token ", tokens[i],
                  " at position ", i, " is outside [0, vocab=", cfg_.vocab_size, ")");
  batch_ = batch;
  seq_ = seq;
  gpt_detail::upload_prefix(tokens_, tokens, stream_);
}

template <DeviceScalar T>
double GptCore<T>::forward(std::span<const std::int32_t> tokens,
                           std::span<const std::int32_t> targets, int batch, int seq, Pass pass) {
  upload_inputs(tokens, batch, seq);
  LORALAB_CHECK(targets.size() == tokens.size(), "[loralab.shape] ", targets.size(),
                " targets for ", tokens.size(), " tokens");
  count_ = 0;
  for (std::size_t i = 0; i < targets.size(); ++i) {
    if (targets[i] == -1) continue;
    LORALAB_CHECK(targets[i] >= 0 && targets[i] < cfg_.vocab_size, "[loralab.data] target ",
                  targets[i], " at position ", i, " is outside [0, vocab=", cfg_.vocab_size,
                  ") and is not the ignore value -1");
    ++count_;
  }
  gpt_detail::upload_prefix(targets_, targets, stream_);
  consistency_ = 0;
  two_pass_ = pass.training && dropout_.two_pass();
  double reference_ce = 0;
  if (two_pass_) {  // the reference first: the main pass's activations must survive for backward
    run_forward(reference_pass(pass));
    if (dropout_.backprop_both) reference_ce = task_loss();
    std::swap(logits_, reference_);  // kept on the device; logits_ is rewritten below
  }
  run_forward(pass);
  const double ce = task_loss();
  has_targets_ = true;
  if (!two_pass_) return ce;
  consistency_ = consistency_value();
  // The task loss: branch 0's, or the mean of both branches' when both back-propagate.
  return dropout_.backprop_both ? 0.5 * (ce + reference_ce) : ce;
}

template <DeviceScalar T>
double GptCore<T>::task_loss() {
  const std::int64_t n = std::int64_t(batch_) * seq_;
  layers::cross_entropy_forward<T>(logits_.data(), targets_.data(), n, cfg_.vocab_size,
                                   gpt_detail::sized(loss_rows_, std::size_t(n)),
                                   gpt_detail::sized(lse_, std::size_t(n)), stream_);
  std::vector<float> rows(static_cast<std::size_t>(n));
  LORALAB_CUDA_CHECK(cudaMemcpyAsync(rows.data(), loss_rows_.data(), rows.size() * sizeof(float),
                                     cudaMemcpyDeviceToHost, stream_));
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  double sum = 0;  // in double and in row order, like the CPU
  for (float r : rows) sum += double(r);
  return count_ > 0 ? sum / double(count_) : 0.0;
}

template <DeviceScalar T>
void GptCore<T>::forward_logits(std::span<const std::int32_t> tokens, int batch, int seq,
                                Pass pass) {
  upload_inputs(tokens, batch, seq);
  run_forward(pass);
  has_targets_ = false;
}

template <DeviceScalar T>
void GptCore<T>::run_forward(Pass pass) {
  pass_ = pass;
  const bool drop_connect = apply_drop_connect();  // masked factors for this pass only
  const std::int64_t n = std::int64_t(batch_) * seq_;
  const int d = cfg_.d_model, V = cfg_.vocab_size;
  const std::size_t nd = std::size_t(n) * std::size_t(d);
  T* x0 = gpt_detail::sized(acts_[0].x_in, nd);
  layers::embedding_forward<T>(tokens_.data(), w(0), w(1), x0, batch_, seq_, d, stream_);
  drop_hidden(dropout::Position::embeddings, 0, x0, x0, n, d);
  for (int l = 0; l < cfg_.layers; ++l) {
    T* out = l + 1 < cfg_.layers ? gpt_detail::sized(acts_[std::size_t(l) + 1].x_in, nd)
                                 : gpt_detail::sized(final_in_, nd);
    block_forward(l, acts_[std::size_t(l)].x_in.data(), out);
  }
  const std::size_t lnf = slots_.size() - 2;
  layers::layernorm_forward<T>(final_in_.data(), w(lnf), w(lnf + 1), float(cfg_.ln_eps),
                               gpt_detail::sized(hf_, nd), gpt_detail::sized(mean_f_, n),
                               gpt_detail::sized(rstd_f_, n), n, d, stream_);
  drop_hidden(dropout::Position::head_input, 0, hf_.data(), hf_.data(), n, d);
  constexpr cudaDataType_t kT = data_type<T>();
  gemm_row_major(blas_.get(), false, true, n, V, d, 1.0f, hf_.data(), kT, d, w(0), kT, d, 0.0f,
                 gpt_detail::sized(logits_, std::size_t(n) * V), kT,
                 V);                           // logits = hf wte^T (tied head)
  if (drop_connect) drop_connect_->restore();  // the parameters hold their own values again
}

template <DeviceScalar T>
void GptCore<T>::linear_forward(int l, model::Module m, const T* X, T* Y) {
  const std::int64_t n = std::int64_t(batch_) * seq_;
  const model::TensorSlot& s = slots_[model::weight_slot(l, m)];
  const std::int64_t out = s.rows, in = s.cols;
  if (LinearCore<T>* a = adapters_[std::size_t(l) * model::kModulesPerBlock + std::size_t(m)]) {
    a->set_input_mask(branch_input_mask(l, m));  // the adapter_input site, or none
    a->forward(X, Y, n, pass_);
    return;
  }
  layers::fill_rows<T>(Y, bias(l, m), n, int(out), stream_);
  constexpr cudaDataType_t kT = data_type<T>();
  gemm_row_major(blas_.get(), false, true, n, out, in, 1.0f, X, kT, in, weight(l, m), kT, in, 1.0f,
                 Y, kT, out);  // Y = b + X W^T
}

template <DeviceScalar T>
void GptCore<T>::linear_backward(int l, model::Module m, const T* X, const T* GY, T* dX) {
  const std::int64_t n = std::int64_t(batch_) * seq_;
  const std::size_t ws = model::weight_slot(l, m);
  const std::int64_t out = slots_[ws].rows, in = slots_[ws].cols;
  const bool trains = trainable_[std::size_t(l)];
  if (LinearCore<T>* a = adapters_[std::size_t(l) * model::kModulesPerBlock + std::size_t(m)]) {
    a->backward(X, GY, dX, n, trains);
    return;
  }
  constexpr cudaDataType_t kT = data_type<T>();
  gemm_row_major(blas_.get(), false, false, n, in, out, 1.0f, GY, kT, out, weight(l, m), kT, in,
                 0.0f, dX, kT, in);  // dX = dY W
  if (!(full() && trains)) return;
  gemm_row_major(blas_.get(), true, false, out, in, n, 1.0f, GY, kT, out, X, kT, in, 1.0f, g(ws),
                 CUDA_R_32F, in);  // dW += dY^T X, fp32
  layers::column_sum<T>(GY, n, int(out), g(ws + 1),
                        gpt_detail::sized(reduce_, layers::column_sum_scratch(n, int(out))),
                        stream_);  // db += column sums of dY
}

template <DeviceScalar T>
void GptCore<T>::block_forward(int l, const T* x, T* out) {
  BlockActs& a = acts_[std::size_t(l)];
  const std::int64_t n = std::int64_t(batch_) * seq_;
  const int d = cfg_.d_model, ff = cfg_.ff(), H = cfg_.heads;
  const std::size_t nd = std::size_t(n) * std::size_t(d), nf = std::size_t(n) * std::size_t(ff);
  const float eps = float(cfg_.ln_eps);
  // Attention: x_mid = x + attn_proj(attention(qkv(ln1(x))))
  T* h1 = gpt_detail::sized(opts_.recompute ? rc_h_ : a.h1, nd);
  layers::layernorm_forward<T>(x, w(model::block_slot(l, 0)), w(model::block_slot(l, 1)), eps, h1,
                               gpt_detail::sized(a.mean1, n), gpt_detail::sized(a.rstd1, n), n, d,
                               stream_);
  linear_forward(l, model::Module::qkv, h1, gpt_detail::sized(a.qkv, 3 * nd));
  a.hooks = hooks_.attention ? hooks_.attention(l, batch_, seq_) : model::AttentionHooks{};
  attention_masks(l, a);  // DropKey / DropAttention sites
  layers::attention_forward<T>(
      a.qkv.data(), batch_, seq_, H, d, gpt_detail::sized(a.att, nd),
      gpt_detail::sized(a.probs, std::size_t(batch_) * H * std::size_t(seq_) * std::size_t(seq_)),
      a.hooks, attn_, blas_.get(), stream_);
  T* mid = gpt_detail::sized(a.x_mid, nd);
  linear_forward(l, model::Module::attn_proj, a.att.data(), mid);
  layers::add<T>(x, mid, mid, std::int64_t(nd), stream_);  // residual
  // MLP: out = x_mid + mlp_proj(hook(gelu(fc(ln2(x_mid)))))
  T* h2 = gpt_detail::sized(opts_.recompute ? rc_h_ : a.h2, nd);
  layers::layernorm_forward<T>(mid, w(model::block_slot(l, 6)), w(model::block_slot(l, 7)), eps, h2,
                               gpt_detail::sized(a.mean2, n), gpt_detail::sized(a.rstd2, n), n, d,
                               stream_);
  linear_forward(l, model::Module::fc, h2, gpt_detail::sized(a.f, nf));
  T* gout = gpt_detail::sized(opts_.recompute ? rc_g_ : a.g, nf);
  layers::gelu_forward<T>(a.f.data(), gout, std::int64_t(nf), stream_);
  drop_hidden(dropout::Position::ffn_hidden, l, gout, gout, n, ff);  // HiddenCut
  if (hooks_.mlp_hidden_forward) hooks_.mlp_hidden_forward(l, gout, n, ff, stream_);
  linear_forward(l, model::Module::mlp_proj, gout, out);
  drop_hidden(dropout::Position::ffn_output, l, out, out, n, d);
  layers::add<T>(mid, out, out, std::int64_t(nd), stream_);  // residual
}

template <DeviceScalar T>
const T* GptCore<T>::ln1_out(int l) {
  BlockActs& a = acts_[std::size_t(l)];
  if (!opts_.recompute) return a.h1.data();
  const std::int64_t n = std::int64_t(batch_) * seq_;
  layers::layernorm_forward<T>(a.x_in.data(), w(model::block_slot(l, 0)),
                               w(model::block_slot(l, 1)), float(cfg_.ln_eps), rc_h_.data(),
                               a.mean1.data(), a.rstd1.data(), n, cfg_.d_model, stream_);
  return rc_h_.data();
}

template <DeviceScalar T>
const T* GptCore<T>::ln2_out(int l) {
  BlockActs& a = acts_[std::size_t(l)];
  if (!opts_.recompute) return a.h2.data();
  const std::int64_t n = std::int64_t(batch_) * seq_;
  layers::layernorm_forward<T>(a.x_mid.data(), w(model::block_slot(l, 6)),
                               w(model::block_slot(l, 7)), float(cfg_.ln_eps), rc_h_.data(),
                               a.mean2.data(), a.rstd2.data(), n, cfg_.d_model, stream_);
  return rc_h_.data();
}

template <DeviceScalar T>
const T* GptCore<T>::gelu_out(int l) {
  BlockActs& a = acts_[std::size_t(l)];
  if (!opts_.recompute) return a.g.data();
  const std::int64_t n = std::int64_t(batch_) * seq_, ff = cfg_.ff();
  layers::gelu_forward<T>(a.f.data(), rc_g_.data(), n * ff, stream_);
  drop_hidden(dropout::Position::ffn_hidden, l, rc_g_.data(), rc_g_.data(), n, ff);
  if (hooks_.mlp_hidden_forward) hooks_.mlp_hidden_forward(l, rc_g_.data(), n, ff, stream_);
  return rc_g_.data();
}

template <DeviceScalar T>
void GptCore<T>::block_backward(int l, T* dx) {
  BlockActs& a = acts_[std::size_t(l)];
  const std::int64_t n = std::int64_t(batch_) * seq_;
  const int d = cfg_.d_model, ff = cfg_.ff(), H = cfg_.heads;
  const std::size_t nd = std::size_t(n) * std::size_t(d), nf = std::size_t(n) * std::size_t(ff);
  const bool train_ln = full() && trainable_[std::size_t(l)];
  float* scratch =
      train_ln ? gpt_detail::sized(reduce_, layers::layernorm_backward_scratch(n, d)) : nullptr;
  // MLP, dx = dL/d(block output)
  T* dg = gpt_detail::sized(dg_, nf);
  const T* dmlp = dx;  // dL/d(MLP output), masked by an ffn_output site (dx stays the residual's)
  if (hidden_acts(dropout::Position::ffn_output, l)) {
    T* masked = gpt_detail::sized(dmlp_, nd);
    drop_hidden(dropout::Position::ffn_output, l, dx, masked, n, d);
    dmlp = masked;
  }
  linear_backward(l, model::Module::mlp_proj, gelu_out(l), dmlp, dg);
  if (hooks_.mlp_hidden_backward) hooks_.mlp_hidden_backward(l, dg, n, ff, stream_);
  drop_hidden(dropout::Position::ffn_hidden, l, dg, dg, n, ff);
  layers::gelu_backward<T>(a.f.data(), dg, dg, std::int64_t(nf), stream_);
  T* dh = gpt_detail::sized(dh_, nd);
  linear_backward(l, model::Module::fc, ln2_out(l), dg, dh);
  layers::layernorm_backward<T>(dh, a.x_mid.data(), w(model::block_slot(l, 6)), a.mean2.data(),
                                a.rstd2.data(), dx, train_ln ? g(model::block_slot(l, 6)) : nullptr,
                                train_ln ? g(model::block_slot(l, 7)) : nullptr, n, d, scratch,
                                stream_);  // dx is now dL/dx_mid (residual branch included)
  // Attention
  linear_backward(l, model::Module::attn_proj, a.att.data(), dx, dh);  // dh = dL/datt
  T* dqkv = gpt_detail::sized(dqkv_, 3 * nd);
  layers::attention_backward<T>(dh, a.qkv.data(), a.probs.data(), batch_, seq_, H, d, dqkv, a.hooks,
                                attn_, blas_.get(), stream_);
  linear_backward(l, model::Module::qkv, ln1_out(l), dqkv, dh);  // dh = dL/dh1
  if (train_ln) scratch = gpt_detail::sized(reduce_, layers::layernorm_backward_scratch(n, d));
  layers::layernorm_backward<T>(dh, a.x_in.data(), w(model::block_slot(l, 0)), a.mean1.data(),
                                a.rstd1.data(), dx, train_ln ? g(model::block_slot(l, 0)) : nullptr,
                                train_ln ? g(model::block_slot(l, 1)) : nullptr, n, d, scratch,
                                stream_);  // dx is now dL/d(block input)
}

template <DeviceScalar T>
void GptCore<T>::backward() {
  LORALAB_CHECK(has_targets_, "[loralab.state] cuda::Gpt::backward without a forward with targets");
  const std::int64_t n = std::int64_t(batch_) * seq_;
  const int V = cfg_.vocab_size;
  const float inv = count_ > 0 ? 1.0f / float(count_) : 0.0f;
  // DropConnect: the masks of the last forward again (keyed by its pass); earlier micro-batches'
  // factor gradients are set aside so the mask scales only this backward's contribution.
  const bool drop_connect = apply_drop_connect();
  if (drop_connect) drop_connect_->stash_grads();
  // logits_ becomes dL/dlogits in place (the mean over the non-ignored targets)
  if (two_pass_) {
    if (dropout_.backprop_both) {
      const std::size_t count = std::size_t(n) * std::size_t(V);
      LORALAB_CUDA_CHECK(cudaMemcpyAsync(gpt_detail::sized(branch0_, count), logits_.data(),
                                         count * sizeof(T), cudaMemcpyDeviceToDevice, stream_));
    }
    consistency_grad(dropout_.backprop_both ? 0.5f * inv : inv);
  } else {
    layers::cross_entropy_backward<T>(logits_.data(), targets_.data(), lse_.data(), n, V, inv,
                                      stream_);
  }
  backward_from_logits();
  if (two_pass_ && dropout_.backprop_both) {
    // R-Drop's both branches: re-run branch 1 (same masks) against branch 0 as the constant,
    // and back-propagate it too; the two halves sum to the gradient of the symmetric KL.
    run_forward(reference_pass(pass_));
    std::swap(reference_, branch0_);
    layers::cross_entropy_forward<T>(logits_.data(), targets_.data(), n, V, loss_rows_.data(),
                                     lse_.data(), stream_);
    layers::consistency_forward<T>(logits_.data(), reference_.data(), targets_.data(), n, V, false,
                                   cons_rows_.data(), lse_ref_.data(), cons_stat_.data(), stream_);
    consistency_grad(0.5f * inv);
    backward_from_logits();
  }
  if (drop_connect) drop_connect_->finish();  // dL/dfactor = dL/d(dropped factor) .* scale
  has_targets_ = false;  // logits_ now hold gradients: a second backward would be wrong
}

template <DeviceScalar T>
void GptCore<T>::backward_from_logits() {
  const std::int64_t n = std::int64_t(batch_) * seq_;
  const int d = cfg_.d_model, V = cfg_.vocab_size;
  const std::size_t nd = std::size_t(n) * std::size_t(d);
  constexpr cudaDataType_t kT = data_type<T>();
  T* dhf = gpt_detail::sized(dh_, nd);
  gemm_row_major(blas_.get(), false, false, n, d, V, 1.0f, logits_.data(), kT, V, w(0), kT, d, 0.0f,
                 dhf, kT, d);  // dhf = dlogits wte
  if (full())
    gemm_row_major(blas_.get(), true, false, V, d, n, 1.0f, logits_.data(), kT, V, hf_.data(), kT,
                   d, 1.0f, g(0), CUDA_R_32F, d);  // dwte += dlogits^T hf (the tied head)
  drop_hidden(dropout::Position::head_input, 0, dhf, dhf, n, d);
  T* dx = gpt_detail::sized(dx_, nd);
  LORALAB_CUDA_CHECK(cudaMemsetAsync(dx, 0, nd * sizeof(T), stream_));
  const std::size_t lnf = slots_.size() - 2;
  layers::layernorm_backward<T>(
      dhf, final_in_.data(), w(lnf), mean_f_.data(), rstd_f_.data(), dx, full() ? g(lnf) : nullptr,
      full() ? g(lnf + 1) : nullptr, n, d,
      full() ? gpt_detail::sized(reduce_, layers::layernorm_backward_scratch(n, d)) : nullptr,
      stream_);
  for (int l = cfg_.layers - 1; l >= 0; --l) block_backward(l, dx);
  if (full()) {
    drop_hidden(dropout::Position::embeddings, 0, dx, dx, n, d);
    layers::embedding_backward<T>(dx, tokens_.data(), g(0), g(1), batch_, seq_, d, stream_);
  }
}

template <DeviceScalar T>
void GptCore<T>::zero_grad() {
  grads_.zero(stream_);
  for (auto& [name, pool] : pools_) pool.grad.zero(stream_);
}

template <DeviceScalar T>
std::vector<DeviceParamTensor> GptCore<T>::own_parameters() {
  std::vector<DeviceParamTensor> out;
  if (full()) {  // one tensor per slot, block ids and projectable linears as model::Gpt
    const std::size_t first_block = model::block_slot(0, 0), per_block = 12;
    for (std::size_t k = 0; k < slots_.size(); ++k) {
      const model::TensorSlot& s = slots_[k];
      const bool in_block =
          k >= first_block && k < first_block + per_block * std::size_t(cfg_.layers);
      const bool linear = in_block && s.rows > 1;
      bf16* shadow = nullptr;
      if constexpr (std::is_same_v<T, bf16>) shadow = weights_.data() + s.offset;
      out.push_back(DeviceParamTensor{master_.data() + s.offset, grads_.data() + s.offset, nullptr,
                                      shadow, std::size_t(s.size()),
                                      in_block ? int((k - first_block) / per_block) : -1,
                                      linear ? s.rows : 0, linear ? s.cols : 0, linear});
    }
  }
  for (auto& [name, pool] : pools_)
    out.push_back(DeviceParamTensor{pool.value.data(), pool.grad.data(), nullptr, nullptr,
                                    pool.value.size()});
  return out;
}

template <DeviceScalar T>
DeviceSharedPool& GptCore<T>::shared_pool(const std::string& name, std::size_t size) {
  auto [it, inserted] = pools_.try_emplace(name);
  if (inserted) {
    it->second.value = DeviceBuffer<float>(size);
    it->second.grad = DeviceBuffer<float>(size);
    it->second.value.zero(stream_);
    it->second.grad.zero(stream_);
  }
  LORALAB_CHECK(it->second.value.size() == size, "[loralab.shape] shared pool '", name, "' has ",
                it->second.value.size(), " entries, requested ", size);
  return it->second;
}

template <DeviceScalar T>
const T* GptCore<T>::linear_input(int l, model::Module m) const {
  const BlockActs& a = acts_.at(std::size_t(l));
  LORALAB_CHECK(!opts_.recompute || m == model::Module::attn_proj, "[loralab.state] linear_input(",
                l, ", ", model::module_name(m),
                "): GptDeviceOptions::recompute keeps only the attention output; build the "
                "model with recompute=false to read the other inputs");
  switch (m) {
    case model::Module::qkv:
      return a.h1.data();
    case model::Module::attn_proj:
      return a.att.data();
    case model::Module::fc:
      return a.h2.data();
    default:
      return a.g.data();
  }
}

template <DeviceScalar T>
std::vector<float> GptCore<T>::linear_input_host(int l, model::Module m) const {
  const T* x = linear_input(l, m);
  const std::size_t in = std::size_t(m == model::Module::mlp_proj ? cfg_.ff() : cfg_.d_model);
  const std::size_t n = std::size_t(batch_) * std::size_t(seq_) * in;
  std::vector<float> out(n);
  if (n == 0) return out;
  std::vector<T> host(n);
  LORALAB_CUDA_CHECK(
      cudaMemcpyAsync(host.data(), x, n * sizeof(T), cudaMemcpyDeviceToHost, stream_));
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  for (std::size_t i = 0; i < n; ++i) out[i] = to_float(host[i]);
  return out;
}

template <DeviceScalar T>
std::int64_t GptCore<T>::activation_bytes(std::int64_t tokens) const {
  const std::int64_t d = cfg_.d_model, ff = cfg_.ff(), H = cfg_.heads, C = cfg_.context;
  const std::int64_t e = sizeof(T);
  // per block: x_in, qkv (3d), att, x_mid, f (ff) [+ h1, h2, g without recompute], attention
  // weights [H x C] per token, four fp32 LayerNorm statistics
  const std::int64_t kept = 6 * d + ff + (opts_.recompute ? 0 : 2 * d + ff);
  const std::int64_t per_block = tokens * (kept + H * C) * e + tokens * 4 * 4;
  // final LayerNorm input and output, logits (V), fp32 statistics and losses
  const std::int64_t head = tokens * (2 * d + cfg_.vocab_size) * e + tokens * 4 * 4;
  return cfg_.layers * per_block + head;
}

template <DeviceScalar T>
std::int64_t GptCore<T>::weight_bytes() const {
  return std::int64_t(weights_.bytes() + master_.bytes() + grads_.bytes());
}

template <DeviceScalar T>
void GptCore<T>::download(std::span<float> flat) const {
  LORALAB_CHECK(flat.size() == total_, "[loralab.shape] download into ", flat.size(),
                " entries, the model has ", total_);
  if (full()) {
    LORALAB_CUDA_CHECK(cudaMemcpyAsync(flat.data(), master_.data(), total_ * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream_));
    LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return;
  }
  const std::vector<T> host = weights_.to_host(stream_);
  for (std::size_t i = 0; i < total_; ++i) flat[i] = to_float(host[i]);
}

template <DeviceScalar T>
std::vector<float> GptCore<T>::logits_row(std::int64_t row) const {
  const std::int64_t n = std::int64_t(batch_) * seq_;
  LORALAB_CHECK(row >= 0 && row < n, "[loralab.shape] logits row ", row, " outside [0, ", n, ")");
  const std::size_t V = std::size_t(cfg_.vocab_size);
  std::vector<T> host(V);
  LORALAB_CUDA_CHECK(cudaMemcpyAsync(host.data(), logits_.data() + std::size_t(row) * V,
                                     V * sizeof(T), cudaMemcpyDeviceToHost, stream_));
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::vector<float> out(V);
  for (std::size_t v = 0; v < V; ++v) out[v] = to_float(host[v]);
  return out;
}

template <DeviceScalar T>
std::vector<float> GptCore<T>::logits_host() const {
  const std::size_t count = std::size_t(batch_) * std::size_t(seq_) * std::size_t(cfg_.vocab_size);
  std::vector<T> host(count);
  LORALAB_CUDA_CHECK(cudaMemcpyAsync(host.data(), logits_.data(), count * sizeof(T),
                                     cudaMemcpyDeviceToHost, stream_));
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::vector<float> out(count);
  for (std::size_t i = 0; i < count; ++i) out[i] = to_float(host[i]);
  return out;
}

}  // namespace loralab::cuda
