/// \file
/// \brief Mask-aware AdamW on the device: one fused kernel over every tensor, packed state,
/// frozen entries never touched. Mirrors include/loralab/cpu/adamw.hpp. Definitions in adamw.cuh.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "loralab/cuda/bf16.hpp"
#include "loralab/cuda/device_buffer.hpp"
#include "loralab/optim/adamw.hpp"

namespace loralab::cuda {

/// \ingroup cuda
/// \brief A flat fp32 master tensor on the device, its fp32 gradient, an optional mask (1 =
/// trainable) and an optional bf16 copy that the optimizer refreshes after each update (the
/// storage the bf16 kernels read). All pointers are device pointers owned by the adapter.
///
/// The trailing fields are loralab::ParamTensor's: the block the tensor belongs to (layer
/// sampling skips inactive blocks) and, for a block's linear weight, its [rows x cols] shape
/// (GaLore projects it).
struct DeviceParamTensor {
  float* value = nullptr;              ///< master weights, updated in place
  const float* grad = nullptr;         ///< dL/dvalue
  const std::uint8_t* mask = nullptr;  ///< null, or one byte per entry
  bf16* shadow = nullptr;              ///< null, or a bf16 copy to refresh
  std::size_t size = 0;                ///< number of entries
  int block = -1;                      ///< decoder block, or -1 (always trains)
  std::int64_t rows = 0;               ///< a projectable matrix's rows (0 = not a matrix)
  std::int64_t cols = 0;               ///< its columns
  bool projectable = false;            ///< a block's linear weight (GaLore applies to it)
};

/// \ingroup cuda
/// \brief AdamW with the arithmetic of loralab::adamw_update (torch's single-tensor path).
///
/// Masked tensors keep (m, v) only for trainable entries plus a 32-bit index per trainable entry
/// (built once from the mask); the kernel walks the index list, so frozen entries are never read
/// or written. One launch per step covers every tensor (a chunk table maps blocks to tensors).
///
/// Each tensor has its own step counter (torch's per-parameter `state["step"]`), which sets its
/// bias corrections, and an active flag: an inactive tensor is not touched at all (layer
/// sampling). Its state can be reset (zeroed, counter 0) or released (device memory freed; it
/// comes back zeroed when the tensor steps again). Without those calls every counter equals
/// steps() and the arithmetic is cpu::AdamW's.
class AdamW {
 public:
  /// \brief Builds state for `params` (views that must outlive the optimizer).
  /// \throws Error on a bad config or an empty tensor pointer.
  AdamW(std::vector<DeviceParamTensor> params, const AdamWConfig& cfg = {},
        cudaStream_t stream = nullptr);
  /// \brief One step over every active tensor on `grad_scale` times the stored gradients
  /// (clipping and accumulation scale there, as cpu::AdamW::step); asynchronous on the stream.
  /// A released active tensor first gets fresh zero state.
  void step(double grad_scale = 1.0);
  /// \brief Sum of squared gradients over the trainable entries (frozen entries hold 0), reduced
  /// in a fixed order; waits for the stream.
  double grad_squared_norm();
  /// \brief Restores a checkpoint's step count and the packed moments of tensor k (its own
  /// counter becomes `steps` too). Empty moments for a tensor that has some mean a released
  /// state (StatePolicy::drop). \throws Error when a moment vector has the wrong length.
  void restore(std::int64_t steps, std::size_t k, std::span<const float> m,
               std::span<const float> v);
  /// \brief Whether tensor k is updated by step().
  bool active(std::size_t k) const { return slots_.at(k).active; }
  /// \brief Makes tensor k take part in the next steps or not (an inactive tensor keeps its
  /// values, moments and counter).
  void set_active(std::size_t k, bool active) { slots_.at(k).active = active; }
  /// \brief Tensor k's own step counter.
  std::int64_t tensor_steps(std::size_t k) const { return slots_.at(k).t; }
  /// \brief Sets tensor k's own step counter (checkpoints).
  void set_tensor_steps(std::size_t k, std::int64_t t) { slots_.at(k).t = t; }
  /// \brief Whether tensor k holds its moments on the device (false after release_state).
  bool held(std::size_t k) const { return slots_.at(k).held; }
  /// \brief Zero moments and counter for tensor k (allocated again when released).
  void reset_state(std::size_t k);
  /// \brief Frees tensor k's moments and zeroes its counter (StatePolicy::drop).
  void release_state(std::size_t k);
  /// \brief Number of tensors.
  std::size_t tensors() const { return slots_.size(); }
  /// \brief Sets the learning rate of the next steps.
  void set_lr(double lr) { lr_ = lr; }
  /// \brief The current learning rate.
  double lr() const { return lr_; }
  /// \brief Steps taken so far.
  std::int64_t steps() const { return t_; }
  /// \brief Bytes of optimizer state on the device (moments held now and index lists).
  std::int64_t state_bytes() const;
  /// \brief Packed first moments of tensor k, copied to the host (trainable entries in order).
  std::vector<float> first_moment(std::size_t k) const;
  /// \brief Packed second moments of tensor k, copied to the host.
  std::vector<float> second_moment(std::size_t k) const;

 private:
  struct Slot {
    DeviceParamTensor tensor;
    DeviceBuffer<float> m, v;
    DeviceBuffer<std::uint32_t> index;  // trainable entries of a masked tensor; empty otherwise
    std::size_t count = 0;              // entries the kernel updates
    std::int64_t t = 0;                 // this tensor's own steps
    bool active = true, held = true;    // stepped; moments allocated
  };
  void upload_descriptors();  // after moments were (re)allocated or freed
  std::vector<Slot> slots_;
  DeviceBuffer<unsigned char> table_;  // kernel arguments: tensor descriptors + chunk table
  DeviceBuffer<unsigned char> coef_;   // per-step, per-tensor coefficients and active flags
  bool descriptors_stale_ = false;
  DeviceBuffer<double> partial_;  // grad_squared_norm: one sum per chunk
  std::size_t chunks_ = 0;
  AdamWConfig cfg_;
  double lr_;
  std::int64_t t_ = 0;
  cudaStream_t stream_;
};

}  // namespace loralab::cuda
