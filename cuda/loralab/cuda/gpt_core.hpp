/// \file
/// \brief `cuda::GptCore`: the device decoder without its adapter types (weights, activations,
/// forward and backward of every layer), compiled once per element type in
/// cuda/instances/gpt_{f32,bf16}.cu. cuda::Gpt (gpt.hpp) puts typed adapters on top. Host code,
/// readable by g++.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/core/memory.hpp"
#include "loralab/cuda/adamw.hpp"
#include "loralab/cuda/adapted_linear.hpp"
#include "loralab/cuda/bf16.hpp"
#include "loralab/cuda/blas.hpp"
#include "loralab/cuda/device_buffer.hpp"
#include "loralab/cuda/dropout/masks.hpp"
#include "loralab/cuda/model/layers.hpp"
#include "loralab/dropout/config.hpp"
#include "loralab/model/config.hpp"
#include "loralab/model/modules.hpp"
#include "loralab/model/options.hpp"

namespace loralab::cuda {

/// \ingroup cuda
/// \brief Device-only knobs of a cuda::Gpt.
struct GptDeviceOptions {
  /// Keep only what cannot be recomputed cheaply (block inputs, LayerNorm statistics, qkv,
  /// attention output and weights, the MLP pre-activation) and recompute both LayerNorm outputs
  /// and the GELU output in backward: 2 d + ff fewer values per token and block, for one extra
  /// LayerNorm/GELU pass (the LoRA-SP paper's recomputation suggestion; llm.c does the GELU one).
  bool recompute = false;
  /// The stream of every launch (null: the legacy default stream).
  cudaStream_t stream = nullptr;
};

/// \ingroup cuda
/// \brief Places where later methods act inside a block, on the device (the mirror of
/// model::ModelHooks; every pointer is a device pointer).
template <DeviceScalar T>
struct DeviceModelHooks {
  /// Attention hooks for block l of a (batch, seq) pass, device arrays in the CPU's layout; they
  /// must stay valid until the matching backward.
  std::function<model::AttentionHooks(int layer, int batch, int seq)> attention;
  /// In place on the MLP hidden (GELU output [rows x cols]) in forward (run again when
  /// GptDeviceOptions::recompute recomputes it, so it must be a pure function of its inputs) ...
  std::function<void(int layer, T* hidden, std::int64_t rows, std::int64_t cols, cudaStream_t)>
      mlp_hidden_forward;
  /// ... and on its gradient in backward.
  std::function<void(int layer, T* grad_hidden, std::int64_t rows, std::int64_t cols, cudaStream_t)>
      mlp_hidden_backward;
};

/// \ingroup cuda
/// \brief A trainable fp32 buffer shared across blocks (cross-layer sharing such as MoS pools),
/// owned by the model, on the device; the mirror of model::Gpt::SharedPool.
struct DeviceSharedPool {
  DeviceBuffer<float> value;  ///< pool entries
  DeviceBuffer<float> grad;   ///< their gradient, summed over every block that uses them
};

/// \ingroup cuda
/// \brief The decoder on the device, independent of the adapter type: base weights held once
/// in T (bf16 for mixed precision; in full fine-tuning also an fp32 master copy and fp32
/// gradients), activations in T, statistics and losses in fp32. Adapters are attached per
/// module as LinearCore pointers by cuda::Gpt.
/// \tparam T float or bf16.
template <DeviceScalar T>
class GptCore {
 public:
  /// \brief Uploads the flat base weights of `cfg` (model::gpt_layout order, e.g.
  /// GptWeights::flat(); rounded to T) and lays out the gradients of full mode.
  /// \throws Error when `flat` does not hold the layout's entries.
  GptCore(const model::GptConfig& cfg, std::span<const float> flat, model::TrainMode mode,
          const GptDeviceOptions& options);

