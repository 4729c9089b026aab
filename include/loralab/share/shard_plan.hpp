/// \file
/// \brief `share::ShardPlan`: the pools and index tables of a sharing scheme (pure sharing, MoS,
/// PRoLoRA), built once on the host from the seed and shared by every backend; plus the gather
/// (assemble A_i, B_i from the pools) and the deterministic scatter-add of factor gradients into
/// the pools (methods.md 3.3 to 3.7 and 3.12). No Eigen: the device model uses the same plan.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/core/random_fill.hpp"
#include "loralab/policy/share.hpp"

namespace loralab::share {

/// \ingroup share
/// \brief One projection type that carries adapters in every block (e.g. GPT-2's c_attn).
struct TypeShape {
  int type = 0;          ///< index of the type inside a block (the model's Module)
  std::string name;      ///< used in pool names and errors, e.g. "c_attn"
  std::int64_t in = 0;   ///< d_in of the type's linears
  std::int64_t out = 0;  ///< d_out of the type's linears
};

/// \ingroup share
/// \brief Which factor a pool feeds.
enum class Side { a, b };

/// \ingroup share
/// \brief A trainable pool: `rows` shards of `row_length` entries, row-major. A-pools start
/// uniform in [-init_bound, init_bound] (Kaiming with the full d_in as fan-in), B-pools at zero.
struct Pool {
  std::string name;             ///< e.g. "A.c_attn", or "A.all" for a global pool
  Side side = Side::a;          ///< A or B shards
  std::int64_t rows = 0;        ///< number of shards
  std::int64_t row_length = 0;  ///< entries per shard
  double init_bound = 0;        ///< A: uniform bound; B: 0
  /// \brief Entries in the pool.
  std::int64_t size() const { return rows * row_length; }
};

/// \ingroup share
/// \brief The index table of one adapted module (one type in one block): shard s of row j of A
/// is pool row `a[j * shards_a + s]` of pool `pool_a`; shard s of column j of B is pool row
/// `b[j * shards_b + s]` of pool `pool_b`.
struct Table {
  int type = -1;                ///< projection type (-1: no adapter here)
  int block = -1;               ///< block index
  int pool_a = -1;              ///< index of the A-pool in ShardPlan::pools
  int pool_b = -1;              ///< index of the B-pool
  int shards_a = 0;             ///< shards per row of A (along d_in)
  int shards_b = 0;             ///< shards per column of B (along d_out)
  std::int64_t in = 0;          ///< d_in
  std::int64_t out = 0;         ///< d_out
  std::vector<std::int32_t> a;  ///< rank * shards_a pool rows
  std::vector<std::int32_t> b;  ///< rank * shards_b pool rows
  /// \brief True when this module carries an adapter.
  bool active() const { return pool_a >= 0; }
};

/// \ingroup share
/// \brief Where a pool row is used: the module (index into ShardPlan::tables) and the position
/// in that module's table of the pool's side.
struct Use {
  std::int32_t module = 0;  ///< index into ShardPlan::tables
  std::int32_t slot = 0;    ///< position in Table::a (A-pools) or Table::b (B-pools)
};

/// \ingroup share
/// \brief Pools, per-module index tables and, per pool row, the list of its uses (CSR, ordered
/// by module then slot: the scatter-add sums in this fixed order on every backend, so gradients
/// are reproducible run to run without atomics).
struct ShardPlan {
  ShareScheme scheme;         ///< the scheme the plan realizes
  int rank = 0;               ///< r, the rank of every assembled factor
  int budget_rank = 0;        ///< MoS e (resolved); r for the other schemes
  int private_rank = 0;       ///< MoS p (resolved; 0 with privatization off)
  int shards = 1;             ///< MoS l; PRoLoRA: 1
  int types_per_block = 0;    ///< tables are indexed block * types_per_block + type
  std::vector<Pool> pools;    ///< the trainable pools
  std::vector<Table> tables;  ///< one per (block, type); inactive where no adapter
  std::vector<std::vector<std::int64_t>> use_offsets;  ///< per pool: rows + 1 offsets into uses
  std::vector<std::vector<Use>> uses;                  ///< per pool: the uses of each row

