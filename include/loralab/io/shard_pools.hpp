/// \file
/// \brief The compact format of a sharing model (MoS, pure sharing, PRoLoRA): one safetensors
/// file with the trainable pools, the index tables that route pool rows to modules, and the
/// scheme as metadata. `save_shard_pools` writes it, `load_shard_pools` checks it against the
/// model and restores the pools bit for bit (methods.md 3.7).
///
/// **Tensors.** Every pool of `model::Gpt::shard_plan()` under its plan name (e.g.
/// `A.attn.c_attn`, `B.mlp.c_proj`, or `A.all` / `B.all` for a global MoS pool) as
/// [rows x row_length] in T's dtype (F32 for float models, F64 for double, so a round trip is
/// exact); then, for every adapted module, `tables.h.{l}.{module}.A` [r x shards_a] and
/// `tables.h.{l}.{module}.B` [r x shards_b] as I64 (module = attn.c_attn, attn.c_proj, mlp.c_fc,
/// mlp.c_proj): shard s of row j of A_l is pool row `A[j][s]` of the module's A-pool, shard s of
/// column j of B_l is pool row `B[j][s]` of its B-pool (share::Table).
///
/// **Metadata.** magic "loralab-shard-pools", version "1", scheme (pure, mixture_of_shards,
/// prolora) and its switches (subset_selection, pair_dissociation, vector_sharding,
/// shard_privatization, rotation; "true"/"false"), rank r, budget_rank e, private_rank p and shards
/// l as resolved by the plan, global_pool, PRoLoRA unshared_rank u, a_multiple m, b_multiple n,
/// seed, layers, target_modules, alpha, scaling, dtype, and model_config (GptConfig::to_string(),
/// informational).
///
/// The tables are a pure function of the scheme, the sizes and the seed, so they are not needed to
/// rebuild the model; they are stored so that a file can be read without loralab and so that a
/// load can prove the model routes the pools exactly as the model that saved them (another seed or
/// another version of the index construction would silently produce a different function).
///
/// To serve a sharing model elsewhere, export its assembled factors with io::export_peft_lora()
/// instead: at inference MoS is a plain LoRA of rank r.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/core/error.hpp"
#include "loralab/io/peft_lora.hpp"
#include "loralab/io/safetensors.hpp"
#include "loralab/model/gpt.hpp"
#include "loralab/model/modules.hpp"
#include "loralab/policy/share.hpp"
#include "loralab/share/shard_plan.hpp"

namespace loralab::io {

/// \ingroup io
/// \brief The `magic` metadata value of the compact format.
inline constexpr const char* kShardPoolsMagic = "loralab-shard-pools";
/// \ingroup io
/// \brief The format version this loralab writes and reads.
inline constexpr const char* kShardPoolsVersion = "1";

/// \ingroup io
/// \brief The metadata spelling of a sharing scheme: "private_factors", "pure",
/// "mixture_of_shards" or "prolora".
constexpr std::string_view share_kind_name(ShareKind kind) {
  switch (kind) {
    case ShareKind::private_factors:
      return "private_factors";
    case ShareKind::pure:
      return "pure";
    case ShareKind::mixture_of_shards:
      return "mixture_of_shards";
    case ShareKind::prolora:
      return "prolora";
  }
  return "?";
}

/// \ingroup io
/// \brief The name of a module's index table in the compact format, e.g.
/// `tables.h.1.attn.c_attn.A` (`side` A or B).
inline std::string shard_table_key(int layer, model::Module m, share::Side side) {
  return "tables.h." + std::to_string(layer) + "." + model::module_name(m) +
         (side == share::Side::a ? ".A" : ".B");
}

namespace detail {

inline const char* bool_text(bool b) {
  return b ? "true" : "false";
}

/// The shortest text that reads back as `x` (std::to_chars), independent of locale.
inline std::string exact_number(double x) {
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof buf, x);
  return res.ec == std::errc() ? std::string(buf, res.ptr) : std::string("?");
}

/// The metadata that must agree between a file and a model, in check order: (key, value, what
/// the value means in an error). Only the sizes the scheme uses are listed.
template <AdapterSpec Spec, class T>
std::vector<std::pair<std::string, std::string>> shard_pools_identity(model::Gpt<Spec, T>& gpt) {
  const share::ShardPlan& plan = *gpt.shard_plan();
  const ShareConfig& sc = gpt.options().adapter.share;
  const ShareScheme& s = plan.scheme;
  std::vector<std::pair<std::string, std::string>> out;
  out.emplace_back("scheme", std::string(share_kind_name(s.kind)));
  if (s.kind == ShareKind::mixture_of_shards) {
    out.emplace_back("subset_selection", bool_text(s.subset_selection));
    out.emplace_back("pair_dissociation", bool_text(s.pair_dissociation));
    out.emplace_back("vector_sharding", bool_text(s.vector_sharding));
    out.emplace_back("shard_privatization", bool_text(s.shard_privatization));
  }
  if (s.kind == ShareKind::prolora) out.emplace_back("rotation", bool_text(s.rotation));
  out.emplace_back("rank", std::to_string(plan.rank));
  if (s.kind == ShareKind::mixture_of_shards) {
    out.emplace_back("budget_rank", std::to_string(plan.budget_rank));
    out.emplace_back("private_rank", std::to_string(plan.private_rank));
    out.emplace_back("shards", std::to_string(plan.shards));
    out.emplace_back("global_pool", bool_text(sc.global_pool));
  }
  if (s.kind == ShareKind::prolora) {
    out.emplace_back("unshared_rank", std::to_string(sc.unshared_rank));
    out.emplace_back("a_multiple", std::to_string(sc.a_multiple));
    out.emplace_back("b_multiple", std::to_string(sc.b_multiple));
  }
  out.emplace_back("layers", std::to_string(gpt.config().layers));
  out.emplace_back("target_modules", module_set_string(gpt.options().targets));
  out.emplace_back("alpha", exact_number(gpt.options().adapter.alpha));
  out.emplace_back("scaling", std::is_same_v<typename Spec::scaling, RsLoraScale>
                                  ? "RsLoraScale"
                                  : "AlphaOverRank");
  return out;
}

template <AdapterSpec Spec, class T>
const share::ShardPlan& plan_of(model::Gpt<Spec, T>& gpt, const char* fn) {
  LORALAB_CHECK(gpt.shard_plan() != nullptr, "[loralab.state] ", fn,
                ": the model has no shard pools (its adapter type has private factors, or it is in "
                "full fine-tuning mode); use export_peft_lora / import_peft_lora for plain LoRA");
  return *gpt.shard_plan();
}

}  // namespace detail

