/// \file
/// \brief Definitions of cuda::ShardPools (declared in shard_pools.hpp): the gather and scatter
/// kernels and the host members. nvcc only. The member definitions are not inline, so this
/// header must be included in exactly one translation unit of a program
/// (cuda/instances/shard_pools.cu in loralab_cuda_instances); everything else includes
/// shard_pools.hpp and links that library.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/cuda/error.hpp"
#include "loralab/cuda/shard_pools.hpp"

namespace loralab::cuda {

namespace shard_kernels {

using shard_detail::GatherJob;
using shard_detail::ModuleGeo;
using shard_detail::PoolGeo;
using shard_detail::ScatterJob;

constexpr int kThreads = 256;  // both kernels are memory bound copies/sums; any multiple of 32

inline unsigned blocks_for(std::int64_t work) {
  const std::int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 4096 ? 4096 : b));  // grid-stride beyond
}

// grid.y walks the jobs (grid-stride beyond 65535), grid.x the entries of one module's A then B.
// Entry e < r*in is A(j, col) with j = e / in: shard s = col / ca of row j comes from pool row
// a[j * shards_a + s]. Entry e >= r*in is B(o, j) [out x r] row-major: shard s = o / cb of
// column j comes from pool row b[j * shards_b + s]. Writes are coalesced; so are A's reads.
__global__ void gather(const GatherJob* __restrict__ jobs, int count, GatherJob single,
                       const ModuleGeo* __restrict__ geo, const std::int32_t* __restrict__ index,
                       std::int64_t r) {
  for (int y = blockIdx.y; y < count; y += gridDim.y) {
    const GatherJob job = jobs ? jobs[y] : single;
    const ModuleGeo g = geo[job.module];
    const std::int64_t a_size = r * g.in, total = a_size + g.out * r;
    for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
         e += std::int64_t(gridDim.x) * blockDim.x) {
      if (e < a_size) {
        const std::int64_t j = e / g.in, col = e % g.in, s = col / g.ca, q = col % g.ca;
        const float v = job.pool_a[std::int64_t(index[g.a_begin + j * g.shards_a + s]) * g.ca + q];
        job.A[e] = v;
        if (job.A_copy) job.A_copy[e] = __float2bfloat16(v);
      } else {
        const std::int64_t eb = e - a_size, o = eb / r, j = eb % r, s = o / g.cb, q = o % g.cb;
        const float v = job.pool_b[std::int64_t(index[g.b_begin + j * g.shards_b + s]) * g.cb + q];
        job.B[eb] = v;
        if (job.B_copy) job.B_copy[eb] = __float2bfloat16(v);
      }
    }
  }
}

// grid.y walks the jobs (pools), grid.x the entries of the pool: the thread of entry (row, q)
// starts from the stored gradient and adds, in CSR order (module, then slot), the factor-gradient
// entry of each use of the row; the CPU's scatter_pool_grad does the same additions in the same
// order.
__global__ void scatter(const ScatterJob* __restrict__ jobs, int count, ScatterJob single,
                        const PoolGeo* __restrict__ pools, const ModuleGeo* __restrict__ geo,
                        const std::int64_t* __restrict__ offsets,
                        const std::int32_t* __restrict__ use_module,
                        const std::int32_t* __restrict__ use_slot, std::int64_t r) {
  for (int y = blockIdx.y; y < count; y += gridDim.y) {
    const ScatterJob job = jobs ? jobs[y] : single;
    const PoolGeo p = pools[job.pool];
    const std::int64_t c = p.row_length, total = p.rows * c;
    const std::int64_t* off = offsets + p.offsets_begin;
    for (std::int64_t e = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; e < total;
         e += std::int64_t(gridDim.x) * blockDim.x) {
      const std::int64_t row = e / c, q = e % c;
      float acc = job.grad[e];
      for (std::int64_t u = off[row]; u < off[row + 1]; ++u) {
        const std::int32_t m = use_module[u], slot = use_slot[u];
        const ModuleGeo g = geo[m];
        const float* d = job.factor_grads[m];
        std::int64_t at;
        if (!p.side_b) {
          const std::int64_t j = slot / g.shards_a, s = slot % g.shards_a;
          at = j * g.in + s * c + q;
        } else {
          const std::int64_t j = slot / g.shards_b, s = slot % g.shards_b;
          at = (s * c + q) * r + j;
        }
        acc += d[at];
      }
      job.grad[e] = acc;
    }
  }
}

}  // namespace shard_kernels

