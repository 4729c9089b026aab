// Tests for loralab/io/hf_gpt2.hpp: the tiny Hugging Face GPT-2 checkpoint written by
// tests/reference/gpt2_reference.py is imported and run through model::Gpt (full mode, double);
// logits, loss and gradients are compared with torch autograd (float64). Also: the
// "transformer." prefix, export round trips, the written layout, and every error path.
#include "loralab/io/hf_gpt2.hpp"

#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/model/gpt.hpp"
#include "support/golden.hpp"
#include "support/temp_dir.hpp"
#include "support/testing.hpp"

namespace {

namespace fs = std::filesystem;
using loralab::Adapter;
using loralab::Rank;
using loralab::io::DType;
using loralab::io::SafetensorsFile;
using loralab::io::SafetensorsWriter;
using loralab::model::Gpt;
using loralab::model::GptConfig;
using loralab::model::GptOptions;
using loralab::model::GptWeights;
using loralab::model::TrainMode;
using Json = nlohmann::json;
template <class T>
using MatrixR = loralab::cpu::MatrixR<T>;

constexpr char kGoldenVersion[] = "1";  // bump together with VERSION in gpt2_reference.py
constexpr char kRegenerate[] =
    "regenerate with `/usr/bin/python3 tests/reference/gpt2_reference.py` (see "
    "tests/reference/README.md)";

fs::path tiny_dir() {
  return fs::path(LORALAB_TEST_REFERENCE_DIR) / "gpt2_tiny";
}

SafetensorsFile open_reference() {
  REQUIRE_MESSAGE(fs::exists(tiny_dir() / "model.safetensors"),
                  "golden checkpoint " << tiny_dir() << " is missing; " << kRegenerate);
  return loralab::testing::open_golden(
      fs::path(LORALAB_TEST_REFERENCE_DIR) / "gpt2_reference.safetensors", kGoldenVersion,
      kRegenerate);
}

using loralab::testing::TempDir;

using loralab::testing::error_of;

/// Checks that `expr` throws "[loralab.io] <where>: ..." containing every one of `words`.
#define CHECK_IO_ERROR(expr, where, ...)                                          \
  do {                                                                            \
    const std::string msg_ = error_of([&] { (void)(expr); });                     \
    INFO("message: " << msg_);                                                    \
    CHECK(msg_.rfind("[loralab.io] " + std::string(where), 0) == 0);              \
    for (const std::string& w_ : std::initializer_list<std::string>{__VA_ARGS__}) \
      CHECK(msg_.find(w_) != std::string::npos);                                  \
  } while (false)

struct RawTensor {
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> bytes;
};
using RawTensors = std::map<std::string, RawTensor>;

RawTensors read_all(const SafetensorsFile& f) {
  RawTensors out;
  for (const std::string& n : f.names()) {
    const auto raw = f.raw(n);
    out[n] = {f.info(n).dtype, f.info(n).shape, {raw.begin(), raw.end()}};
  }
  return out;
}

void write_all(const fs::path& path, const RawTensors& tensors) {
  SafetensorsWriter w;
  for (const auto& [name, t] : tensors) w.add_raw(name, t.dtype, t.shape, t.bytes);
  w.set_metadata("format", "pt");
  w.write(path);
}

Json read_json(const fs::path& path) {
  std::ifstream in(path);
  return Json::parse(in);
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

/// A copy of the tiny checkpoint in `dir` with config.json and tensors edited by the callers.
struct Variant {
  Json config = read_json(tiny_dir() / "config.json");
  RawTensors tensors = read_all(SafetensorsFile::load(tiny_dir() / "model.safetensors"));
  void write(const fs::path& dir) const {
    write_text(dir / "config.json", config.dump(2));
    write_all(dir / "model.safetensors", tensors);
  }
};

/// The gradient of the flat full-mode buffer for slot `name`, in loralab's layout.
MatrixR<double> slot_matrix(const GptWeights<double>& w, std::span<const double> flat,
                            const std::string& name) {
  for (const auto& s : w.slots())
    if (s.name == name)
      return Eigen::Map<const MatrixR<double>>(flat.data() + s.offset, s.rows, s.cols);
  FAIL("no slot " << name);
  return {};
}

MatrixR<double> reference_matrix(const SafetensorsFile& f, const std::string& name) {
  const auto& info = f.info(name);
  const std::vector<double> v = f.read<double>(name);
  const Eigen::Index rows = info.shape.size() == 2 ? info.shape[0] : 1;
  const Eigen::Index cols = info.shape.size() == 2 ? info.shape[1] : info.shape[0];
  return Eigen::Map<const MatrixR<double>>(v.data(), rows, cols);
}

std::vector<std::int32_t> reference_ids(const SafetensorsFile& f, const std::string& name) {
  const std::vector<std::int64_t> v = f.read<std::int64_t>(name, {2, 8});
  return {v.begin(), v.end()};
}

}  // namespace

TEST_SUITE("io.hf_gpt2") {
  TEST_CASE("config.json of the tiny checkpoint maps onto GptConfig") {
    const GptConfig c = loralab::io::read_hf_gpt2_config(tiny_dir());
    CHECK(c.vocab_size == 20);
    CHECK(c.context == 8);
    CHECK(c.d_model == 16);
    CHECK(c.layers == 2);
    CHECK(c.heads == 2);
    CHECK(c.d_ff == 0);  // n_inner null
    CHECK(c.ff() == 64);
    CHECK(c.ln_eps == 1e-5);
  }

  TEST_CASE("imported tiny GPT-2 reproduces torch's logits, loss and gradients (double)") {
    const SafetensorsFile ref = open_reference();
    GptWeights<double> w = loralab::io::import_hf_gpt2<double>(tiny_dir());
    GptOptions opts;
    opts.mode = TrainMode::full;
    Gpt<Adapter<Rank<2>>, double> m(w, opts);
    const std::vector<std::int32_t> tokens = reference_ids(ref, "tokens");
    const std::vector<std::int32_t> targets = reference_ids(ref, "targets");

    const MatrixR<double> logits = m.forward_logits(tokens, 2, 8);
    LORALAB_CHECK_CLOSE(logits, reference_matrix(ref, "logits"), 1e-10, 1e-12);

    m.zero_grad();
    const double loss = m.forward(tokens, targets, 2, 8);
    const double want = ref.read<double>("loss", {1})[0];
    CHECK(std::abs(loss - want) <= 1e-10 * std::abs(want));
    m.backward();

    const auto grad = m.full_grad();
    for (const std::string name :
         {"h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias", "h.1.mlp.c_proj.weight",
          "h.1.ln_2.weight", "wte.weight", "wpe.weight", "ln_f.weight"}) {
      INFO("gradient of " << name);
      MatrixR<double> want_grad = reference_matrix(ref, "grad." + name);
      if (loralab::io::detail::is_conv1d_weight(name)) want_grad.transposeInPlace();  // [in x out]
      const MatrixR<double> got = slot_matrix(w, grad, name);
      REQUIRE(got.rows() == want_grad.rows());
      REQUIRE(got.cols() == want_grad.cols());
      LORALAB_CHECK_CLOSE(got, want_grad, 1e-9, 1e-13);
      CHECK(want_grad.cwiseAbs().maxCoeff() > 1e-4);  // a non-trivial comparison
    }
  }

  TEST_CASE("float import gives the same model up to float rounding") {
    const SafetensorsFile ref = open_reference();
    GptWeights<float> w = loralab::io::import_hf_gpt2<float>(tiny_dir());
    GptOptions opts;
    opts.mode = TrainMode::full;
    Gpt<Adapter<Rank<2>>, float> m(w, opts);
    const double loss =
        m.forward(reference_ids(ref, "tokens"), reference_ids(ref, "targets"), 2, 8);
    const double want = ref.read<double>("loss", {1})[0];
    CHECK(std::abs(loss - want) <= 1e-5 * std::abs(want));
  }

  TEST_CASE("keys with the transformer. prefix, a tied lm_head and mask buffers are accepted") {
    TempDir dir;
    Variant v;
    RawTensors prefixed;
    for (auto& [name, t] : v.tensors) prefixed["transformer." + name] = t;
    prefixed["lm_head.weight"] = v.tensors.at("wte.weight");
    auto buffer = v.tensors.at("h.0.attn.bias");
    prefixed["transformer.h.1.attn.masked_bias"] = buffer;
    v.tensors = prefixed;
    v.write(dir.path);
    const GptWeights<double> plain = loralab::io::import_hf_gpt2<double>(tiny_dir());
    const GptWeights<double> got = loralab::io::import_hf_gpt2<double>(dir.path);
    const auto a = plain.flat(), b = got.flat();
    CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
  }

  TEST_CASE("n_ctx stands in for a missing n_positions; n_inner sets the MLP width") {
    Json j = read_json(tiny_dir() / "config.json");
    j.erase("n_positions");
    CHECK(loralab::io::gpt_config_from_hf_json(j).context == 8);
    j["n_inner"] = 24;
    CHECK(loralab::io::gpt_config_from_hf_json(j).ff() == 24);
    j["activation_function"] = "gelu_pytorch_tanh";  // the same tanh formula
    CHECK_NOTHROW(loralab::io::gpt_config_from_hf_json(j));
  }

  TEST_CASE("export then import round-trips bit for bit through float") {
    GptWeights<double> w = loralab::io::import_hf_gpt2<double>(tiny_dir());
    TempDir dir;
    SUBCASE("weights that came from F32 come back exactly") {
      loralab::io::export_hf_gpt2(w, dir.path);
      const GptWeights<double> back = loralab::io::import_hf_gpt2<double>(dir.path);
      const std::span<const double> a = w.flat(), b = back.flat();
      CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
      CHECK(back.config().to_string() == w.config().to_string());
    }
    SUBCASE("arbitrary doubles come back as their float rounding; F64 keeps them") {
      std::mt19937_64 gen(loralab::testing::kSeed);
      std::normal_distribution<double> normal(0.0, 0.3);
      for (double& x : w.flat()) x = normal(gen);
      loralab::io::export_hf_gpt2(w, dir.path);
      const GptWeights<double> back = loralab::io::import_hf_gpt2<double>(dir.path);
      const std::span<const double> a = w.flat(), b = back.flat();
      REQUIRE(a.size() == b.size());
      std::size_t mismatches = 0;
      for (std::size_t i = 0; i < a.size(); ++i)
        if (double(float(a[i])) != b[i]) ++mismatches;
      CHECK(mismatches == 0);
      const GptWeights<float> back32 = loralab::io::import_hf_gpt2<float>(dir.path);
      for (std::size_t i = 0; i < a.size(); ++i)
        if (float(a[i]) != back32.flat()[i]) ++mismatches;
      CHECK(mismatches == 0);

      loralab::io::export_hf_gpt2(w, dir.path, DType::F64);
      const GptWeights<double> exact = loralab::io::import_hf_gpt2<double>(dir.path);
      CHECK(std::equal(a.begin(), a.end(), exact.flat().begin(), exact.flat().end()));
      CHECK(read_json(dir.path / "config.json")["torch_dtype"] == "float64");
    }
  }

  TEST_CASE("the exported checkpoint has HF's keys, Conv1D shapes, metadata and config") {
    GptConfig c;
    c.vocab_size = 11;
    c.context = 5;
    c.layers = 3;
    c.heads = 2;
    c.d_model = 6;
    c.d_ff = 10;  // not 4 d: n_inner is written
    c.ln_eps = 1e-6;
    GptWeights<float> w(c);
    w.init_gpt2(loralab::testing::kSeed);
    TempDir dir;
    loralab::io::export_hf_gpt2(w, dir.path / "nested" / "out");  // directories are created
    const fs::path out = dir.path / "nested" / "out";
    const SafetensorsFile f = SafetensorsFile::load(out / "model.safetensors");
    CHECK(f.metadata().at("format") == "pt");
    CHECK(f.names().size() == 2 + 12 * 3 + 2);
    CHECK(f.info("wte.weight").shape == std::vector<std::int64_t>{11, 6});
    CHECK(f.info("wpe.weight").shape == std::vector<std::int64_t>{5, 6});
    CHECK(f.info("h.2.attn.c_attn.weight").shape == std::vector<std::int64_t>{6, 18});
    CHECK(f.info("h.2.attn.c_attn.bias").shape == std::vector<std::int64_t>{18});
    CHECK(f.info("h.0.attn.c_proj.weight").shape == std::vector<std::int64_t>{6, 6});
    CHECK(f.info("h.0.mlp.c_fc.weight").shape == std::vector<std::int64_t>{6, 10});
    CHECK(f.info("h.0.mlp.c_proj.weight").shape == std::vector<std::int64_t>{10, 6});
    CHECK(f.info("h.1.ln_2.weight").shape == std::vector<std::int64_t>{6});
    CHECK(f.info("ln_f.bias").shape == std::vector<std::int64_t>{6});
    CHECK(f.info("h.1.mlp.c_fc.weight").dtype == DType::F32);
    // Conv1D transposition: HF [in x out] element (i, o) is our W(o, i).
    const std::vector<float> hf = f.read<float>("h.1.mlp.c_fc.weight");
    const auto W = w.weight(1, loralab::model::Module::fc);  // [10 x 6]
    for (int o = 0; o < 10; ++o)
      for (int i = 0; i < 6; ++i) CHECK(hf[std::size_t(i * 10 + o)] == W(o, i));

    const Json j = read_json(out / "config.json");
    CHECK(j["model_type"] == "gpt2");
    CHECK(j["activation_function"] == "gelu_new");
    CHECK(j["n_embd"] == 6);
    CHECK(j["n_layer"] == 3);
    CHECK(j["n_head"] == 2);
    CHECK(j["n_positions"] == 5);
    CHECK(j["n_ctx"] == 5);
    CHECK(j["vocab_size"] == 11);
    CHECK(j["n_inner"] == 10);
    CHECK(j["layer_norm_epsilon"] == 1e-6);
    CHECK(j["tie_word_embeddings"] == true);
    const GptConfig back = loralab::io::read_hf_gpt2_config(out);
    CHECK(back.to_string() == c.to_string());
    // 4 d: null, as HF writes it
    c.d_ff = 0;
    CHECK(loralab::io::hf_json_from_gpt_config(c)["n_inner"].is_null());
    // no temporary files are left behind
    int files = 0;
    for (const auto& e : fs::directory_iterator(out)) files += e.is_regular_file();
    CHECK(files == 2);
  }

  TEST_CASE("corrupt weights: missing key, wrong shape, unexpected key, wrong dtype") {
    TempDir dir;
    const std::string file = (dir.path / "model.safetensors").string();
    Variant v;
    SUBCASE("missing key") {
      v.tensors.erase("h.1.mlp.c_fc.weight");
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), file,
                     "missing tensor 'h.1.mlp.c_fc.weight'", "n_layer=2");
    }
    SUBCASE("missing key under the transformer. prefix") {
      RawTensors prefixed;
      for (auto& [name, t] : v.tensors)
        if (name != "ln_f.bias") prefixed["transformer." + name] = t;
      v.tensors = prefixed;
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), file,
                     "missing tensor 'transformer.ln_f.bias'");
    }
    SUBCASE("Conv1D weight stored in nn.Linear layout") {
      auto& t = v.tensors.at("h.0.attn.c_attn.weight");
      t.shape = {48, 16};
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), file,
                     "'h.0.attn.c_attn.weight' has shape [48, 16], expected [16, 48]", "Conv1D");
    }
    SUBCASE("vocabulary of another size") {
      auto& t = v.tensors.at("wte.weight");
      t.shape = {10, 16};
      t.bytes.resize(t.bytes.size() / 2);
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), file,
                     "'wte.weight' has shape [10, 16], expected [20, 16]");
    }
    SUBCASE("a third layer the config does not have") {
      v.tensors["h.2.ln_1.weight"] = v.tensors.at("h.1.ln_1.weight");
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), file,
                     "unexpected tensor(s) 'h.2.ln_1.weight'");
    }
    SUBCASE("config.json with fewer layers than the weights") {
      v.config["n_layer"] = 1;
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), file, "unexpected tensor(s)",
                     "'h.1.", "does config.json match");
    }
    SUBCASE("integer tensor") {
      auto& t = v.tensors.at("ln_f.weight");
      t.dtype = DType::I64;
      t.bytes.resize(16 * 8);
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), file, "ln_f.weight", "I64");
    }
    SUBCASE("no model.safetensors, or a sharded / pickle checkpoint") {
      write_text(dir.path / "config.json", v.config.dump());
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), file, "no such file");
      write_text(dir.path / "pytorch_model.bin", "x");
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), file, "safe_serialization");
      write_text(dir.path / "model.safetensors.index.json", "{}");
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), file, "sharded");
    }
  }

  TEST_CASE("bad config.json: missing, not JSON, missing field, unsupported model") {
    TempDir dir;
    const std::string cfg = (dir.path / "config.json").string();
    Variant v;
    SUBCASE("missing file") {
      write_all(dir.path / "model.safetensors", v.tensors);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg, "no such file");
    }
    SUBCASE("not JSON") {
      v.write(dir.path);
      write_text(dir.path / "config.json", "{\"n_embd\": 16,");
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg, "not valid JSON");
    }
    SUBCASE("not an object") {
      v.write(dir.path);
      write_text(dir.path / "config.json", "[1, 2]");
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg, "JSON object");
    }
    SUBCASE("missing field") {
      v.config.erase("n_embd");
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg, "missing field 'n_embd'");
    }
    SUBCASE("neither n_positions nor n_ctx") {
      v.config.erase("n_positions");
      v.config.erase("n_ctx");
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg, "n_positions", "n_ctx");
    }
    SUBCASE("mistyped field") {
      v.config["n_head"] = "2";
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg,
                     "field 'n_head' must be a positive integer, got \"2\"");
    }
    SUBCASE("activation other than gelu_new") {
      v.config["activation_function"] = "relu";
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg,
                     "unsupported config: activation_function=\"relu\"", "gelu_new");
    }
    SUBCASE("exact (erf) GELU") {
      v.config["activation_function"] = "gelu";
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg, "activation_function");
    }
    SUBCASE("another model type") {
      v.config["model_type"] = "llama";
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg, "model_type=\"llama\"");
    }
    SUBCASE("untied head, layer-scaled attention, unscaled attention") {
      v.config["tie_word_embeddings"] = false;
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg,
                     "tie_word_embeddings=false");
      v.config["tie_word_embeddings"] = true;
      v.config["scale_attn_by_inverse_layer_idx"] = true;
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg,
                     "scale_attn_by_inverse_layer_idx=true");
      v.config["scale_attn_by_inverse_layer_idx"] = false;
      v.config["scale_attn_weights"] = false;
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg,
                     "scale_attn_weights=false");
    }
    SUBCASE("sizes GptConfig rejects") {
      v.config["n_head"] = 3;  // 16 is not divisible by 3
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg, "unsupported config",
                     "not divisible by heads=3");
    }
    SUBCASE("layer_norm_epsilon not a positive number") {
      v.config["layer_norm_epsilon"] = -1;
      v.write(dir.path);
      CHECK_IO_ERROR(loralab::io::import_hf_gpt2<double>(dir.path), cfg, "layer_norm_epsilon");
    }
  }
}
