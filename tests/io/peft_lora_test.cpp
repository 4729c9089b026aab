// Tests for loralab/io/peft_lora.hpp: adapters of a model::Gpt exported in PEFT's format and
// imported into a fresh model (A, B and LoRA-SP masks bit for bit, same loss); the exact PEFT key
// names and adapter_config.json fields; target_modules parsing; mismatches and corrupt files.
#include "loralab/io/peft_lora.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/cpu/adamw.hpp"
#include "loralab/io/hf_gpt2.hpp"
#include "loralab/model/gpt.hpp"
#include "support/temp_dir.hpp"
#include "support/testing.hpp"

namespace {

namespace fs = std::filesystem;
using loralab::Adapter;
using loralab::GaussianA;
using loralab::InputDropout;
using loralab::RandomMask;
using loralab::Rank;
using loralab::RsLoraScale;
using loralab::io::DType;
using loralab::io::SafetensorsFile;
using loralab::io::SafetensorsWriter;
using loralab::model::Gpt;
using loralab::model::GptOptions;
using loralab::model::GptWeights;
using loralab::model::Module;
using loralab::model::ModuleSet;
using Json = nlohmann::json;

using Lora2 = Adapter<Rank<2>>;
using LoraSP2 = Adapter<Rank<2>, RandomMask<50>>;

fs::path tiny_dir() {
  return fs::path(LORALAB_TEST_REFERENCE_DIR) / "gpt2_tiny";
}

using loralab::testing::TempDir;

using loralab::testing::error_of;

/// Checks that `expr` throws a loralab::Error starting with `prefix` and containing every word.
#define CHECK_ERROR(expr, prefix, ...)                                            \
  do {                                                                            \
    const std::string msg_ = error_of([&] { (void)(expr); });                     \
    INFO("message: " << msg_);                                                    \
    CHECK(msg_.rfind(std::string(prefix), 0) == 0);                               \
    for (const std::string& w_ : std::initializer_list<std::string>{__VA_ARGS__}) \
      CHECK(msg_.find(w_) != std::string::npos);                                  \
  } while (false)

GptOptions adapter_options(std::uint64_t seed, double alpha = 16, const char* targets = "all") {
  GptOptions o;
  o.targets = ModuleSet::parse(targets);
  o.adapter.alpha = alpha;
  o.adapter.seed = seed;
  return o;
}

/// Random non-zero A and B in every adapter (B is 0 after the default init).
template <class Spec, class T>
void randomize(Gpt<Spec, T>& m, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, 0.5);
  for (int l = 0; l < m.config().layers; ++l)
    for (int k = 0; k < loralab::model::kModulesPerBlock; ++k)
      if (auto* a = m.adapter(l, Module(k))) {
        for (Eigen::Index i = 0; i < a->A().size(); ++i) a->A().data()[i] = T(normal(gen));
        for (Eigen::Index i = 0; i < a->B().size(); ++i) a->B().data()[i] = T(normal(gen));
      }
}

/// A, B and mask of every adapter of `a` equal those of `b`, bit for bit.
template <class SpecA, class SpecB, class T>
void check_same_adapters(Gpt<SpecA, T>& a, Gpt<SpecB, T>& b) {
  int compared = 0;
  for (int l = 0; l < a.config().layers; ++l)
    for (int k = 0; k < loralab::model::kModulesPerBlock; ++k) {
      auto* x = a.adapter(l, Module(k));
      auto* y = b.adapter(l, Module(k));
      REQUIRE((x == nullptr) == (y == nullptr));
      if (!x) continue;
      INFO("layer " << l << " module " << loralab::model::module_name(Module(k)));
      CHECK(std::equal(x->A().data(), x->A().data() + x->A().size(), y->A().data()));
      CHECK(std::equal(x->B().data(), x->B().data() + x->B().size(), y->B().data()));
      CHECK(std::ranges::equal(x->mask(), y->mask()));
      ++compared;
    }
  CHECK(compared > 0);
}

struct Batch {
  std::vector<std::int32_t> tokens, targets;
  Batch() {
    for (int i = 0; i < 16; ++i) {
      tokens.push_back((i * 7 + 3) % 20);
      targets.push_back(i % 5 == 2 ? -1 : (i * 11 + 1) % 20);
    }
  }
};

