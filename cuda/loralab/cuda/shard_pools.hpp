/// \file
/// \brief `cuda::ShardPools`: a share::ShardPlan's index tables and use lists on the device, with
/// the gather (assemble A_i, B_i from the pools) and the deterministic scatter-add of factor
/// gradients into the pools; the device mirror of share::assemble_factors and
/// share::scatter_pool_grad (include/loralab/share/shard_plan.hpp, methods.md 3.4, 3.5). Host
/// code, readable by g++; kernels and member definitions are in shard_pools.cuh, compiled once in
/// cuda/instances/shard_pools.cu.
///
/// Why a CSR and not sort-by-key: a generic scatter-add either adds with float atomics (the order
/// of the additions, hence the rounding, changes run to run) or sorts the (destination, source)
/// pairs by destination every step and reduces each segment. The index tables of a sharing
/// scheme are drawn once from the seed and never change, so the inverse index (per pool row, the
/// list of its uses, ordered by module then slot) is built once on the host
/// (ShardPlan::use_offsets/uses, the same lists the CPU scatter walks) and uploaded once. Each
/// thread then owns one pool entry and sums its uses in that fixed order: no atomics, no sort per
/// step, bitwise reproducible run to run, and the same additions in the same order as
/// share::scatter_pool_grad<float> (so the two agree bit for bit).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "loralab/cuda/bf16.hpp"
#include "loralab/cuda/device_buffer.hpp"
#include "loralab/share/shard_plan.hpp"

namespace loralab::cuda {

/// \ingroup cuda
/// \brief Device pointers of one adapted module's factors (ShardPools::bind).
struct ShardFactors {
  float* factors = nullptr;  ///< fp32 master: A [r x in] then B [out x r] (written by assemble)
  bf16* shadow = nullptr;    ///< null, or the bf16 copy of `factors` the GEMMs read (written too)
  const float* grads = nullptr;  ///< fp32 dA then dB (read by scatter)
};

/// \ingroup cuda
/// \brief Device pointers of one pool (ShardPools::bind).
struct ShardPoolBuffers {
  const float* value = nullptr;  ///< pool entries [rows x row_length]
  float* grad = nullptr;         ///< their gradient, same layout
};

namespace shard_detail {
/// Geometry of one module's table (index = block * types_per_block + type); inactive: in = 0.
struct ModuleGeo {
  std::int64_t a_begin = 0, b_begin = 0;  // offsets of Table::a, Table::b in the flat index array
  std::int64_t in = 0, out = 0;           // d_in, d_out
  std::int64_t ca = 0, cb = 0;            // row lengths of the module's A- and B-pool
  std::int32_t shards_a = 0, shards_b = 0;
  std::int32_t pool_a = -1, pool_b = -1;  // indices of the module's pools in the plan
};
/// Geometry of one pool: its rows, row length, side, and where its CSR offsets start.
struct PoolGeo {
  std::int64_t rows = 0, row_length = 0;
  std::int64_t offsets_begin = 0;  // rows + 1 absolute offsets into the flat use arrays
  std::int32_t side_b = 0;         // 1 for a B-pool
};
/// One gather job: module `module`'s factors from two pools, written to A, B (and bf16 copies).
struct GatherJob {
  const float* pool_a = nullptr;
  const float* pool_b = nullptr;
  float* A = nullptr;  // [r x in]
  float* B = nullptr;  // [out x r]
  bf16* A_copy = nullptr;
  bf16* B_copy = nullptr;
  std::int32_t module = 0;
};
/// One scatter job: pool `pool`'s gradient from the factor gradients of every module using it.
struct ScatterJob {
  float* grad = nullptr;
  const float* const* factor_grads = nullptr;  // device, per module: dA (A-pool) or dB (B-pool)
  std::int32_t pool = 0;
};
}  // namespace shard_detail

/// \ingroup cuda
/// \brief A shard plan on the device: module tables and per-pool use lists (CSR) uploaded once,
/// then the gather of every module's A_i, B_i from the pools (one launch) and the scatter-add of
/// the factor gradients into the pool gradients (one launch, no atomics; see the file comment).
/// Independent of the adapter types, compiled once. All launches go to one stream.
class ShardPools {
 public:
  /// \brief Uploads `plan`'s tables and use lists (synchronous).
  explicit ShardPools(const share::ShardPlan& plan, cudaStream_t stream = nullptr);