ShardPools::ShardPools(const share::ShardPlan& plan, cudaStream_t stream)
    : stream_(stream), rank_(plan.rank) {
  LORALAB_CHECK(
      plan.use_offsets.size() == plan.pools.size() && plan.uses.size() == plan.pools.size(),
      "[loralab.share] ShardPools: the plan has ", plan.pools.size(), " pools but ",
      plan.use_offsets.size(), " use lists (build it with make_shard_plan)");
  std::vector<std::int32_t> index;
  for (const share::Table& t : plan.tables) {
    shard_detail::ModuleGeo g;
    if (t.active()) {
      g.a_begin = std::int64_t(index.size());
      index.insert(index.end(), t.a.begin(), t.a.end());
      g.b_begin = std::int64_t(index.size());
      index.insert(index.end(), t.b.begin(), t.b.end());
      g.in = t.in;
      g.out = t.out;
      g.ca = plan.pools.at(std::size_t(t.pool_a)).row_length;
      g.cb = plan.pools.at(std::size_t(t.pool_b)).row_length;
      g.shards_a = t.shards_a;
      g.shards_b = t.shards_b;
      g.pool_a = t.pool_a;
      g.pool_b = t.pool_b;
      max_module_entries_ = std::max(max_module_entries_, std::int64_t(rank_) * (t.in + t.out));
    }
    module_geo_host_.push_back(g);
  }
  std::vector<std::int64_t> offsets;
  std::vector<std::int32_t> use_module, use_slot;
  for (std::size_t k = 0; k < plan.pools.size(); ++k) {
    const share::Pool& pool = plan.pools[k];
    shard_detail::PoolGeo g;
    g.rows = pool.rows;
    g.row_length = pool.row_length;
    g.side_b = pool.side == share::Side::b;
    g.offsets_begin = std::int64_t(offsets.size());
    const std::int64_t base = std::int64_t(use_module.size());
    for (std::int64_t o : plan.use_offsets[k]) offsets.push_back(base + o);
    for (const share::Use& u : plan.uses[k]) {
      use_module.push_back(u.module);
      use_slot.push_back(u.slot);
    }
    max_pool_entries_ = std::max(max_pool_entries_, pool.size());
    pool_geo_host_.push_back(g);
  }
  module_geo_ = DeviceBuffer<shard_detail::ModuleGeo>::from_host(module_geo_host_, stream_);
  pool_geo_ = DeviceBuffer<shard_detail::PoolGeo>::from_host(pool_geo_host_, stream_);
  index_ = DeviceBuffer<std::int32_t>::from_host(index, stream_);
  offsets_ = DeviceBuffer<std::int64_t>::from_host(offsets, stream_);
  use_module_ = DeviceBuffer<std::int32_t>::from_host(use_module, stream_);
  use_slot_ = DeviceBuffer<std::int32_t>::from_host(use_slot, stream_);
}

void ShardPools::bind(std::span<const ShardPoolBuffers> pools,
                      std::span<const ShardFactors> modules) {
  LORALAB_CHECK(pools.size() == pool_geo_host_.size() && modules.size() == module_geo_host_.size(),
                "[loralab.share] ShardPools::bind: ", pools.size(), " pools and ", modules.size(),
                " modules given, the plan has ", pool_geo_host_.size(), " and ",
                module_geo_host_.size());
  for (std::size_t k = 0; k < pools.size(); ++k)
    LORALAB_CHECK(pools[k].value && pools[k].grad, "[loralab.share] ShardPools::bind: pool ", k,
                  " has no value or gradient pointer");
  const std::size_t M = modules.size();
  std::vector<shard_detail::GatherJob> gather;
  std::vector<const float*> grads(2 * M, nullptr);
  for (std::size_t m = 0; m < M; ++m) {
    const shard_detail::ModuleGeo& g = module_geo_host_[m];
    if (g.in == 0) continue;
    const ShardFactors& f = modules[m];
    LORALAB_CHECK(f.factors && f.grads, "[loralab.share] ShardPools::bind: module ", m,
                  " carries an adapter but has no factor or gradient pointer");
    const std::int64_t a_size = std::int64_t(rank_) * g.in;
    shard_detail::GatherJob job;
    job.pool_a = pools[std::size_t(g.pool_a)].value;
    job.pool_b = pools[std::size_t(g.pool_b)].value;
    job.A = f.factors;
    job.B = f.factors + a_size;
    job.A_copy = f.shadow;
    job.B_copy = f.shadow ? f.shadow + a_size : nullptr;
    job.module = std::int32_t(m);
    gather.push_back(job);
    grads[m] = f.grads;
    grads[M + m] = f.grads + a_size;
  }
  factor_grads_ = DeviceBuffer<const float*>::from_host(grads, stream_);
  std::vector<shard_detail::ScatterJob> scatter;
  for (std::size_t k = 0; k < pools.size(); ++k) {
    shard_detail::ScatterJob job;
    job.grad = pools[k].grad;
    job.factor_grads = factor_grads_.data() + (pool_geo_host_[k].side_b ? M : 0);
    job.pool = std::int32_t(k);
    scatter.push_back(job);
  }
  gather_jobs_ = DeviceBuffer<shard_detail::GatherJob>::from_host(gather, stream_);
  scatter_jobs_ = DeviceBuffer<shard_detail::ScatterJob>::from_host(scatter, stream_);
  gather_count_ = int(gather.size());
  bound_ = true;
}