Json read_json(const fs::path& path) {
  std::ifstream in(path);
  return Json::parse(in);
}

void write_json(const fs::path& path, const Json& j) {
  std::ofstream out(path, std::ios::binary);
  out << j.dump(2);
}

/// Rewrites a safetensors file keeping the tensors `keep` accepts, after `edit(name, shape,
/// values)`.
template <class Keep, class Edit>
void rewrite(const fs::path& path, Keep keep, Edit edit) {
  const SafetensorsFile f = SafetensorsFile::load(path);
  SafetensorsWriter w;
  for (const std::string& n : f.names()) {
    if (!keep(n)) continue;
    const bool ints = f.info(n).dtype == DType::I64;
    std::vector<double> v;
    if (ints) {
      const std::vector<std::int64_t> iv = f.read<std::int64_t>(n);
      v.assign(iv.begin(), iv.end());
    } else {
      v = f.read<double>(n);
    }
    std::vector<std::int64_t> shape = f.info(n).shape;
    edit(n, shape, v);
    if (ints) {
      std::vector<std::int64_t> iv(v.begin(), v.end());
      w.add<std::int64_t>(n, shape, iv);
    } else {
      w.add<double>(n, shape, v, f.info(n).dtype);
    }
  }
  for (const auto& [k, val] : f.metadata()) w.set_metadata(k, val);
  w.write(path);
}

std::string key(int l, const char* module, const char* factor) {
  return "base_model.model.transformer.h." + std::to_string(l) + "." + module + ".lora_" + factor +
         ".weight";
}

}  // namespace

