/// \file
/// \brief The dropout framework's members of cuda::GptCore (declared in gpt_core.hpp; included
/// by gpt_core.cuh; nvcc only), the device mirror of model::Gpt's "dropout framework" section
/// (methods.md 4): mask keys, the reference pass of a two-pass step, hidden-tensor sites,
/// DropKey / DropAttention keep flags, DropConnect on the attached adapters, and the KL / JS
/// consistency loss and gradient. Every mask is drawn on the device by the shared predicates of
/// include/loralab/dropout/masks.hpp (cuda/loralab/cuda/dropout/masks.hpp), keyed exactly as on
/// the CPU, so both decoders drop the same entries.
#pragma once

#include <cuda_runtime.h>

#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cuda/dropout/masks.hpp"
#include "loralab/cuda/gpt_core.hpp"
#include "loralab/cuda/model/layers.hpp"
#include "loralab/dropout/config.hpp"

namespace loralab::cuda {

template <DeviceScalar T>
void GptCore<T>::configure_dropout(const dropout::Config& config, std::uint64_t seed) {
  dropout::validate(config, cfg_.layers);
  dropout_ = config;
  seed_ = seed;
  drop_connect_.reset();
  const dropout::Site* site = config.site(dropout::Position::adapter_weights);
  if (!site) return;
  // Keyed by the module index 4 * block + module, as model::Gpt's apply_drop_connect.
  std::vector<DropConnectFactors> factors;
  for (std::size_t m = 0; m < adapters_.size(); ++m) {
    LinearCore<T>* a = adapters_[m];
    const int l = int(m) / model::kModulesPerBlock;
    const double rate = config.rate(dropout::Position::adapter_weights, l, cfg_.layers);
    if (!a || rate <= 0) continue;
    factors.push_back({a->factor_values(), a->factor_copy(), a->factor_grads(), a->rank(),
                       a->in_features(), a->out_features(), std::uint32_t(m), rate});
  }
  if (!factors.empty())
    drop_connect_ = std::make_unique<DropConnect>(factors, site->pattern, seed, stream_);
}

template <DeviceScalar T>
dropout::MaskKey GptCore<T>::mask_key(dropout::Position p, int layer) const {
  return {seed_, p, std::uint32_t(layer), pass_.branch, pass_.step};
}

// The reference pass of a two-pass step: branch 1 (KL), or the deterministic pass (JS).
template <DeviceScalar T>
Pass GptCore<T>::reference_pass(const Pass& pass) const {
  if (dropout_.compensation == dropout::Compensation::js) return Pass{false, pass.step, 0u};
  return Pass{pass.training, pass.step, 1u};
}

template <DeviceScalar T>
bool GptCore<T>::hidden_acts(dropout::Position p, int layer) const {
  return pass_.training && dropout_.site(p) && dropout_.rate(p, layer, cfg_.layers) > 0;
}

// y = x .* mask scale when position p acts in block `layer` during a training pass (forward on
// the activation, backward on its gradient: the same map); otherwise nothing is written.
template <DeviceScalar T>
bool GptCore<T>::drop_hidden(dropout::Position p, int layer, const T* x, T* y, std::int64_t rows,
                             std::int64_t cols) {
  if (!hidden_acts(p, layer)) return false;
  hidden_dropout<T>(x, y, rows, cols, mask_key(p, layer), dropout_.site(p)->pattern,
                    dropout_.rate(p, layer, cfg_.layers), seq_, stream_);
  return true;
}

// The adapter_input site on module m of block l: rate by block, mask keyed by the module id
// 4 * l + m, as model::Gpt's linear_forward; rate 0 (no mask) where the site does not act.
template <DeviceScalar T>
BranchInputMask GptCore<T>::branch_input_mask(int l, model::Module m) const {
  if (!hidden_acts(dropout::Position::adapter_input, l)) return {};
  const int module = model::kModulesPerBlock * l + static_cast<int>(m);
  return {mask_key(dropout::Position::adapter_input, module),
          dropout_.site(dropout::Position::adapter_input)->pattern,
          dropout_.rate(dropout::Position::adapter_input, l, cfg_.layers), seq_};
}

// DropKey (logits) or DropAttention (weights) keep flags for block l, drawn on the device.
template <DeviceScalar T>
void GptCore<T>::attention_masks(int l, BlockActs& a) {
  a.att_keep_used = false;
  for (const auto p : {dropout::Position::attention_logits, dropout::Position::attention_weights}) {
    const dropout::Site* site = dropout_.site(p);
    const double rate = pass_.training ? dropout_.rate(p, l, cfg_.layers) : 0.0;
    if (!site || rate <= 0) continue;
    LORALAB_CHECK(!a.hooks.logit_keep && !a.hooks.weight_keep && !a.hooks.weight_scale,
                  "[loralab.config] block ", l,
                  ": DeviceModelHooks::attention and the dropout site ", dropout::position_name(p),
                  " both change attention");
    const int H = cfg_.heads;
    a.att_keep.reserve_discard(std::size_t(batch_) * H * std::size_t(seq_) * std::size_t(seq_));
    attention_keep_flags(a.att_keep.data(), mask_key(p, l), site->pattern, rate, batch_, H, seq_,
                         stream_);
    a.att_keep_used = true;
    if (p == dropout::Position::attention_logits) {
      a.hooks.logit_keep = a.att_keep.data();
    } else {
      a.hooks.weight_keep = a.att_keep.data();
      a.hooks.normalizer_stop_gradient = site->stop_gradient;
    }
  }
}

template <DeviceScalar T>
std::vector<std::uint8_t> GptCore<T>::attention_keep_host(int l) const {
  const BlockActs& a = acts_.at(std::size_t(l));
  if (!a.att_keep_used) return {};
  std::vector<std::uint8_t> host(std::size_t(batch_) * std::size_t(cfg_.heads) * std::size_t(seq_) *
                                 std::size_t(seq_));
  LORALAB_CUDA_CHECK(cudaMemcpyAsync(host.data(), a.att_keep.data(), host.size(),
                                     cudaMemcpyDeviceToHost, stream_));
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return host;
}

// DropConnect for the current pass (a training pass with an acting site); true when this call
// applied the masks (false while they are already applied, e.g. inside backward).
template <DeviceScalar T>
bool GptCore<T>::apply_drop_connect() {
  if (!drop_connect_ || !pass_.training || drop_connect_->applied()) return false;
  drop_connect_->apply(pass_);
  return true;
}

// The consistency loss of logits_ against reference_ (mean over non-ignored rows, rows summed in
// double in row order on the host, like the CPU); keeps lse_ref_ and cons_stat_ for backward.
template <DeviceScalar T>
double GptCore<T>::consistency_value() {
  const std::int64_t n = std::int64_t(batch_) * seq_;
  for (DeviceBuffer<float>* b : {&cons_rows_, &lse_ref_, &cons_stat_})
    b->reserve_discard(std::size_t(n));
  layers::consistency_forward<T>(logits_.data(), reference_.data(), targets_.data(), n,
                                 cfg_.vocab_size,
                                 dropout_.compensation == dropout::Compensation::js,
                                 cons_rows_.data(), lse_ref_.data(), cons_stat_.data(), stream_);
  std::vector<float> rows(static_cast<std::size_t>(n));
  LORALAB_CUDA_CHECK(cudaMemcpyAsync(rows.data(), cons_rows_.data(), rows.size() * sizeof(float),
                                     cudaMemcpyDeviceToHost, stream_));
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  double sum = 0;
  for (float r : rows) sum += double(r);
  return count_ > 0 ? sum / double(count_) : 0.0;
}

// logits_ <- ce_weight * dCE/dz + lambda/count * dconsistency/dz (reference_ constant), in place.
template <DeviceScalar T>
void GptCore<T>::consistency_grad(float ce_weight) {
  const std::int64_t n = std::int64_t(batch_) * seq_;
  const float weight = count_ > 0 ? float(dropout_.lambda / double(count_)) : 0.0f;
  layers::consistency_backward<T>(logits_.data(), reference_.data(), targets_.data(), lse_.data(),
                                  lse_ref_.data(), cons_stat_.data(), n, cfg_.vocab_size,
                                  dropout_.compensation == dropout::Compensation::js, ce_weight,
                                  weight, stream_);
}

}  // namespace loralab::cuda