/// \ingroup io
/// \brief Writes the pools, index tables and scheme of a sharing model to one safetensors file
/// at `path` (atomically; see the file comment for the layout). The model is not modified
/// (non-const only because Gpt::pool_values is).
/// \throws Error `[loralab.state]` when the model has no shard pools (private factors or full
/// mode), `[loralab.io]` naming the file when writing fails.
template <AdapterSpec Spec, class T>
void save_shard_pools(model::Gpt<Spec, T>& gpt, const std::filesystem::path& path) {
  const share::ShardPlan& plan = detail::plan_of(gpt, "save_shard_pools");
  SafetensorsWriter w;
  for (std::size_t k = 0; k < plan.pools.size(); ++k) {
    const share::Pool& p = plan.pools[k];
    const auto v = gpt.pool_values(int(k));
    w.add<T>(p.name, {p.rows, p.row_length}, std::span<const T>(v.data(), v.size()));
  }
  std::vector<std::int64_t> idx;
  for (const share::Table& t : plan.tables) {
    if (!t.active()) continue;
    const auto m = static_cast<model::Module>(t.type);
    idx.assign(t.a.begin(), t.a.end());
    w.add<std::int64_t>(shard_table_key(t.block, m, share::Side::a), {plan.rank, t.shards_a}, idx);
    idx.assign(t.b.begin(), t.b.end());
    w.add<std::int64_t>(shard_table_key(t.block, m, share::Side::b), {plan.rank, t.shards_b}, idx);
  }
  w.set_metadata("magic", kShardPoolsMagic);
  w.set_metadata("version", kShardPoolsVersion);
  for (auto& [key, value] : detail::shard_pools_identity(gpt)) w.set_metadata(key, value);
  // Every size is written, also those the scheme ignores, so a reader sees the whole config.
  const ShareConfig& sc = gpt.options().adapter.share;
  const ShareScheme& s = plan.scheme;
  const std::pair<const char*, bool> switches[] = {{"subset_selection", s.subset_selection},
                                                   {"pair_dissociation", s.pair_dissociation},
                                                   {"vector_sharding", s.vector_sharding},
                                                   {"shard_privatization", s.shard_privatization},
                                                   {"rotation", s.rotation},
                                                   {"global_pool", sc.global_pool}};
  for (const auto& [key, on] : switches) w.set_metadata(key, detail::bool_text(on));
  w.set_metadata("budget_rank", std::to_string(plan.budget_rank));
  w.set_metadata("private_rank", std::to_string(plan.private_rank));
  w.set_metadata("shards", std::to_string(plan.shards));
  w.set_metadata("unshared_rank", std::to_string(sc.unshared_rank));
  w.set_metadata("a_multiple", std::to_string(sc.a_multiple));
  w.set_metadata("b_multiple", std::to_string(sc.b_multiple));
  w.set_metadata("seed", std::to_string(gpt.options().adapter.seed));
  w.set_metadata("dtype", std::string(dtype_name(dtype_of<T>)));
  w.set_metadata("model_config", gpt.config().to_string());
  w.set_metadata("tables",
                 "shard s of row j of A is pool row tables.A[j][s] of the A-pool; "
                 "shard s of column j of B is pool row tables.B[j][s] of the B-pool");
  w.write(path);
}