  /// \brief The configuration.
  const model::GptConfig& config() const { return cfg_; }
  /// \brief The stream of every launch.
  cudaStream_t stream() const { return stream_; }
  /// \brief Device weight [out x in] of module m in block l (T).
  T* weight(int l, model::Module m);
  /// \brief Device bias [out] of module m in block l (T).
  const T* bias(int l, model::Module m);
  /// \brief Routes module m of block l through `adapter` (null: the plain frozen linear).
  void attach(int l, model::Module m, LinearCore<T>* adapter);
  /// \brief Hooks of the dropout framework.
  DeviceModelHooks<T>& hooks() { return hooks_; }
  /// \brief Sets the dropout framework (GptOptions::dropout; checked with dropout::validate) and
  /// the seed that keys its masks (AdapterConfig::seed, as model::Gpt). Call after the adapters
  /// are attached (DropConnect records their factor buffers). The masks are generated on the
  /// device from the shared predicates of dropout/masks.hpp, so they are model::Gpt's bit for
  /// bit. \throws Error naming the bad site.
  void configure_dropout(const dropout::Config& config, std::uint64_t seed);
  /// \brief The consistency loss (KL or JS, unweighted) of the last training forward; 0 without
  /// a compensation (model::Gpt::consistency).
  double consistency() const { return consistency_; }
  /// \brief The attention keep flags [B*H*T x T] the framework drew for block l in the last
  /// forward (DropKey or DropAttention), on the host; empty where no attention site acted.
  std::vector<std::uint8_t> attention_keep_host(int l) const;

  /// \brief Per-block trainability (layer sampling); the gradient still flows through.
  void set_block_trainable(int l, bool trainable) { trainable_.at(std::size_t(l)) = trainable; }
  /// \brief Whether block l trains.
  bool block_trainable(int l) const { return trainable_.at(std::size_t(l)); }

  /// \brief Forward with next-token targets (-1 ignored); returns the mean loss.
  /// \throws Error on a bad length, token or target (checked on the host before any upload).
  double forward(std::span<const std::int32_t> tokens, std::span<const std::int32_t> targets,
                 int batch, int seq, Pass pass);
  /// \brief Forward without a loss; logits stay on the device (logits()).
  void forward_logits(std::span<const std::int32_t> tokens, int batch, int seq, Pass pass);
  /// \brief Row `row` of the last forward's logits, on the host (fp32).
  std::vector<float> logits_row(std::int64_t row) const;
  /// \brief All logits of the last forward_logits [batch*seq x V], on the host (fp32).
  std::vector<float> logits_host() const;
  /// \brief Backward of the last forward's mean loss.
  void backward();
  /// \brief Zeroes full-mode and pool gradients (adapters zero their own).
  void zero_grad();
  /// \brief Full mode: one tensor per gpt_layout() slot (views into the fp32 master, its
  /// gradient and, for bf16, the T copy), with model::Gpt's block ids and projectable linears.
  /// Then the pools.
  std::vector<DeviceParamTensor> own_parameters();
  /// \brief The pool `name` with `size` entries, created zero-filled on first use.
  DeviceSharedPool& shared_pool(const std::string& name, std::size_t size);
  /// \brief Device input of module m in block l saved by the last forward [batch*seq x in].
  /// \throws Error with GptDeviceOptions::recompute for the inputs it does not keep.
  const T* linear_input(int l, model::Module m) const;
  /// \brief linear_input(l, m) copied to the host as fp32 (row-major [batch*seq x in]; bf16
  /// converted exactly). \throws Error as linear_input.
  std::vector<float> linear_input_host(int l, model::Module m) const;
  /// \brief Bytes of activations this model keeps for backward for `tokens` rows (T and fp32).
  std::int64_t activation_bytes(std::int64_t tokens) const;
  /// \brief Number of base weight entries (every tensor of GptWeights).
  std::int64_t weight_count() const { return std::int64_t(total_); }
  /// \brief Bytes of base weights on the device (T copy, plus fp32 master and gradient in full
  /// mode).
  std::int64_t weight_bytes() const;
  /// \brief Copies the base weights back into `flat` (model::gpt_layout order): the fp32 master
  /// in full mode, the T copy otherwise. \throws Error on a size mismatch.
  void download(std::span<float> flat) const;

