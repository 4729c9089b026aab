// Tests for loralab/io/shard_pools.hpp: the compact format of sharing models (pools, index
// tables, scheme metadata) round-trips bit for bit for every scheme; tampered tables, another
// seed, another scheme or other sizes are refused with an error naming the problem, and a failed
// load leaves the model untouched.
#include "loralab/io/shard_pools.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/cpu/adamw.hpp"
#include "loralab/io/peft_lora.hpp"
#include "loralab/model/gpt.hpp"
#include "support/temp_dir.hpp"
#include "support/testing.hpp"

namespace {

namespace fs = std::filesystem;
using loralab::Adapter;
using loralab::DynamicRank;
using loralab::MixtureOfShards;
using loralab::Pass;
using loralab::Prolora;
using loralab::PureSharing;
using loralab::io::DType;
using loralab::io::SafetensorsFile;
using loralab::io::SafetensorsWriter;
using loralab::model::Gpt;
using loralab::model::GptConfig;
using loralab::model::GptOptions;
using loralab::model::GptWeights;
using loralab::testing::error_of;
using loralab::testing::TempDir;

using Mos = Adapter<DynamicRank, MixtureOfShards<>>;

/// Checks that `expr` throws a loralab::Error starting with `prefix` and containing every word.
#define CHECK_ERROR(expr, prefix, ...)                                            \
  do {                                                                            \
    const std::string msg_ = error_of([&] { (void)(expr); });                     \
    INFO("message: " << msg_);                                                    \
    CHECK(msg_.rfind(std::string(prefix), 0) == 0);                               \
    for (const std::string& w_ : std::initializer_list<std::string>{__VA_ARGS__}) \
      CHECK(msg_.find(w_) != std::string::npos);                                  \
  } while (false)

GptConfig tiny() {
  GptConfig c;
  c.vocab_size = 11;
  c.context = 6;
  c.layers = 3;
  c.heads = 2;
  c.d_model = 8;
  return c;
}

struct Data {
  std::vector<std::int32_t> tokens, targets;
  int batch = 2, seq = 5;
  Data() {
    for (int i = 0; i < batch * seq; ++i) {
      tokens.push_back((i * 7 + 3) % 11);
      targets.push_back(i % 4 == 1 ? -1 : (i * 5 + 1) % 11);
    }
  }
};

// r=4; MoS e=2, p=1, l=2; PRoLoRA u=1, m=n=2.
GptOptions share_options(std::uint64_t seed = loralab::testing::kSeed, int e = 2) {
  GptOptions o;
  o.adapter.rank = 4;
  o.adapter.alpha = 3;
  o.adapter.seed = seed;
  o.adapter.share.budget_rank = e;
  o.adapter.share.private_rank = 1;
  o.adapter.share.shards = 2;
  o.adapter.share.unshared_rank = 1;
  return o;
}

/// Non-zero pools (B starts at 0) plus two AdamW steps, so the pools are "trained" values and the
/// adapters' assembled copies lag one step behind.
template <class Spec, class T>
void train_a_little(Gpt<Spec, T>& m) {
  const auto* plan = m.shard_plan();
  REQUIRE(plan);
  for (std::size_t k = 0; k < plan->pools.size(); ++k) {
    auto v = m.pool_values(int(k));
    for (std::size_t i = 0; i < v.size(); ++i)
      v[i] = T(0.3 * std::sin(0.7 * double(i) + 1.3 * double(k) + 0.1));
  }
  loralab::cpu::AdamW<T> opt(m.parameters(), {.lr = 1e-2});
  const Data d;
  for (int step = 0; step < 2; ++step) {
    m.zero_grad();
    m.forward(d.tokens, d.targets, d.batch, d.seq, Pass{true, std::uint64_t(step)});
    m.backward();
    opt.step();
  }
}

template <class SpecA, class SpecB, class T>
bool same_pools(Gpt<SpecA, T>& a, Gpt<SpecB, T>& b) {
  const auto* pa = a.shard_plan();
  const auto* pb = b.shard_plan();
  if (!pa || !pb || pa->pools.size() != pb->pools.size()) return false;
  for (std::size_t k = 0; k < pa->pools.size(); ++k) {
    const auto x = a.pool_values(int(k)), y = b.pool_values(int(k));
    if (x.size() != y.size() || std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) != 0)
      return false;
  }
  return true;
}