  /// \brief The table of (block, type).
  const Table& table(int block, int type) const {
    return tables.at(std::size_t(block) * types_per_block + type);
  }
  /// \brief Trainable entries: the sum of the pool sizes.
  std::int64_t trainable_params() const {
    std::int64_t n = 0;
    for (const Pool& p : pools) n += p.size();
    return n;
  }
  /// \brief Index entries stored for the tables (int32 each).
  std::int64_t index_entries() const {
    std::int64_t n = 0;
    for (const Table& t : tables) n += std::int64_t(t.a.size() + t.b.size());
    return n;
  }
};

namespace plan_detail {

// The stream id of a draw: side (bit 22), type (bits 16..21), block (bits 0..15; 0xFFFF = one
// draw shared by every block, i.e. subset selection off).
inline std::uint64_t draw_stream(Side side, int type, int block) {
  const std::uint32_t module = (std::uint32_t(side == Side::b) << 22) |
                               (std::uint32_t(type & 0x3F) << 16) | std::uint32_t(block & 0xFFFF);
  return make_stream(RngPurpose::share_index, module, 0);
}

// The k candidates of [0, n) with the smallest Philox keys: the first k of a uniform random
// permutation (ties, which have probability 2^-64, broken by index).
inline std::vector<std::int32_t> first_of_permutation(std::int64_t n, std::int64_t k,
                                                      std::uint64_t seed, std::uint64_t stream) {
  std::vector<std::pair<std::uint64_t, std::int32_t>> keyed(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) keyed[i] = {mask_key(seed, stream, i), std::int32_t(i)};
  std::partial_sort(keyed.begin(), keyed.begin() + k, keyed.end());
  std::vector<std::int32_t> out(static_cast<std::size_t>(k));
  for (std::int64_t i = 0; i < k; ++i) out[i] = keyed[i].second;
  return out;
}

inline void build_uses(ShardPlan& plan) {
  const std::size_t P = plan.pools.size();
  plan.use_offsets.assign(P, {});
  plan.uses.assign(P, {});
  for (std::size_t p = 0; p < P; ++p) plan.use_offsets[p].assign(plan.pools[p].rows + 1, 0);
  auto each_use = [&](auto&& fn) {
    for (std::size_t m = 0; m < plan.tables.size(); ++m) {
      const Table& t = plan.tables[m];
      if (!t.active()) continue;
      for (std::size_t s = 0; s < t.a.size(); ++s) fn(t.pool_a, t.a[s], Use{int(m), int(s)});
      for (std::size_t s = 0; s < t.b.size(); ++s) fn(t.pool_b, t.b[s], Use{int(m), int(s)});
    }
  };
  each_use([&](int p, std::int32_t row, Use) { ++plan.use_offsets[p][row + 1]; });
  for (std::size_t p = 0; p < P; ++p) {
    auto& off = plan.use_offsets[p];
    for (std::size_t r = 1; r < off.size(); ++r) off[r] += off[r - 1];
    plan.uses[p].resize(static_cast<std::size_t>(off.back()));
  }
  std::vector<std::vector<std::int64_t>> fill(P);
  for (std::size_t p = 0; p < P; ++p) fill[p] = plan.use_offsets[p];
  each_use([&](int p, std::int32_t row, Use u) { plan.uses[p][fill[p][row]++] = u; });
}

inline void check_divides(const TypeShape& t, std::int64_t dim, const char* which, int by,
                          const char* what) {
  LORALAB_CHECK(by >= 1 && dim % by == 0, "[loralab.shape] ", what, ": ", which, "=", dim, " of ",
                t.name, " does not divide by ", by);
}

inline ShardPlan pure_plan(ShardPlan plan, int layers, std::span<const TypeShape> types) {
  const int r = plan.rank;
  for (const TypeShape& t : types) {
    const int pa = int(plan.pools.size());
    plan.pools.push_back({"A." + t.name, Side::a, r, t.in, 1.0 / std::sqrt(double(t.in))});
    plan.pools.push_back({"B." + t.name, Side::b, r, t.out, 0.0});
    for (int i = 0; i < layers; ++i) {
      Table& tab = plan.tables[std::size_t(i) * plan.types_per_block + t.type];
      tab = Table{t.type, i, pa, pa + 1, 1, 1, t.in, t.out, {}, {}};
      for (int j = 0; j < r; ++j) {
        tab.a.push_back(j);
        tab.b.push_back(j);
      }
    }
  }
  return plan;
}

inline ShardPlan prolora_plan(ShardPlan plan, const ShareConfig& cfg, int layers,
                              std::span<const TypeShape> types) {
  const int r = plan.rank, u = cfg.unshared_rank, m = cfg.a_multiple, n = cfg.b_multiple;
  LORALAB_CHECK(u >= 0 && u <= r, "[loralab.config] PRoLoRA unshared rank u=", u,
                " outside [0, r=", r, "]");
  LORALAB_CHECK(m >= 1 && n >= 1, "[loralab.config] PRoLoRA multiples must be >= 1, got m=", m,
                " n=", n);
  const int rs = r - u;  // shared rank components
  const bool rot = plan.scheme.rotation;
  const int delta_a = rot ? std::max(rs / m, 1) : 0, delta_b = rot ? std::max(rs / n, 1) : 0;
  for (const TypeShape& t : types) {
    check_divides(t, t.in, "d_in", m, "PRoLoRA a_multiple m");
    check_divides(t, t.out, "d_out", n, "PRoLoRA b_multiple n");
    const std::int64_t seg_a = rs + std::int64_t(u) * m, seg_b = rs + std::int64_t(u) * n;
    const int pa = int(plan.pools.size());
    plan.pools.push_back(
        {"A." + t.name, Side::a, seg_a * layers, t.in / m, 1.0 / std::sqrt(double(t.in))});
    plan.pools.push_back({"B." + t.name, Side::b, seg_b * layers, t.out / n, 0.0});
    for (int i = 0; i < layers; ++i) {
      Table& tab = plan.tables[std::size_t(i) * plan.types_per_block + t.type];
      tab = Table{t.type, i, pa, pa + 1, m, n, t.in, t.out, {}, {}};
      auto fill = [&](std::vector<std::int32_t>& idx, std::int64_t base, int copies, int delta) {
        for (int j = 0; j < r; ++j)
          for (int k = 0; k < copies; ++k)
            idx.push_back(std::int32_t(j < rs ? base + (j + std::int64_t(k) * delta) % rs
                                              : base + rs + std::int64_t(j - rs) * copies + k));
      };
      fill(tab.a, seg_a * i, m, delta_a);
      fill(tab.b, seg_b * i, n, delta_b);
    }
  }
  return plan;
}

inline ShardPlan mos_plan(ShardPlan plan, const ShareConfig& cfg, int layers,
                          std::span<const TypeShape> types, std::uint64_t seed) {
  const ShareScheme& sc = plan.scheme;
  const int r = plan.rank;
  const int e = cfg.budget_rank == 0 ? r : cfg.budget_rank;
  const int l = cfg.shards;
  LORALAB_CHECK(e >= 1, "[loralab.config] MoS budget rank e must be >= 1, got ", e);
  LORALAB_CHECK(l >= 1, "[loralab.config] MoS shards per vector l must be >= 1, got ", l);
  int p = cfg.private_rank >= 0 ? cfg.private_rank : (e >= 2 ? std::min(e / 2, r) : 0);
  LORALAB_CHECK(p <= e, "[loralab.config] MoS private rank p=", p,
                " exceeds the budget rank e=", e);
  LORALAB_CHECK(p <= r, "[loralab.config] MoS private rank p=", p, " exceeds the rank r=", r);
  if (!sc.shard_privatization) p = 0;
  plan.budget_rank = e;
  plan.private_rank = p;
  plan.shards = l;

  // Shard lengths and shards per vector of each type. Per-type pools: d/l. A global pool: the
  // shortest d_in / l (resp. d_out / l), and a type with a longer vector uses more shards.
  std::int64_t c_a = 0, c_b = 0;
  if (cfg.global_pool) {
    std::int64_t min_in = types[0].in, min_out = types[0].out;
    for (const TypeShape& t : types) {
      min_in = std::min(min_in, t.in);
      min_out = std::min(min_out, t.out);
    }
    LORALAB_CHECK(min_in % l == 0 && min_out % l == 0, "[loralab.shape] MoS shards l=", l,
                  " must divide the shortest d_in=", min_in, " and d_out=", min_out);
    c_a = min_in / l;
    c_b = min_out / l;
  }
  struct Geo {
    std::int64_t la, lb;  // shards per A row, per B column
  };
  std::vector<Geo> geo;
  for (const TypeShape& t : types) {
    if (!cfg.global_pool) {
      check_divides(t, t.in, "d_in", l, "MoS shards per vector l");
      check_divides(t, t.out, "d_out", l, "MoS shards per vector l");
      geo.push_back({l, l});
    } else {
      LORALAB_CHECK(t.in % c_a == 0 && t.out % c_b == 0,
                    "[loralab.shape] global MoS pool: d_in=", t.in, " / d_out=", t.out, " of ",
                    t.name, " are not multiples of the shard lengths ", c_a, " / ", c_b);
      geo.push_back({t.in / c_a, t.out / c_b});
    }
  }

  // Pool groups: one per type, or one for all. Rows: public part first, then private segments
  // per (type, block) in type order.
  struct Group {
    std::vector<int> members;  // indices into types
    int pool_a = 0;
    std::int64_t pub_a = 0, pub_b = 0;
  };
  std::vector<Group> groups;
  if (cfg.global_pool) {
    groups.push_back({});
    for (std::size_t k = 0; k < types.size(); ++k) groups[0].members.push_back(int(k));
  } else {
    for (std::size_t k = 0; k < types.size(); ++k) groups.push_back({{int(k)}});
  }
  for (Group& g : groups) {
    std::int64_t rows_a = 0, rows_b = 0;
    double bound = 1e300;
    std::int64_t row_a = 0, row_b = 0;
    for (int k : g.members) {
      g.pub_a += std::int64_t(e - p) * layers * geo[k].la;
      g.pub_b += std::int64_t(e - p) * layers * geo[k].lb;
      rows_a += std::int64_t(e) * layers * geo[k].la;
      rows_b += std::int64_t(e) * layers * geo[k].lb;
      bound = std::min(bound, 1.0 / std::sqrt(double(types[k].in)));
      row_a = types[k].in / geo[k].la;
      row_b = types[k].out / geo[k].lb;
    }
    const std::string name = cfg.global_pool ? "all" : types[g.members[0]].name;
    g.pool_a = int(plan.pools.size());
    plan.pools.push_back({"A." + name, Side::a, rows_a, row_a, bound});
    plan.pools.push_back({"B." + name, Side::b, rows_b, row_b, 0.0});
    std::int64_t priv_a = g.pub_a, priv_b = g.pub_b;  // next private segment
    for (int k : g.members) {
      const TypeShape& t = types[k];
      const std::int64_t la = geo[k].la, lb = geo[k].lb;
      const std::int64_t need_a = std::int64_t(r - p) * la, need_b = std::int64_t(r - p) * lb;
      LORALAB_CHECK(need_a <= g.pub_a && need_b <= g.pub_b,
                    "[loralab.config] MoS: too few public shards for ", t.name,
                    ": each block needs (r-p)*l = ", need_a, " of the (e-p)*L*l = ", g.pub_a,
                    " public shards (r=", r, ", e=", e, ", p=", p, ", l=", la, ", L=", layers,
                    "); raise e or lower r");
      if (!sc.pair_dissociation)
        LORALAB_CHECK(la == lb && g.pub_a == g.pub_b,
                      "[loralab.config] MoS without pair dissociation needs the same shard count "
                      "for A and B; ",
                      t.name, " has ", la, " and ", lb, " (use per-type pools)");
      auto draw = [&](Side side, int block, std::int64_t pub, std::int64_t per_vec) {
        const std::uint64_t stream =
            draw_stream(side, t.type, sc.subset_selection ? block : 0xFFFF);
        if (sc.vector_sharding) return first_of_permutation(pub, (r - p) * per_vec, seed, stream);
        LORALAB_CHECK(pub % per_vec == 0, "[loralab.config] MoS without vector sharding: ", pub,
                      " public shards of the global pool do not form whole vectors of ", per_vec,
                      " shards for ", t.name, " (use per-type pools)");
        const auto vecs = first_of_permutation(pub / per_vec, r - p, seed, stream);
        std::vector<std::int32_t> out;
        for (std::int32_t v : vecs)
          for (std::int64_t s = 0; s < per_vec; ++s) out.push_back(std::int32_t(v * per_vec + s));
        return out;
      };
      for (int i = 0; i < layers; ++i) {
        Table& tab = plan.tables[std::size_t(i) * plan.types_per_block + t.type];
        tab = Table{t.type, i, g.pool_a, g.pool_a + 1, int(la), int(lb), t.in, t.out, {}, {}};
        tab.a = draw(Side::a, i, g.pub_a, la);
        tab.b = sc.pair_dissociation ? draw(Side::b, i, g.pub_b, lb) : tab.a;
        for (std::int64_t s = 0; s < std::int64_t(p) * la; ++s)
          tab.a.push_back(std::int32_t(priv_a + s));
        for (std::int64_t s = 0; s < std::int64_t(p) * lb; ++s)
          tab.b.push_back(std::int32_t(priv_b + s));
        priv_a += std::int64_t(p) * la;
        priv_b += std::int64_t(p) * lb;
      }
    }
  }
  return plan;
}

}  // namespace plan_detail

/// \ingroup share
/// \brief Builds the pools and index tables of `scheme` for `layers` blocks, each carrying an
/// adapter of rank `rank` on every type of `types`; tables are a pure function of `seed`.
/// \param scheme the scheme and its strategy switches (SharePolicy::scheme)
/// \param cfg the sizes (MoS e, p, l, global pool; PRoLoRA u, m, n)
/// \param rank r, the rank of every assembled factor
/// \param layers the number of blocks
/// \param types_per_block the number of module slots per block (tables are indexed
/// block * types_per_block + type)
/// \param types the projection types that carry adapters, with their d_in and d_out
/// \param seed the seed the MoS index tables are drawn from
/// \throws Error naming the values on shapes that do not divide, p > e, p > r, too few public
/// shards, or a scheme without pools (private factors).
inline ShardPlan make_shard_plan(const ShareScheme& scheme, const ShareConfig& cfg, int rank,
                                 int layers, int types_per_block, std::span<const TypeShape> types,
                                 std::uint64_t seed) {
  LORALAB_CHECK(scheme.kind != ShareKind::private_factors,
                "[loralab.config] private factors have no shard plan");
  LORALAB_CHECK(rank >= 1 && layers >= 1 && !types.empty(),
                "[loralab.config] a shard plan needs rank >= 1, layers >= 1 and a targeted module; "
                "got rank ",
                rank, ", layers ", layers, ", ", types.size(), " types");
  LORALAB_CHECK(layers < 0xFFFF, "[loralab.config] at most 65534 blocks, got ", layers);
  for (const TypeShape& t : types)
    LORALAB_CHECK(rank <= std::min(t.in, t.out), "[loralab.shape] rank ", rank,
                  " exceeds min(in=", t.in, ", out=", t.out, ") of ", t.name);
  LORALAB_CHECK(!cfg.global_pool || scheme.kind == ShareKind::mixture_of_shards,
                "[loralab.config] global_pool applies to MixtureOfShards only");
  ShardPlan plan;
  plan.scheme = scheme;
  plan.rank = rank;
  plan.budget_rank = rank;
  plan.types_per_block = types_per_block;
  plan.tables.resize(std::size_t(layers) * types_per_block);
  switch (scheme.kind) {
    case ShareKind::pure:
      plan = plan_detail::pure_plan(std::move(plan), layers, types);
      break;
    case ShareKind::prolora:
      plan = plan_detail::prolora_plan(std::move(plan), cfg, layers, types);
      break;
    default:
      plan = plan_detail::mos_plan(std::move(plan), cfg, layers, types, seed);
  }
  plan_detail::build_uses(plan);
  return plan;
}

/// \ingroup share
/// \brief Initial values of pool k: A-pools uniform in [-bound, bound] from the seed, B-pools 0.
template <class T>
void fill_initial_pool(const ShardPlan& plan, int k, std::uint64_t seed, std::span<T> values) {
  const Pool& pool = plan.pools.at(k);
  LORALAB_CHECK(std::int64_t(values.size()) == pool.size(), "[loralab.shape] pool ", pool.name,
                " has ", pool.size(), " entries, got a buffer of ", values.size());
  if (pool.side == Side::b) {
    std::fill(values.begin(), values.end(), T(0));
    return;
  }
  const std::uint64_t stream = make_stream(RngPurpose::share_pool, std::uint32_t(k), 0);
  for (std::size_t i = 0; i < values.size(); ++i)
    values[i] = uniform_element<T>(seed, stream, i, -pool.init_bound, pool.init_bound);
}

/// \ingroup share
/// \brief Gathers module `m`'s factors from the pools: A [rank x in] and B [out x rank], both
/// row-major (methods.md 3.4).
template <class T>
void assemble_factors(const ShardPlan& plan, int m, std::span<const T> pool_a,
                      std::span<const T> pool_b, T* A, T* B) {
  const Table& t = plan.tables.at(m);
  const std::int64_t r = plan.rank;
  const std::int64_t ca = plan.pools[t.pool_a].row_length, cb = plan.pools[t.pool_b].row_length;
  for (std::int64_t j = 0; j < r; ++j)
    for (std::int64_t s = 0; s < t.shards_a; ++s) {
      const T* src = pool_a.data() + std::int64_t(t.a[j * t.shards_a + s]) * ca;
      std::copy(src, src + ca, A + j * t.in + s * ca);
    }
  for (std::int64_t j = 0; j < r; ++j)
    for (std::int64_t s = 0; s < t.shards_b; ++s) {
      const T* src = pool_b.data() + std::int64_t(t.b[j * t.shards_b + s]) * cb;
      for (std::int64_t q = 0; q < cb; ++q) B[(s * cb + q) * r + j] = src[q];
    }
}

/// \ingroup share
/// \brief Adds into `grad` (pool k's gradient) the gradient of every use of each pool row, in
/// the plan's fixed order (methods.md 3.5). `factor_grad(m)` returns module m's dA [rank x in]
/// for an A-pool, or dB [out x rank] for a B-pool.
template <class T>
void scatter_pool_grad(const ShardPlan& plan, int k, std::span<T> grad,
                       const std::function<const T*(int module)>& factor_grad) {
  const Pool& pool = plan.pools.at(k);
  const std::int64_t c = pool.row_length, r = plan.rank;
  const auto& off = plan.use_offsets[k];
  const auto& uses = plan.uses[k];
  for (std::int64_t row = 0; row < pool.rows; ++row) {
    T* g = grad.data() + row * c;
    for (std::int64_t u = off[row]; u < off[row + 1]; ++u) {
      const Table& t = plan.tables[uses[u].module];
      const T* d = factor_grad(uses[u].module);
      if (pool.side == Side::a) {
        const std::int64_t j = uses[u].slot / t.shards_a, s = uses[u].slot % t.shards_a;
        const T* src = d + j * t.in + s * c;
        for (std::int64_t q = 0; q < c; ++q) g[q] += src[q];
      } else {
        const std::int64_t j = uses[u].slot / t.shards_b, s = uses[u].slot % t.shards_b;
        for (std::int64_t q = 0; q < c; ++q) g[q] += d[(s * c + q) * r + j];
      }
    }
  }
}

}  // namespace loralab::share
