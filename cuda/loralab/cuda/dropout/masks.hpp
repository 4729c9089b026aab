/// \file
/// \brief The dropout framework's masks on the device (the mirror of
/// include/loralab/dropout/masks.hpp): attention keep flags, hidden-tensor dropout, and
/// DropConnect on the adapters' factors. Every mask is decided in-kernel by the same
/// LORALAB_HOST_DEVICE functions the CPU calls (dropout::attention_dropped, hidden_dropped,
/// dropped_at), so the two backends drop exactly the same entries, and nothing is copied from
/// the host per step. Host code, readable by g++; the kernels are in masks.cuh, compiled once in
/// cuda/instances/dropout.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/cuda/bf16.hpp"
#include "loralab/cuda/device_buffer.hpp"
#include "loralab/dropout/masks.hpp"

namespace loralab::cuda {

/// \ingroup cuda
/// \brief Writes keep flags [B*H*T x T] (row (b*H + h)*T + i, column j; 1 kept, 0 dropped) of
/// the attention mask `key` at rate p: the device mirror of dropout::attention_dropped, in the
/// layout of model::AttentionHooks::logit_keep / weight_keep. Asynchronous on `stream`.
/// \throws Error on a non-positive shape or a null pointer.
void attention_keep_flags(std::uint8_t* keep, const dropout::MaskKey& key, dropout::Pattern pattern,
                          double rate, int batch, int heads, int seq, cudaStream_t stream);

/// \ingroup cuda
/// \brief y = x .* M over a hidden tensor [rows x cols] (rows = b*T + t), where M is 0 where
/// dropout::hidden_dropped(key, pattern, rate, seq, cols, row, c) and
/// dropout::hidden_keep_scale(pattern, rate, seq) elsewhere: the forward of a hidden dropout
/// site and, applied to the gradient, its backward. y may alias x. Asynchronous on `stream`.
/// \throws Error on a bad shape or a null pointer.
template <DeviceScalar T>
void hidden_dropout(const T* x, T* y, std::int64_t rows, std::int64_t cols,
                    const dropout::MaskKey& key, dropout::Pattern pattern, double rate, int seq,
                    cudaStream_t stream);

// Explicit instances, compiled in cuda/instances/dropout.cu (hidden from Doxygen).
/// \cond
#ifndef LORALAB_CUDA_COMPILING_INSTANCES
extern template void hidden_dropout<float>(const float*, float*, std::int64_t, std::int64_t,
                                           const dropout::MaskKey&, dropout::Pattern, double, int,
                                           cudaStream_t);
extern template void hidden_dropout<bf16>(const bf16*, bf16*, std::int64_t, std::int64_t,
                                          const dropout::MaskKey&, dropout::Pattern, double, int,
                                          cudaStream_t);
#endif
/// \endcond

/// \ingroup cuda
/// \brief Device pointers and shape of one adapter's factors for DropConnect.
struct DropConnectFactors {
  float* values = nullptr;   ///< fp32 master: A [r x in] then B [out x r]
  bf16* shadow = nullptr;    ///< null, or the bf16 copy the GEMMs read (kept in step with values)
  float* grads = nullptr;    ///< fp32 dA then dB
  std::int64_t rank = 0;     ///< r
  std::int64_t in = 0;       ///< d_in
  std::int64_t out = 0;      ///< d_out
  std::uint32_t module = 0;  ///< module id (4 * block + module): the mask's layer field
  double rate = 0;           ///< p in (0, 1) for this module
};

namespace dropconnect_detail {
/// One module's entry in the device table (internal).
struct Entry {
  float* values = nullptr;
  bf16* shadow = nullptr;
  float* grads = nullptr;
  std::int64_t offset = 0;  // into the saved / stash buffers
  std::int64_t size = 0, a_size = 0, rank = 0, in = 0;
  std::uint32_t module = 0;
  double rate = 0;
  float keep = 1.0f;
};
}  // namespace dropconnect_detail

/// \ingroup cuda
/// \brief DropConnect on adapter factors (dropping position adapter_weights), the device mirror
/// of model::Gpt's apply/restore/stash/finish: entry e of module m's A then B is dropped when
/// dropout::dropped_at({seed, adapter_weights, m, branch, step}, counter, p) with counter = e
/// (element) or, for column, the input column of A (e mod in, every rank) and the output row of
/// B (in + (e - r in) / r); kept entries are scaled by 1/(1-p). Values (and their bf16 copies)
/// are saved before and restored after, so the parameters hold their own values between calls.
/// The module table is uploaded once; each operation is one launch over every module.
class DropConnect {
 public:
  /// \brief Uploads the table of `factors` (modules with rate > 0) and allocates the saved and
  /// stash buffers. \throws Error on a rate outside (0, 1) or a missing pointer.
  DropConnect(std::span<const DropConnectFactors> factors, dropout::Pattern pattern,
              std::uint64_t seed, cudaStream_t stream = nullptr);
  /// \brief Saves every value (and bf16 copy) and multiplies it by its mask scale for `pass`
  /// (branch and step key the mask). No-op while already applied.
  void apply(const Pass& pass);
  /// \brief Puts the saved values (and copies) back. No-op when not applied.
  void restore();
  /// \brief Gradient accumulation: sets the current factor gradients aside and zeroes them, so
  /// the next backward writes only its own contribution. Call after apply().
  void stash_grads();
  /// \brief grads = grads .* scale + the stashed gradients, then restore(). Call after
  /// stash_grads() and a backward.
  void finish();
  /// \brief True between apply() and restore().
  bool applied() const { return applied_; }
  /// \brief Number of modules in the table.
  int modules() const { return int(host_.size()); }
  /// \brief Device bytes held (table, saved values and copies, stash).
  std::int64_t bytes() const;

 private:
  void launch(int op);

  cudaStream_t stream_;
  dropout::Pattern pattern_;
  std::uint64_t seed_;
  Pass pass_{};
  bool applied_ = false, stashed_ = false;
  std::int64_t max_size_ = 0;
  std::vector<dropconnect_detail::Entry> host_;
  DeviceBuffer<dropconnect_detail::Entry> table_;
  DeviceBuffer<float> saved_, stash_;
  DeviceBuffer<bf16> saved_shadow_;
};

}  // namespace loralab::cuda