TEST_SUITE("io.peft_lora") {
  TEST_CASE("LoRA adapters round-trip bit for bit into a fresh model, with the same loss") {
    GptWeights<double> w = loralab::io::import_hf_gpt2<double>(tiny_dir());
    Gpt<Lora2, double> src(w, adapter_options(1));
    randomize(src, loralab::testing::kSeed);
    TempDir dir;
    loralab::io::export_peft_lora(src, dir.path);
    CHECK(fs::exists(dir.path / "adapter_config.json"));
    CHECK(fs::exists(dir.path / "adapter_model.safetensors"));
    CHECK_FALSE(fs::exists(dir.path / "loralab_masks.safetensors"));  // no masks, no sidecar

    Gpt<Lora2, double> dst(w, adapter_options(2));  // another seed: other initial A
    const auto result = loralab::io::import_peft_lora(dst, dir.path);
    CHECK_FALSE(result.masks_restored);
    check_same_adapters(src, dst);

    const Batch b;
    const double l1 = src.forward(b.tokens, b.targets, 2, 8, {false, 0});
    const double l2 = dst.forward(b.tokens, b.targets, 2, 8, {false, 0});
    CHECK(l1 == l2);
  }

  TEST_CASE("LoRA-SP masks travel in the sidecar and are restored") {
    GptWeights<double> w = loralab::io::import_hf_gpt2<double>(tiny_dir());
    Gpt<LoraSP2, double> src(w, adapter_options(11));
    randomize(src, loralab::testing::kSeed + 1);
    TempDir dir;
    loralab::io::export_peft_lora(src, dir.path);
    REQUIRE(fs::exists(dir.path / "loralab_masks.safetensors"));

    Gpt<LoraSP2, double> dst(w, adapter_options(12));  // another seed: other masks
    bool differ = false;
    for (int k = 0; k < 4; ++k)
      differ = differ || !std::ranges::equal(src.adapter(1, Module(k))->mask(),
                                             dst.adapter(1, Module(k))->mask());
    REQUIRE(differ);
    const auto result = loralab::io::import_peft_lora(dst, dir.path);
    CHECK(result.masks_restored);
    check_same_adapters(src, dst);

    // The PEFT file itself stays clean; the sidecar carries the masks and how they were drawn.
    const SafetensorsFile peft = SafetensorsFile::load(dir.path / "adapter_model.safetensors");
    for (const auto& n : peft.names()) CHECK(n.ends_with(".weight"));
    const SafetensorsFile side = SafetensorsFile::load(dir.path / "loralab_masks.safetensors");
    CHECK(side.metadata().at("magic") == "loralab-masks");
    CHECK(side.metadata().at("seed") == "11");
    CHECK(side.metadata().at("frozen_percent") == "50");
    CHECK(side.metadata().at("mask_sampling") == "exact");
    CHECK(side.names().size() == peft.names().size());
    const std::string mk = "base_model.model.transformer.h.0.mlp.c_fc.lora_A.mask";
    CHECK(side.info(mk).dtype == DType::I64);
    CHECK(side.info(mk).shape == std::vector<std::int64_t>{2, 16});
    const std::vector<std::int64_t> m = side.read<std::int64_t>(mk);
    CHECK(std::count(m.begin(), m.end(), 1) == 16);  // exactly half trainable
    const auto mask_a = src.adapter(0, Module::fc)->mask_A();
    CHECK(std::equal(m.begin(), m.end(), mask_a.begin(), mask_a.end()));

    // Exporting a plain adapter into the same directory removes the stale sidecar.
    Gpt<Lora2, double> plain(w, adapter_options(3));
    loralab::io::export_peft_lora(plain, dir.path);
    CHECK_FALSE(fs::exists(dir.path / "loralab_masks.safetensors"));
  }

  TEST_CASE("without the sidecar a LoRA-SP model keeps its seeded masks") {
    GptWeights<double> w = loralab::io::import_hf_gpt2<double>(tiny_dir());
    Gpt<Lora2, double> src(w, adapter_options(1));
    randomize(src, 5);
    TempDir dir;
    loralab::io::export_peft_lora(src, dir.path);
    Gpt<LoraSP2, double> dst(w, adapter_options(12));
    const std::vector<std::uint8_t> before(dst.adapter(0, Module::qkv)->mask().begin(),
                                           dst.adapter(0, Module::qkv)->mask().end());
    CHECK_FALSE(loralab::io::import_peft_lora(dst, dir.path).masks_restored);
    CHECK(std::ranges::equal(before, dst.adapter(0, Module::qkv)->mask()));
    CHECK(*dst.adapter(0, Module::qkv)->B().data() == *src.adapter(0, Module::qkv)->B().data());
  }

  TEST_CASE("adapter_model.safetensors holds exactly PEFT's key names and shapes") {
    GptWeights<double> w = loralab::io::import_hf_gpt2<double>(tiny_dir());
    Gpt<Lora2, double> m(w, adapter_options(1));
    TempDir dir;
    loralab::io::export_peft_lora(m, dir.path);
    const SafetensorsFile f = SafetensorsFile::load(dir.path / "adapter_model.safetensors");
    std::set<std::string> want;
    for (int l = 0; l < 2; ++l)
      for (const char* mod : {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"})
        for (const char* fac : {"A", "B"}) want.insert(key(l, mod, fac));
    const std::vector<std::string> names = f.names();
    CHECK(std::set<std::string>(names.begin(), names.end()) == want);
    CHECK(names.size() == 16);
    // spelled out once, as PEFT writes it for GPT2LMHeadModel
    CHECK(f.contains("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"));
    CHECK(f.contains("base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight"));
    // nn.Linear layout, not transposed: lora_A [r x in], lora_B [out x r]
    CHECK(f.info(key(0, "attn.c_attn", "A")).shape == std::vector<std::int64_t>{2, 16});
    CHECK(f.info(key(0, "attn.c_attn", "B")).shape == std::vector<std::int64_t>{48, 2});
    CHECK(f.info(key(0, "mlp.c_fc", "B")).shape == std::vector<std::int64_t>{64, 2});
    CHECK(f.info(key(0, "mlp.c_proj", "A")).shape == std::vector<std::int64_t>{2, 64});
    CHECK(f.info(key(0, "mlp.c_proj", "B")).shape == std::vector<std::int64_t>{16, 2});
    CHECK(f.info(key(1, "attn.c_proj", "A")).dtype == DType::F64);  // T's dtype by default
    CHECK(f.metadata().at("format") == "pt");
    const std::vector<double> a = f.read<double>(key(1, "attn.c_proj", "A"));
    const auto A = m.adapter(1, Module::attn_proj)->A();
    CHECK(std::equal(a.begin(), a.end(), A.data(), A.data() + A.size()));

    loralab::io::PeftExportOptions opts;
    opts.dtype = DType::F32;
    loralab::io::export_peft_lora(m, dir.path, opts);
    CHECK(SafetensorsFile::load(dir.path / "adapter_model.safetensors")
              .info(key(1, "attn.c_proj", "A"))
              .dtype == DType::F32);
  }

  TEST_CASE("adapter_config.json has PEFT's fields and records the adapted modules exactly") {
    GptWeights<double> w = loralab::io::import_hf_gpt2<double>(tiny_dir());
    TempDir dir;
    SUBCASE("plain LoRA on every module") {
      Gpt<Lora2, double> m(w, adapter_options(1, 16));
      loralab::io::export_peft_lora(m, dir.path);
      const Json j = read_json(dir.path / "adapter_config.json");
      std::set<std::string> keys;
      for (const auto& [k, v] : j.items()) keys.insert(k);
      const std::set<std::string> want = {"alpha_pattern",
                                          "auto_mapping",
                                          "base_model_name_or_path",
                                          "bias",
                                          "fan_in_fan_out",
                                          "inference_mode",
                                          "init_lora_weights",
                                          "layers_pattern",
                                          "layers_to_transform",
                                          "lora_alpha",
                                          "lora_dropout",
                                          "modules_to_save",
                                          "peft_type",
                                          "r",
                                          "rank_pattern",
                                          "revision",
                                          "target_modules",
                                          "task_type",
                                          "use_rslora"};
      CHECK(keys == want);
      CHECK(j["peft_type"] == "LORA");
      CHECK(j["task_type"] == "CAUSAL_LM");
      CHECK(j["r"] == 2);
      CHECK(j["lora_alpha"].is_number_integer());
      CHECK(j["lora_alpha"] == 16);
      CHECK(j["lora_dropout"] == 0.0);
      CHECK(j["fan_in_fan_out"] == true);
      CHECK(j["bias"] == "none");
      CHECK(j["use_rslora"] == false);
      CHECK(j["init_lora_weights"] == true);
      CHECK(j["inference_mode"] == true);
      CHECK(j["base_model_name_or_path"] == "");
      CHECK(j["target_modules"] == Json::array({"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"}));
      CHECK(j["modules_to_save"].is_null());
      CHECK(j["rank_pattern"] == Json::object());
    }
    SUBCASE("rsLoRA, Gaussian init, dropout, fractional alpha, two targets") {
      using Spec = Adapter<Rank<2>, RsLoraScale, GaussianA, InputDropout>;
      GptOptions o = adapter_options(1, 2.5, "c_attn,mlp.c_proj");
      o.adapter.dropout = 0.1;
      Gpt<Spec, double> m(w, o);
      loralab::io::PeftExportOptions opts;
      opts.base_model_name_or_path = "./gpt2_tiny";
      loralab::io::export_peft_lora(m, dir.path, opts);
      const Json j = read_json(dir.path / "adapter_config.json");
      CHECK(j["use_rslora"] == true);
      CHECK(j["init_lora_weights"] == "gaussian");
      CHECK(j["lora_dropout"] == 0.1);
      CHECK(j["lora_alpha"] == 2.5);
      CHECK(j["base_model_name_or_path"] == "./gpt2_tiny");
      CHECK(j["target_modules"] == Json::array({"c_attn", "mlp.c_proj"}));
      CHECK(SafetensorsFile::load(dir.path / "adapter_model.safetensors").names().size() == 8);
      Gpt<Spec, double> back(w, o);
      loralab::io::import_peft_lora(back, dir.path);
      check_same_adapters(m, back);
    }
  }

  TEST_CASE("target_modules: PEFT's list rule and regex strings") {
    auto parse = [](const Json& j) { return loralab::io::module_set_from_peft(j, 3); };
    auto on = [](const ModuleSet& s) {
      std::string out;
      for (int k = 0; k < 4; ++k) out += s.contains(Module(k)) ? '1' : '0';
      return out;
    };
    CHECK(on(parse(Json::array({"c_attn", "c_proj", "c_fc"}))) == "1111");  // c_proj: both
    CHECK(on(parse(Json::array({"c_attn", "c_proj"}))) == "1101");
    CHECK(on(parse(Json::array({"attn.c_proj"}))) == "0100");
    CHECK(on(parse(Json::array({"mlp.c_proj", "c_fc"}))) == "0011");
    CHECK(on(parse(Json::array({"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"}))) == "1111");
    CHECK(on(parse(R"(.*\.(c_attn|c_fc))")) == "1010");
    CHECK(on(parse(R"(transformer\.h\.\d+\.mlp\.c_proj)")) == "0001");
    CHECK(loralab::io::peft_target_modules(ModuleSet::parse("c_fc,attn.c_proj")) ==
          Json::array({"attn.c_proj", "c_fc"}));
    CHECK_ERROR(parse(Json::array({"c_attn", "lm_head"})), "[loralab.io] <json>:", "\"lm_head\"",
                "matches no linear");
    CHECK_ERROR(parse(R"(transformer\.h\.0\.attn\.c_attn)"),
                "[loralab.io] <json>:", "in layer 0 but {} in layer 1");
    CHECK_ERROR(parse("c_attn("), "[loralab.io] <json>:", "not a valid regular expression");
    CHECK_ERROR(parse(Json(3)), "[loralab.io] <json>:", "list of module names or a regex");
    CHECK_ERROR(parse(Json::array({1})), "[loralab.io] <json>:", "must be strings");
  }

  TEST_CASE("a PEFT config with c_proj for both projections and no transformer. prefix loads") {
    GptWeights<double> w = loralab::io::import_hf_gpt2<double>(tiny_dir());
    Gpt<Lora2, double> src(w, adapter_options(1));
    randomize(src, 9);
    TempDir dir;
    loralab::io::export_peft_lora(src, dir.path);
    Json j = read_json(dir.path / "adapter_config.json");
    j["target_modules"] = Json::array({"c_proj", "c_fc", "c_attn"});
    j["use_dora"] = false;
    j["layers_to_transform"] = Json::array({1, 0});
    write_json(dir.path / "adapter_config.json", j);
    // keys of a PEFT model around a bare GPT2Model: base_model.model.h.{l}...
    const fs::path f = dir.path / "adapter_model.safetensors";
    const SafetensorsFile orig = SafetensorsFile::load(f);
    SafetensorsWriter wr;
    for (const auto& n : orig.names()) {
      std::string bare = n;
      bare.erase(std::string("base_model.model.").size(), std::string("transformer.").size());
      wr.add<double>(bare, orig.info(n).shape, orig.read<double>(n));
    }
    wr.write(f);
    Gpt<Lora2, double> dst(w, adapter_options(2));
    loralab::io::import_peft_lora(dst, dir.path);
    check_same_adapters(src, dst);
  }

  TEST_CASE("float adapters round-trip through F32") {
    GptWeights<float> w = loralab::io::import_hf_gpt2<float>(tiny_dir());
    Gpt<LoraSP2, float> src(w, adapter_options(4, 8, "c_fc"));
    randomize(src, 17);
    TempDir dir;
    loralab::io::export_peft_lora(src, dir.path);
    CHECK(SafetensorsFile::load(dir.path / "adapter_model.safetensors")
              .info(key(0, "mlp.c_fc", "A"))
              .dtype == DType::F32);
    Gpt<LoraSP2, float> dst(w, adapter_options(5, 8, "c_fc"));
    CHECK(loralab::io::import_peft_lora(dst, dir.path).masks_restored);
    check_same_adapters(src, dst);
  }

  TEST_CASE("merged adapters export as an HF checkpoint with PEFT's merge rule") {
    GptWeights<double> w = loralab::io::import_hf_gpt2<double>(tiny_dir());
    const std::vector<double> base(w.flat().begin(), w.flat().end());
    Gpt<Lora2, double> m(w, adapter_options(1, 6, "c_attn"));
    randomize(m, 23);
    for (int l = 0; l < 2; ++l) m.adapter(l, Module::qkv)->merge();
    TempDir dir;
    loralab::io::export_hf_gpt2(w, dir.path, DType::F64);
    // PEFT (fan_in_fan_out): the Conv1D weight [in x out] gets s * (B A)^T.
    const SafetensorsFile f = SafetensorsFile::load(dir.path / "model.safetensors");
    const std::vector<double> merged = f.read<double>("h.1.attn.c_attn.weight");  // [16 x 48]
    const auto* a = m.adapter(1, Module::qkv);
    const loralab::cpu::MatrixR<double> delta = a->scale() * (a->B() * a->A());  // [48 x 16]
    std::size_t offset = 0;
    for (const auto& s : w.slots())
      if (s.name == "h.1.attn.c_attn.weight") offset = s.offset;
    double worst = 0;
    for (int i = 0; i < 16; ++i)
      for (int o = 0; o < 48; ++o) {
        const double want = base[offset + std::size_t(o * 16 + i)] + delta(o, i);
        worst = std::max(worst, std::abs(merged[std::size_t(i * 48 + o)] - want));
      }
    CHECK(worst < 1e-14);
    CHECK(a->scale() == 3.0);  // alpha / r
  }

  TEST_CASE("mismatches name both sides: rank, alpha, scaling, targets") {
    GptWeights<double> w = loralab::io::import_hf_gpt2<double>(tiny_dir());
    Gpt<Lora2, double> src(w, adapter_options(1, 16, "c_attn,c_fc"));
    TempDir dir;
    loralab::io::export_peft_lora(src, dir.path);
    const std::string cfg = "[loralab.io] " + (dir.path / "adapter_config.json").string() + ":";
    SUBCASE("rank") {
      Gpt<Adapter<Rank<4>>, double> dst(w, adapter_options(1, 16, "c_attn,c_fc"));
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), cfg, "rank mismatch", "r=2",
                  "rank 4");
    }
    SUBCASE("alpha") {
      Gpt<Lora2, double> dst(w, adapter_options(1, 8, "c_attn,c_fc"));
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), cfg, "lora_alpha mismatch", "16",
                  "alpha=8");
    }
    SUBCASE("scaling") {
      Gpt<Adapter<Rank<2>, RsLoraScale>, double> dst(w, adapter_options(1, 16, "c_attn,c_fc"));
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), cfg, "use_rslora=false",
                  "RsLoraScale");
    }
    SUBCASE("targets") {
      Gpt<Lora2, double> dst(w, adapter_options(1, 16, "c_attn,mlp.c_proj"));
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), cfg, "target mismatch",
                  "{attn.c_attn, mlp.c_fc}", "{attn.c_attn, mlp.c_proj}");
    }
    SUBCASE("masks for a model without a freeze mask") {
      Gpt<LoraSP2, double> sp(w, adapter_options(1, 16, "c_attn,c_fc"));
      loralab::io::export_peft_lora(sp, dir.path);
      Gpt<Lora2, double> dst(w, adapter_options(1, 16, "c_attn,c_fc"));
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path),
                  "[loralab.io] " + (dir.path / "loralab_masks.safetensors").string() + ":",
                  "no freeze mask");
    }
    SUBCASE("a model in full mode or merged adapters") {
      GptOptions full;
      full.mode = loralab::model::TrainMode::full;
      Gpt<Lora2, double> f(w, full);
      CHECK_ERROR(loralab::io::import_peft_lora(f, dir.path), "[loralab.state]", "no adapters");
      CHECK_ERROR(loralab::io::export_peft_lora(f, dir.path), "[loralab.state]", "no adapters");
      Gpt<Lora2, double> dst(w, adapter_options(1, 16, "c_attn,c_fc"));
      dst.adapter(1, Module::fc)->merge();
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), "[loralab.state]",
                  "h.1.mlp.c_fc is merged");
      dst.adapter(1, Module::fc)->unmerge();
    }
  }

  TEST_CASE("corrupt adapter files: missing key, wrong shape, extra key, bad config") {
    GptWeights<double> w = loralab::io::import_hf_gpt2<double>(tiny_dir());
    Gpt<LoraSP2, double> src(w, adapter_options(1));
    randomize(src, 3);
    TempDir dir;
    loralab::io::export_peft_lora(src, dir.path);
    const fs::path wpath = dir.path / "adapter_model.safetensors";
    const std::string wsrc = "[loralab.io] " + wpath.string() + ":";
    const std::string csrc = "[loralab.io] " + (dir.path / "adapter_config.json").string() + ":";
    Gpt<LoraSP2, double> dst(w, adapter_options(2));
    const double a_before = dst.adapter(0, Module::qkv)->A()(0, 0);
    auto keep_all = [](const std::string&) { return true; };
    auto no_edit = [](const std::string&, std::vector<std::int64_t>&, std::vector<double>&) {};
    SUBCASE("missing key") {
      const std::string gone = key(1, "mlp.c_fc", "B");
      rewrite(
          wpath, [&](const std::string& n) { return n != gone; }, no_edit);
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), wsrc,
                  "missing tensor '" + gone + "'");
    }
    SUBCASE("wrong shape") {
      const std::string bad = key(0, "attn.c_proj", "A");
      rewrite(wpath, keep_all, [&](const std::string& n, auto& shape, auto& v) {
        if (n == bad) {
          shape = {1, 16};
          v.resize(16);
        }
      });
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), wsrc, "'" + bad + "'",
                  "has shape [1, 16], expected [2, 16]", "rank 2");
    }
    SUBCASE("extra key") {
      const SafetensorsFile f = SafetensorsFile::load(wpath);
      SafetensorsWriter wr;
      for (const auto& n : f.names()) wr.add<double>(n, f.info(n).shape, f.read<double>(n));
      const std::vector<double> z(16, 0.0);
      wr.add<double>("base_model.model.lm_head.lora_A.weight", {1, 16}, z);
      wr.write(wpath);
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), wsrc, "unexpected tensor(s)",
                  "lm_head");
    }
    SUBCASE("mask values other than 0 and 1") {
      const fs::path mpath = dir.path / "loralab_masks.safetensors";
      rewrite(mpath, keep_all, [](const std::string&, auto&, auto& v) { v[0] = 2; });
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path),
                  "[loralab.io] " + mpath.string() + ":", "holds 2");
    }
    SUBCASE("config: not LoRA, LoRA bias, DoRA, rank pattern, partial layers, bad JSON") {
      const Json good = read_json(dir.path / "adapter_config.json");
      Json j = good;
      j["peft_type"] = "IA3";
      write_json(dir.path / "adapter_config.json", j);
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), csrc, "peft_type=\"IA3\"");
      j = good;
      j["bias"] = "lora_only";
      write_json(dir.path / "adapter_config.json", j);
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), csrc, "bias=\"lora_only\"");
      j = good;
      j["use_dora"] = true;
      write_json(dir.path / "adapter_config.json", j);
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), csrc, "use_dora");
      j = good;
      j["rank_pattern"] = {{"c_attn", 4}};
      write_json(dir.path / "adapter_config.json", j);
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), csrc, "rank_pattern");
      j = good;
      j["layers_to_transform"] = Json::array({0});
      write_json(dir.path / "adapter_config.json", j);
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), csrc, "layers_to_transform");
      j = good;
      j.erase("r");
      write_json(dir.path / "adapter_config.json", j);
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), csrc, "'r'");
      std::ofstream(dir.path / "adapter_config.json") << "{\"r\": ";
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), csrc, "not valid JSON");
      fs::remove(dir.path / "adapter_config.json");
      CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), csrc, "no such file");
    }
    // A failed import leaves the model untouched.
    CHECK(dst.adapter(0, Module::qkv)->A()(0, 0) == a_before);
  }
}