template <class Spec, class T>
loralab::cpu::MatrixR<T> logits(Gpt<Spec, T>& m) {
  const Data d;
  return m.forward_logits(d.tokens, d.batch, d.seq, Pass{false});
}

/// Rewrites a safetensors file after `edit(name, shape, values)` on every tensor (dtypes kept).
template <class Edit>
void rewrite(const fs::path& path, Edit edit) {
  const SafetensorsFile f = SafetensorsFile::load(path);
  SafetensorsWriter w;
  for (const std::string& n : f.names()) {
    const DType dt = f.info(n).dtype;
    std::vector<double> v;
    if (dt == DType::I64) {
      const std::vector<std::int64_t> iv = f.read<std::int64_t>(n);
      v.assign(iv.begin(), iv.end());
    } else {
      v = f.read<double>(n);
    }
    std::vector<std::int64_t> shape = f.info(n).shape;
    if (!edit(n, shape, v)) continue;  // false drops the tensor
    if (dt == DType::I64)
      w.add<std::int64_t>(n, shape, std::vector<std::int64_t>(v.begin(), v.end()));
    else
      w.add<double>(n, shape, v, dt);
  }
  for (const auto& [k, val] : f.metadata()) w.set_metadata(k, val);
  w.write(path);
}

template <class Spec, class T>
void check_round_trip(GptOptions opts, std::size_t expected_pools) {
  GptWeights<T> w(tiny());
  w.init_gpt2(loralab::testing::kSeed);
  Gpt<Spec, T> src(w, opts);
  train_a_little(src);
  REQUIRE(src.shard_plan()->pools.size() == expected_pools);
  TempDir dir;
  const fs::path file = dir.path / "pools.safetensors";
  loralab::io::save_shard_pools(src, file);

  Gpt<Spec, T> dst(w, opts);
  REQUIRE_FALSE(same_pools(src, dst));
  loralab::io::load_shard_pools(dst, file);
  CHECK(same_pools(src, dst));
  const loralab::cpu::MatrixR<T> want = logits(src);
  CHECK(logits(dst) == want);  // bitwise
  for (std::size_t k = 0; k < expected_pools; ++k)
    for (const T g : dst.pool_grad(int(k))) REQUIRE(g == T(0));

  const SafetensorsFile f = SafetensorsFile::load(file);
  const auto& plan = *src.shard_plan();
  CHECK(f.metadata().at("magic") == "loralab-shard-pools");
  CHECK(f.metadata().at("version") == "1");
  CHECK(f.metadata().at("rank") == "4");
  CHECK(f.metadata().at("seed") == std::to_string(opts.adapter.seed));
  CHECK(f.metadata().at("model_config") == w.config().to_string());
  CHECK(f.names().size() == expected_pools + 2 * 3 * 4);  // pools + A/B tables of 3 x 4 modules
  for (const auto& p : plan.pools) {
    CHECK(f.info(p.name).dtype == loralab::io::dtype_of<T>);
    CHECK(f.info(p.name).shape == std::vector<std::int64_t>{p.rows, p.row_length});
  }
  const auto& t = plan.table(2, 1);
  const std::string tk = "tables.h.2.attn.c_proj.B";
  CHECK(f.info(tk).dtype == DType::I64);
  CHECK(f.info(tk).shape == std::vector<std::int64_t>{4, t.shards_b});
  const std::vector<std::int64_t> tb = f.read<std::int64_t>(tk);
  CHECK(std::equal(tb.begin(), tb.end(), t.b.begin(), t.b.end()));
}

}  // namespace