void ShardPools::launch_gather(const shard_detail::GatherJob* jobs, int count,
                               const shard_detail::GatherJob& single) {
  if (count == 0 || max_module_entries_ == 0) return;
  const dim3 grid(shard_kernels::blocks_for(max_module_entries_), unsigned(std::min(count, 65535)));
  shard_kernels::gather<<<grid, shard_kernels::kThreads, 0, stream_>>>(
      jobs, count, single, module_geo_.data(), index_.data(), rank_);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

void ShardPools::launch_scatter(const shard_detail::ScatterJob* jobs, int count,
                                const shard_detail::ScatterJob& single) {
  if (count == 0 || max_pool_entries_ == 0) return;
  const dim3 grid(shard_kernels::blocks_for(max_pool_entries_), unsigned(std::min(count, 65535)));
  shard_kernels::scatter<<<grid, shard_kernels::kThreads, 0, stream_>>>(
      jobs, count, single, pool_geo_.data(), module_geo_.data(), offsets_.data(),
      use_module_.data(), use_slot_.data(), rank_);
  LORALAB_CUDA_CHECK(cudaGetLastError());
}

void ShardPools::assemble() {
  LORALAB_CHECK(bound_, "[loralab.state] ShardPools::assemble() before bind()");
  launch_gather(gather_jobs_.data(), gather_count_, {});
}

void ShardPools::scatter() {
  LORALAB_CHECK(bound_, "[loralab.state] ShardPools::scatter() before bind()");
  launch_scatter(scatter_jobs_.data(), pools(), {});
}

void ShardPools::assemble(int m, const float* pool_a, const float* pool_b, float* A, float* B,
                          bf16* A_copy, bf16* B_copy) {
  LORALAB_CHECK(m >= 0 && m < modules() && module_geo_host_[std::size_t(m)].in > 0,
                "[loralab.share] ShardPools::assemble: table ", m, " carries no adapter");
  shard_detail::GatherJob job{pool_a, pool_b, A, B, A_copy, B_copy, std::int32_t(m)};
  launch_gather(nullptr, 1, job);
}

void ShardPools::scatter(int k, float* grad, std::span<const float* const> factor_grads) {
  LORALAB_CHECK(k >= 0 && k < pools() && factor_grads.size() == module_geo_host_.size(),
                "[loralab.share] ShardPools::scatter: pool ", k, " of ", pools(), ", ",
                factor_grads.size(), " module pointers for ", module_geo_host_.size(), " tables");
  scratch_grads_.reserve_discard(factor_grads.size());
  LORALAB_CUDA_CHECK(cudaMemcpyAsync(scratch_grads_.data(), factor_grads.data(),
                                     factor_grads.size_bytes(), cudaMemcpyHostToDevice, stream_));
  const shard_detail::ScatterJob job{grad, scratch_grads_.data(), std::int32_t(k)};
  launch_scatter(nullptr, 1, job);
  LORALAB_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the caller's array may go on return
}

std::int64_t ShardPools::bytes() const {
  return std::int64_t(module_geo_.bytes() + pool_geo_.bytes() + index_.bytes() + offsets_.bytes() +
                      use_module_.bytes() + use_slot_.bytes() + gather_jobs_.bytes() +
                      scatter_jobs_.bytes() + factor_grads_.bytes() + scratch_grads_.bytes());
}

}  // namespace loralab::cuda