// Sharing models: at inference a MoS (or pure-sharing, PRoLoRA) model is a LoRA of rank r, so
// its PEFT export is a plain LoRA that HF PEFT and a loralab LoRA model load; the reverse is
// refused, since a sharing model's factors are views of its pools.
namespace {

using Lora4 = Adapter<Rank<4>>;

/// A sharing model of rank 4 on the tiny GPT-2 (d=16, 2 layers): non-zero pools, then two AdamW
/// steps without a forward after them, so the adapters' assembled copies are one step stale and
/// export must re-assemble them.
template <class Spec>
void check_sharing_export_serves_as_lora() {
  GptWeights<float> w = loralab::io::import_hf_gpt2<float>(tiny_dir());
  GptOptions o = adapter_options(7);
  o.adapter.share.budget_rank = 3;  // MoS e=3, p=1, l=2: (r-p)*l = 6 <= (e-p)*L*l = 8
  o.adapter.share.private_rank = 1;
  o.adapter.share.shards = 2;
  Gpt<Spec, float> src(w, o);
  const auto* plan = src.shard_plan();
  REQUIRE(plan);
  for (std::size_t k = 0; k < plan->pools.size(); ++k) {
    auto v = src.pool_values(int(k));
    for (std::size_t i = 0; i < v.size(); ++i)
      v[i] = float(0.3 * std::sin(0.9 * double(i) + 1.7 * double(k)));
  }
  loralab::cpu::AdamW<float> opt(src.parameters(), {.lr = 1e-2});
  const Batch b;
  for (int step = 0; step < 2; ++step) {
    src.zero_grad();
    src.forward(b.tokens, b.targets, 2, 8, {true, std::uint64_t(step)});
    src.backward();
    opt.step();
  }
  TempDir dir;
  loralab::io::export_peft_lora(src, dir.path);

  // A plain LoRA of rank r: PEFT's fields only, the model's alpha and modules.
  const Json cfg = read_json(dir.path / "adapter_config.json");
  CHECK(cfg["peft_type"] == "LORA");
  CHECK(cfg["r"] == 4);
  CHECK(cfg["lora_alpha"] == 16);
  CHECK(cfg["target_modules"] == Json::array({"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"}));
  CHECK(cfg["use_rslora"] == false);
  Gpt<Lora4, float> plain_src(w, adapter_options(7));
  const Json plain_cfg = loralab::io::peft_adapter_config(plain_src);
  for (const auto& [k, v] : cfg.items()) CHECK_MESSAGE(plain_cfg.contains(k), k);
  CHECK(cfg.size() == plain_cfg.size());
  const SafetensorsFile f = SafetensorsFile::load(dir.path / "adapter_model.safetensors");
  CHECK(f.names().size() == 2 * 2 * 4);
  CHECK(f.info(key(1, "mlp.c_fc", "A")).shape == std::vector<std::int64_t>{4, 16});
  CHECK(f.info(key(1, "mlp.c_fc", "B")).shape == std::vector<std::int64_t>{64, 4});
  CHECK(f.info(key(1, "mlp.c_fc", "B")).dtype == DType::F32);
  CHECK_FALSE(fs::exists(dir.path / "loralab_masks.safetensors"));

  // The serving path: a LoRA model on the same base computes the sharing model's logits.
  Gpt<Lora4, float> lora(w, adapter_options(8));
  loralab::io::import_peft_lora(lora, dir.path);
  const loralab::cpu::MatrixR<float> want = src.forward_logits(b.tokens, 2, 8, {false, 0});
  const loralab::cpu::MatrixR<float> got = lora.forward_logits(b.tokens, 2, 8, {false, 0});
  CHECK(got == want);  // bitwise: the same factors through the same adapter code
  check_same_adapters(src, lora);
  CHECK(lora.adapter(1, Module::mlp_proj)->B().norm() > 0);  // not a zero-B export

  // The other way is refused: the factors of a sharing model are views of its pools.
  Gpt<Spec, float> dst(w, o);
  CHECK_ERROR(loralab::io::import_peft_lora(dst, dir.path), "[loralab.io] " + dir.path.string(),
              "share factors", "views assembled from shard pools", "load_shard_pools",
              "Adapter<Rank<r>>");
}

}  // namespace

TEST_SUITE("io.peft_lora") {
  TEST_CASE("a MoS model exports as a plain rank-r LoRA that a LoRA model serves exactly") {
    check_sharing_export_serves_as_lora<Adapter<Rank<4>, loralab::MixtureOfShards<>>>();
  }
  TEST_CASE("pure-sharing and PRoLoRA models export as plain LoRA too") {
    check_sharing_export_serves_as_lora<Adapter<Rank<4>, loralab::PureSharing>>();
    check_sharing_export_serves_as_lora<Adapter<Rank<4>, loralab::Prolora<>>>();
  }
}