TEST_SUITE("io.shard_pools") {
  TEST_CASE("the compact format round-trips bit for bit (pools, then the same logits)") {
    SUBCASE("MoS, per-type pools, float") {
      check_round_trip<Mos, float>(share_options(), 8);
    }
    SUBCASE("MoS, per-type pools, double") {
      check_round_trip<Mos, double>(share_options(), 8);
    }
    SUBCASE("MoS, one global pool") {
      GptOptions o = share_options();
      o.adapter.share.global_pool = true;
      check_round_trip<Mos, float>(o, 2);
    }
    SUBCASE("MoS without pair dissociation and subset selection") {
      check_round_trip<Adapter<DynamicRank, MixtureOfShards<false, false>>, float>(share_options(),
                                                                                   8);
    }
    SUBCASE("pure sharing") {
      check_round_trip<Adapter<DynamicRank, PureSharing>, float>(share_options(), 8);
    }
    SUBCASE("PRoLoRA") {
      check_round_trip<Adapter<DynamicRank, Prolora<>>, float>(share_options(), 8);
    }
  }

  TEST_CASE("the metadata records the scheme, its switches and sizes") {
    GptWeights<float> w(tiny());
    w.init_gpt2(loralab::testing::kSeed);
    Gpt<Adapter<DynamicRank, MixtureOfShards<true, false>>, float> m(w, share_options(5));
    TempDir dir;
    loralab::io::save_shard_pools(m, dir.path / "p.safetensors");
    const auto meta = SafetensorsFile::load(dir.path / "p.safetensors").metadata();
    CHECK(meta.at("scheme") == "mixture_of_shards");
    CHECK(meta.at("subset_selection") == "true");
    CHECK(meta.at("pair_dissociation") == "false");
    CHECK(meta.at("budget_rank") == "2");
    CHECK(meta.at("private_rank") == "1");
    CHECK(meta.at("shards") == "2");
    CHECK(meta.at("global_pool") == "false");
    CHECK(meta.at("unshared_rank") == "1");
    CHECK(meta.at("a_multiple") == "2");
    CHECK(meta.at("layers") == "3");
    CHECK(meta.at("alpha") == "3");
    CHECK(meta.at("scaling") == "AlphaOverRank");
    CHECK(meta.at("dtype") == "F32");
    CHECK(meta.at("target_modules") == "{attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj}");
  }

  TEST_CASE("a file that does not match the model is refused, naming the problem") {
    GptWeights<float> w(tiny());
    w.init_gpt2(loralab::testing::kSeed);
    Gpt<Mos, float> src(w, share_options(1));
    train_a_little(src);
    TempDir dir;
    const fs::path file = dir.path / "pools.safetensors";
    loralab::io::save_shard_pools(src, file);
    const std::string where = "[loralab.io] " + file.string() + ":";

    Gpt<Mos, float> dst(w, share_options(1));
    const std::vector<float> before(dst.pool_values(0).begin(), dst.pool_values(0).end());

    SUBCASE("a tampered index table names the module and the entry") {
      rewrite(file, [](const std::string& n, auto&, auto& v) {
        if (n == "tables.h.1.mlp.c_fc.A") v[3] = v[3] == 0 ? 1 : 0;
        return true;
      });
      CHECK_ERROR(loralab::io::load_shard_pools(dst, file), where,
                  "index table of h.1.mlp.c_fc (A)", "differs from the model's plan at [1][1]",
                  "seed");
    }
    SUBCASE("another seed: the first module's table differs, both seeds named") {
      Gpt<Mos, float> other(w, share_options(2));
      CHECK_ERROR(loralab::io::load_shard_pools(other, file), where,
                  "index table of h.0.attn.c_attn (A)", "saved with seed 1",
                  "the model's seed is 2");
    }
    SUBCASE("another scheme") {
      Gpt<Adapter<DynamicRank, Prolora<>>, float> pro(w, share_options(1));
      CHECK_ERROR(loralab::io::load_shard_pools(pro, file), where,
                  "scheme mismatch: mixture_of_shards in the file", "scheme=prolora");
      Gpt<Adapter<DynamicRank, PureSharing>, float> pure(w, share_options(1));
      CHECK_ERROR(loralab::io::load_shard_pools(pure, file), where, "scheme mismatch",
                  "scheme=pure");
    }
    SUBCASE("another strategy switch") {
      Gpt<Adapter<DynamicRank, MixtureOfShards<true, false>>, float> nd(w, share_options(1));
      CHECK_ERROR(loralab::io::load_shard_pools(nd, file), where,
                  "pair_dissociation mismatch: true in the file", "pair_dissociation=false");
    }
    SUBCASE("other sizes") {
      Gpt<Mos, float> e3(w, share_options(1, 3));
      CHECK_ERROR(loralab::io::load_shard_pools(e3, file), where,
                  "budget_rank mismatch: 2 in the file", "budget_rank=3");
      GptOptions o = share_options(1);
      o.adapter.alpha = 4;
      Gpt<Mos, float> a4(w, o);
      CHECK_ERROR(loralab::io::load_shard_pools(a4, file), where, "alpha mismatch");
      GptOptions t = share_options(1);
      t.targets = loralab::model::ModuleSet::parse("attn.c_attn");
      Gpt<Mos, float> qkv_only(w, t);
      CHECK_ERROR(loralab::io::load_shard_pools(qkv_only, file), where, "target_modules mismatch");
    }
    SUBCASE("a missing, mis-shaped or unexpected tensor") {
      rewrite(file, [](const std::string& n, auto& shape, auto& v) {
        if (n == "B.mlp.c_proj") {
          shape[0] -= 1;
          v.resize(std::size_t(shape[0] * shape[1]));
        }
        return true;
      });
      CHECK_ERROR(loralab::io::load_shard_pools(dst, file), where, "'B.mlp.c_proj'");
      loralab::io::save_shard_pools(src, file);
      rewrite(file, [](const std::string& n, auto&, auto&) { return n != "A.mlp.c_fc"; });
      CHECK_ERROR(loralab::io::load_shard_pools(dst, file), where, "missing pool 'A.mlp.c_fc'");
      loralab::io::save_shard_pools(src, file);
      rewrite(file,
              [](const std::string& n, auto&, auto&) { return n != "tables.h.2.mlp.c_proj.B"; });
      CHECK_ERROR(loralab::io::load_shard_pools(dst, file), where,
                  "missing index table 'tables.h.2.mlp.c_proj.B'");
      loralab::io::save_shard_pools(src, file);
      {
        const SafetensorsFile f = SafetensorsFile::load(file);
        SafetensorsWriter wr;
        for (const auto& n : f.names()) wr.add_raw(n, f.info(n).dtype, f.info(n).shape, f.raw(n));
        for (const auto& [k, val] : f.metadata()) wr.set_metadata(k, val);
        wr.add<float>("A.lm_head", {1, 2}, std::vector<float>{0.f, 1.f});
        wr.write(file);
      }
      CHECK_ERROR(loralab::io::load_shard_pools(dst, file), where, "unexpected tensor(s)",
                  "'A.lm_head'");
    }
    SUBCASE("not a shard-pool file, or another version") {
      {
        const SafetensorsFile f = SafetensorsFile::load(file);
        SafetensorsWriter wr;
        for (const auto& n : f.names()) wr.add_raw(n, f.info(n).dtype, f.info(n).shape, f.raw(n));
        for (const auto& [k, val] : f.metadata()) wr.set_metadata(k, val);
        wr.set_metadata("version", "7");
        wr.write(file);
      }
      CHECK_ERROR(loralab::io::load_shard_pools(dst, file), where, "format version 7");
      SafetensorsWriter wr;
      wr.add<float>("x", {1}, std::vector<float>{1.f});
      wr.write(file);
      CHECK_ERROR(loralab::io::load_shard_pools(dst, file), where, "not a loralab shard-pool file");
    }
    // A failed load leaves the model untouched.
    CHECK(std::equal(before.begin(), before.end(), dst.pool_values(0).begin()));
  }

  TEST_CASE("a model without shard pools is refused") {
    GptWeights<float> w(tiny());
    w.init_gpt2(loralab::testing::kSeed);
    Gpt<Adapter<DynamicRank>, float> lora(w, share_options());
    TempDir dir;
    CHECK_ERROR(loralab::io::save_shard_pools(lora, dir.path / "x.safetensors"),
                "[loralab.state] save_shard_pools", "no shard pools", "export_peft_lora");
    CHECK_ERROR(loralab::io::load_shard_pools(lora, dir.path / "x.safetensors"),
                "[loralab.state] load_shard_pools", "no shard pools");
  }
}