  /// \brief Records, once, where the pools and the modules' factors live (the pointers must stay
  /// valid: the buffers of cuda::Gpt's pools and adapters never move). `pools[k]` is pool k of
  /// the plan; `modules[m]` is table m (null pointers for inactive tables).
  /// \throws Error on a size mismatch or a missing pointer of an active module.
  void bind(std::span<const ShardPoolBuffers> pools, std::span<const ShardFactors> modules);
  /// \brief True after bind().
  bool bound() const { return bound_; }

  /// \brief Writes every bound module's A_i, B_i (fp32 master and bf16 copy when bound) from the
  /// pools' values, in one launch. \throws Error when not bound.
  void assemble();
  /// \brief Adds into every bound pool's gradient the factor gradients of its uses, in the plan's
  /// fixed order, in one launch (the factor gradients are only read). \throws Error when not
  /// bound.
  void scatter();

  /// \brief Gathers module m's factors from explicit device pointers: A [rank x in], B [out x
  /// rank] row-major, plus bf16 copies when non-null; the mirror of share::assemble_factors.
  /// \throws Error when table m is inactive.
  void assemble(int m, const float* pool_a, const float* pool_b, float* A, float* B,
                bf16* A_copy = nullptr, bf16* B_copy = nullptr);
  /// \brief Adds into `grad` (device, pool k's gradient) the gradient of every use of each pool
  /// row in the plan's order; `factor_grads[m]` is module m's device dA [rank x in] for an
  /// A-pool or dB [out x rank] for a B-pool (null where unused). The mirror of
  /// share::scatter_pool_grad; the pointer array is uploaded per call (synchronizes).
  void scatter(int k, float* grad, std::span<const float* const> factor_grads);

  /// \brief The plan's rank r.
  int rank() const { return rank_; }
  /// \brief Number of pools.
  int pools() const { return int(pool_geo_host_.size()); }
  /// \brief Number of tables (active or not).
  int modules() const { return int(module_geo_host_.size()); }
  /// \brief Device bytes held: tables, use lists, descriptors and pointer arrays.
  std::int64_t bytes() const;
  /// \brief The stream of every launch.
  cudaStream_t stream() const { return stream_; }

 private:
  void launch_gather(const shard_detail::GatherJob* jobs, int count,
                     const shard_detail::GatherJob& single);
  void launch_scatter(const shard_detail::ScatterJob* jobs, int count,
                      const shard_detail::ScatterJob& single);

  cudaStream_t stream_;
  int rank_ = 0;
  bool bound_ = false;
  std::int64_t max_module_entries_ = 0;  // largest r * (in + out): the gather's grid
  std::int64_t max_pool_entries_ = 0;    // largest pool: the scatter's grid
  std::vector<shard_detail::ModuleGeo> module_geo_host_;
  std::vector<shard_detail::PoolGeo> pool_geo_host_;
  DeviceBuffer<shard_detail::ModuleGeo> module_geo_;
  DeviceBuffer<shard_detail::PoolGeo> pool_geo_;
  DeviceBuffer<std::int32_t> index_;       // every Table::a then Table::b, module by module
  DeviceBuffer<std::int64_t> offsets_;     // per pool, rows + 1 offsets into the uses
  DeviceBuffer<std::int32_t> use_module_;  // per use: the module ...
  DeviceBuffer<std::int32_t> use_slot_;    // ... and the slot in its table of the pool's side
  DeviceBuffer<shard_detail::GatherJob> gather_jobs_;    // bound: one per active module
  DeviceBuffer<shard_detail::ScatterJob> scatter_jobs_;  // bound: one per pool
  DeviceBuffer<const float*> factor_grads_;   // bound: [modules] dA pointers then [modules] dB
  DeviceBuffer<const float*> scratch_grads_;  // scatter(k, ...): the caller's pointer array
  int gather_count_ = 0;
};

}  // namespace loralab::cuda