/// \ingroup io
/// \brief Loads a file written by save_shard_pools() into a sharing model built with the same
/// adapter type and options: checks the scheme and sizes, the pool shapes, and that the file's
/// index tables equal the model's plan, then copies every pool, re-assembles the adapters'
/// factors (Gpt::sync_shared_factors) and zeroes the gradients. The model is untouched when a
/// check fails. Pools stored in another float dtype are converted (a same-dtype load is exact).
/// \throws Error `[loralab.io] <file>: ...` when the file is not a loralab shard-pool file or has
/// another version; naming both values on a scheme, switch, size, layer-count, target, alpha or
/// scaling mismatch; naming the tensor when a pool or table is missing, mis-shaped or unexpected;
/// naming the first module (h.{l}.{module}, A or B) whose table differs from the model's plan, with
/// both seeds (tables are drawn from the seed: another seed or another loralab version).
/// `[loralab.state]` when the model has no shard pools.
template <AdapterSpec Spec, class T>
void load_shard_pools(model::Gpt<Spec, T>& gpt, const std::filesystem::path& path) {
  const share::ShardPlan& plan = detail::plan_of(gpt, "load_shard_pools");
  const SafetensorsFile f = SafetensorsFile::load(path);
  const std::string& src = f.source();
  const auto& meta = f.metadata();
  auto meta_of = [&](const std::string& key) -> std::string {
    const auto it = meta.find(key);
    return it == meta.end() ? std::string("<missing>") : it->second;
  };
  LORALAB_CHECK(meta_of("magic") == kShardPoolsMagic, "[loralab.io] ", src,
                ": not a loralab shard-pool file (metadata magic is ", meta_of("magic"),
                ", expected \"", kShardPoolsMagic, "\")");
  LORALAB_CHECK(meta_of("version") == kShardPoolsVersion, "[loralab.io] ", src,
                ": shard-pool format version ", meta_of("version"), ", this loralab reads version ",
                kShardPoolsVersion);
  for (const auto& [key, want] : detail::shard_pools_identity(gpt))
    LORALAB_CHECK(meta_of(key) == want, "[loralab.io] ", src, ": ", key,
                  " mismatch: ", meta_of(key), " in the file, but the model has ", key, "=", want,
                  key == "scheme" ? " (the model's adapter type has another sharing policy)" : "");

  std::set<std::string, std::less<>> used;
  std::vector<std::vector<T>> staged;
  for (const share::Pool& p : plan.pools) {
    LORALAB_CHECK(f.contains(p.name), "[loralab.io] ", src, ": missing pool '", p.name, "'");
    staged.push_back(f.read<T>(p.name, {p.rows, p.row_length}));
    used.insert(p.name);
  }
  const std::string seeds = "the file was saved with seed " + meta_of("seed") +
                            ", the model's seed is " + std::to_string(gpt.options().adapter.seed);
  for (const share::Table& t : plan.tables) {
    if (!t.active()) continue;
    const auto m = static_cast<model::Module>(t.type);
    for (const share::Side side : {share::Side::a, share::Side::b}) {
      const std::string key = shard_table_key(t.block, m, side);
      const std::vector<std::int32_t>& want = side == share::Side::a ? t.a : t.b;
      const std::int64_t shards = side == share::Side::a ? t.shards_a : t.shards_b;
      LORALAB_CHECK(f.contains(key), "[loralab.io] ", src, ": missing index table '", key, "'");
      const std::vector<std::int64_t> got = f.read<std::int64_t>(key, {plan.rank, shards});
      for (std::size_t i = 0; i < want.size(); ++i)
        LORALAB_CHECK(got[i] == want[i], "[loralab.io] ", src, ": index table of h.", t.block, ".",
                      model::module_name(m), " (", side == share::Side::a ? "A" : "B",
                      ") differs from the model's plan at [", i / std::size_t(shards), "][",
                      i % std::size_t(shards), "]: pool row ", got[i], " in the file, ", want[i],
                      " in the model; tables are drawn from the seed, so ", seeds,
                      " (equal seeds: another loralab version drew them)");
      used.insert(key);
    }
  }
  detail::reject_unexpected(f, used, "(a pool or module the model does not have)");

  for (std::size_t k = 0; k < staged.size(); ++k) {
    const auto v = gpt.pool_values(int(k));
    std::copy(staged[k].begin(), staged[k].end(), v.begin());
  }
  gpt.sync_shared_factors();
  gpt.zero_grad();
}

}  // namespace loralab::io