 private:
  struct BlockActs {
    DeviceBuffer<T> x_in, h1, qkv, att, x_mid, h2, f, g, probs;
    DeviceBuffer<float> mean1, rstd1, mean2, rstd2;
    model::AttentionHooks hooks;
    DeviceBuffer<std::uint8_t> att_keep;  // [B*H*T x T] the framework's attention keep flags
    bool att_keep_used = false;           // att_keep holds the last forward's flags
  };
  T* w(std::size_t k);
  float* g(std::size_t k);
  bool full() const { return mode_ == model::TrainMode::full; }
  void upload_inputs(std::span<const std::int32_t> tokens, int batch, int seq);
  void run_forward(Pass pass);
  void block_forward(int l, const T* x, T* out);
  void block_backward(int l, T* dx);
  void linear_forward(int l, model::Module m, const T* X, T* Y);
  void linear_backward(int l, model::Module m, const T* X, const T* GY, T* dX);
  const T* ln1_out(int l);
  const T* ln2_out(int l);
  const T* gelu_out(int l);
  void backward_from_logits();  // from dL/dlogits held in logits_
  double task_loss();           // cross-entropy of logits_ (rows summed in double)
  // ---- the dropout framework (gpt_dropout.cuh; methods.md 4) ----
  dropout::MaskKey mask_key(dropout::Position p, int layer) const;
  Pass reference_pass(const Pass& pass) const;
  bool hidden_acts(dropout::Position p, int layer) const;
  bool drop_hidden(dropout::Position p, int layer, const T* x, T* y, std::int64_t rows,
                   std::int64_t cols);
  void attention_masks(int l, BlockActs& a);
  BranchInputMask branch_input_mask(int l, model::Module m) const;
  bool apply_drop_connect();
  double consistency_value();
  void consistency_grad(float ce_weight);

  model::GptConfig cfg_;
  model::TrainMode mode_;
  GptDeviceOptions opts_;
  cudaStream_t stream_;
  BlasHandle blas_;
  std::vector<model::TensorSlot> slots_;
  std::size_t total_ = 0;
  DeviceBuffer<T> weights_;               // every base weight in T (float: unused in full mode)
  DeviceBuffer<float> master_;            // full mode: fp32 master (what AdamW updates)
  DeviceBuffer<float> grads_;             // full mode: fp32 gradients, like master_
  std::vector<LinearCore<T>*> adapters_;  // [L x 4], null = plain linear
  std::vector<bool> trainable_;
  std::map<std::string, DeviceSharedPool> pools_;
  DeviceModelHooks<T> hooks_;
  layers::AttentionScratch<T> attn_;
  std::vector<BlockActs> acts_;
  DeviceBuffer<T> rc_h_, rc_g_;  // recompute: LayerNorm / GELU outputs rebuilt in backward
  DeviceBuffer<std::int32_t> tokens_, targets_;
  DeviceBuffer<T> final_in_, hf_, logits_;
  DeviceBuffer<float> mean_f_, rstd_f_, loss_rows_, lse_;
  DeviceBuffer<T> dx_, dh_, dqkv_, dg_;  // backward scratch
  DeviceBuffer<float> reduce_;           // deterministic reductions
  std::int64_t count_ = 0;
  int batch_ = 0, seq_ = 0;
  Pass pass_{};
  bool has_targets_ = false;
  // the dropout framework
  dropout::Config dropout_;
  std::uint64_t seed_ = 0;
  std::unique_ptr<DropConnect> drop_connect_;  // null without an acting adapter_weights site
  DeviceBuffer<T> reference_;                  // logits of a two-pass step's reference pass
  DeviceBuffer<T> branch0_;                    // backprop_both: branch 0's logits
  DeviceBuffer<T> dmlp_;                       // ffn_output site: the masked gradient [n x d]
  DeviceBuffer<float> cons_rows_, lse_ref_, cons_stat_;  // [n] per-row consistency terms
  double consistency_ = 0;
  bool two_pass_ = false;
};

#ifndef LORALAB_CUDA_COMPILING_INSTANCES
extern template class GptCore<float>;
extern template class GptCore<bf16>;
#endif

}  // namespace loralab::cuda
