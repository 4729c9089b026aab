/// \file
/// \brief Hugging Face GPT-2 checkpoints: import a directory with `config.json` and
/// `model.safetensors` into `model::GptWeights` (+ `model::GptConfig`), and export one back in
/// the same layout (e.g. a model with merged adapters).
///
/// Layout (transformers' `GPT2Model` / `GPT2LMHeadModel`):
///
/// | HF key | HF shape | loralab |
/// | --- | --- | --- |
/// | `wte.weight`, `wpe.weight` | [V, d], [n_positions, d] | as is (also the tied head) |
/// | `h.{l}.ln_1.weight`, `.bias` (and `ln_2`, `ln_f`) | [d] | as is |
/// | `h.{l}.attn.c_attn.weight` | [d, 3d] (Conv1D: [in, out]) | transposed to [3d, d] ([out x in])
/// | | `h.{l}.attn.c_proj.weight`, `h.{l}.mlp.c_fc.weight`, `h.{l}.mlp.c_proj.weight` | [in, out] |
/// transposed | | `h.{l}.*.bias` | [out] | as is |
///
/// On import, keys may carry the `transformer.` prefix of `GPT2LMHeadModel` checkpoints (all keys
/// or none); `lm_head.weight` (tied to `wte`) and the attention buffers `h.{l}.attn.bias` and
/// `h.{l}.attn.masked_bias` are ignored; any other key is an error (it would mean the file and
/// config.json disagree). Tensors may be stored as F32, F64, BF16 or F16. Export writes keys
/// without the prefix (as the hub's `gpt2` checkpoint), `__metadata__ = {"format": "pt"}` (which
/// transformers requires) and a config.json that `GPT2Config` reads.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "loralab/core/error.hpp"
#include "loralab/io/safetensors.hpp"
#include "loralab/model/config.hpp"
#include "loralab/model/weights.hpp"

namespace loralab::io {

/// \ingroup io
/// \brief File name of a Hugging Face model configuration inside a checkpoint directory.
inline constexpr const char* kHfConfigFile = "config.json";
/// \ingroup io
/// \brief File name of a single-file Hugging Face safetensors checkpoint.
inline constexpr const char* kHfWeightsFile = "model.safetensors";

namespace detail {

/// Reads a whole JSON file; `[loralab.io] <path>: ...` errors for a missing file or bad JSON.
inline nlohmann::json read_json_file(const std::filesystem::path& path) {
  const std::string src = path.string();
  std::error_code ec;
  LORALAB_CHECK(std::filesystem::is_regular_file(path, ec), "[loralab.io] ", src,
                ": cannot open: no such file");
  std::ifstream in(path, std::ios::binary);
  LORALAB_CHECK(in.is_open(), "[loralab.io] ", src, ": cannot open for reading");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LORALAB_CHECK(!in.bad(), "[loralab.io] ", src, ": read error");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    LORALAB_FAIL("[loralab.io] ", src, ": not valid JSON: ", e.what());
  }
  LORALAB_CHECK(j.is_object(), "[loralab.io] ", src, ": expected a JSON object, got a ",
                j.type_name());
  return j;
}

/// Writes `text` to `path` atomically (temporary file next to it, then rename), as
/// SafetensorsWriter::write does.
inline void write_text_atomic(const std::filesystem::path& path, const std::string& text) {
  write_bytes_atomic(path, text.data(), text.size());
}

/// Creates `dir` (and parents) for an export; errors name the directory.
inline void make_export_dir(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  LORALAB_CHECK(!ec && std::filesystem::is_directory(dir), "[loralab.io] ", dir.string(),
                ": cannot create the export directory: ", ec ? ec.message() : "not a directory");
}

/// A short JSON rendering of a value for error messages.
inline std::string json_excerpt(const nlohmann::json& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

/// A positive integer field of an HF config; `required` = false returns `fallback` when absent.
inline int hf_int(const nlohmann::json& j, const char* key, const std::string& src, bool required,
                  int fallback = 0) {
  const auto it = j.find(key);
  if (it == j.end()) {
    LORALAB_CHECK(!required, "[loralab.io] ", src, ": missing field '", key, "'");
    return fallback;
  }
  LORALAB_CHECK(it->is_number_integer() && it->get<std::int64_t>() > 0 &&
                    it->get<std::int64_t>() <= std::int64_t(1) << 30,
                "[loralab.io] ", src, ": field '", key, "' must be a positive integer, got ",
                json_excerpt(*it));
  return static_cast<int>(it->get<std::int64_t>());
}

/// A boolean field that must have `supported` when present.
inline void hf_require_flag(const nlohmann::json& j, const char* key, bool supported,
                            const std::string& src) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  LORALAB_CHECK(it->is_boolean(), "[loralab.io] ", src, ": field '", key,
                "' must be true or false, got ", json_excerpt(*it));
  LORALAB_CHECK(it->get<bool>() == supported, "[loralab.io] ", src, ": unsupported config: ", key,
                "=", (supported ? "false" : "true"), " (loralab's GPT-2 supports only ", key, "=",
                (supported ? "true" : "false"), ")");
}

/// True for the weights HF stores as Conv1D [in x out] (loralab keeps [out x in]).
inline bool is_conv1d_weight(std::string_view slot_name) {
  return slot_name.ends_with(".weight") && (slot_name.find(".attn.c_") != std::string_view::npos ||
                                            slot_name.find(".mlp.c_") != std::string_view::npos);
}

/// The HF shape of a GptWeights slot: [n] for vectors, [in, out] for Conv1D, else [rows, cols].
inline std::vector<std::int64_t> hf_shape(const model::TensorSlot& s) {
  if (s.rows == 1) return {s.cols};
  if (is_conv1d_weight(s.name)) return {s.cols, s.rows};
  return {s.rows, s.cols};
}

/// True for `h.<digits>.attn.bias` / `h.<digits>.attn.masked_bias` (HF's causal-mask buffers).
inline bool is_attention_buffer(std::string_view key) {
  if (!key.starts_with("h.")) return false;
  key.remove_prefix(2);
  std::size_t digits = 0;
  while (digits < key.size() && key[digits] >= '0' && key[digits] <= '9') ++digits;
  if (digits == 0) return false;
  key.remove_prefix(digits);
  return key == ".attn.bias" || key == ".attn.masked_bias";
}

/// "n_embd=16 n_layer=2 ..." for error messages.
inline std::string hf_config_summary(const model::GptConfig& c) {
  std::ostringstream os;
  os << "vocab_size=" << c.vocab_size << " n_positions=" << c.context << " n_embd=" << c.d_model
     << " n_layer=" << c.layers << " n_head=" << c.heads << " n_inner=" << c.ff();
  return os.str();
}

}  // namespace detail

/// \ingroup io
/// \brief Translates an HF GPT-2 `config.json` object into a GptConfig: n_embd -> d_model,
/// n_layer -> layers, n_head -> heads, n_positions (or, when absent, n_ctx) -> context,
/// vocab_size, n_inner (null or absent -> 0, i.e. 4 * d_model) -> d_ff, layer_norm_epsilon
/// (default 1e-5) -> ln_eps. `source` names the file in error messages.
/// \throws Error `[loralab.io] <source>: ...` on a missing or mistyped field, and on a model
/// loralab's decoder does not compute: model_type other than "gpt2", activation_function other
/// than "gelu_new" (or "gelu_pytorch_tanh", the same tanh formula), scale_attn_weights=false,
/// scale_attn_by_inverse_layer_idx=true, add_cross_attention=true, tie_word_embeddings=false, or
/// sizes GptConfig::validate() rejects.
inline model::GptConfig gpt_config_from_hf_json(const nlohmann::json& j,
                                                const std::string& source = "<json>") {
  LORALAB_CHECK(j.is_object(), "[loralab.io] ", source, ": expected a JSON object, got a ",
                j.type_name());
  if (const auto it = j.find("model_type"); it != j.end()) {
    LORALAB_CHECK(it->is_string() && it->get<std::string>() == "gpt2", "[loralab.io] ", source,
                  ": unsupported config: model_type=", detail::json_excerpt(*it),
                  " (expected \"gpt2\")");
  }
  if (const auto it = j.find("activation_function"); it != j.end()) {
    const bool ok = it->is_string() && (it->get<std::string>() == "gelu_new" ||
                                        it->get<std::string>() == "gelu_pytorch_tanh");
    LORALAB_CHECK(ok, "[loralab.io] ", source,
                  ": unsupported config: activation_function=", detail::json_excerpt(*it),
                  " (loralab's GPT-2 computes the tanh GELU, \"gelu_new\")");
  }
  detail::hf_require_flag(j, "scale_attn_weights", true, source);
  detail::hf_require_flag(j, "scale_attn_by_inverse_layer_idx", false, source);
  detail::hf_require_flag(j, "add_cross_attention", false, source);
  detail::hf_require_flag(j, "tie_word_embeddings", true, source);

  model::GptConfig c;
  c.vocab_size = detail::hf_int(j, "vocab_size", source, true);
  c.d_model = detail::hf_int(j, "n_embd", source, true);
  c.layers = detail::hf_int(j, "n_layer", source, true);
  c.heads = detail::hf_int(j, "n_head", source, true);
  if (j.contains("n_positions")) {
    c.context = detail::hf_int(j, "n_positions", source, true);
  } else {
    LORALAB_CHECK(j.contains("n_ctx"), "[loralab.io] ", source,
                  ": missing field 'n_positions' (nor the older 'n_ctx')");
    c.context = detail::hf_int(j, "n_ctx", source, true);
  }
  if (const auto it = j.find("n_inner"); it != j.end() && !it->is_null())
    c.d_ff = detail::hf_int(j, "n_inner", source, true);
  if (const auto it = j.find("layer_norm_epsilon"); it != j.end()) {
    LORALAB_CHECK(it->is_number() && it->get<double>() > 0, "[loralab.io] ", source,
                  ": field 'layer_norm_epsilon' must be a positive number, got ",
                  detail::json_excerpt(*it));
    c.ln_eps = it->get<double>();
  }
  try {
    c.validate();
  } catch (const Error& e) {
    LORALAB_FAIL("[loralab.io] ", source, ": unsupported config: ", e.what());
  }
  return c;
}

/// \ingroup io
/// \brief The HF `config.json` object of `cfg` that `transformers.GPT2Config` reads (model_type
/// "gpt2", architectures ["GPT2LMHeadModel"], gelu_new, tied embeddings, n_inner null when
/// d_ff is 4 * d_model, dropout probabilities 0 since loralab's decoder has none). `dtype` only
/// sets torch_dtype.
inline nlohmann::json hf_json_from_gpt_config(const model::GptConfig& cfg,
                                              DType dtype = DType::F32) {
  cfg.validate();
  nlohmann::json j;
  j["activation_function"] = "gelu_new";
  j["architectures"] = nlohmann::json::array({"GPT2LMHeadModel"});
  j["attn_pdrop"] = 0.0;
  j["embd_pdrop"] = 0.0;
  j["resid_pdrop"] = 0.0;
  j["initializer_range"] = 0.02;
  j["layer_norm_epsilon"] = cfg.ln_eps;
  j["model_type"] = "gpt2";
  j["n_ctx"] = cfg.context;
  j["n_positions"] = cfg.context;
  j["n_embd"] = cfg.d_model;
  j["n_head"] = cfg.heads;
  j["n_layer"] = cfg.layers;
  j["n_inner"] = cfg.ff() == 4 * cfg.d_model ? nlohmann::json(nullptr) : nlohmann::json(cfg.ff());
  j["vocab_size"] = cfg.vocab_size;
  j["reorder_and_upcast_attn"] = false;
  j["scale_attn_by_inverse_layer_idx"] = false;
  j["scale_attn_weights"] = true;
  j["tie_word_embeddings"] = true;
  j["use_cache"] = true;
  const char* torch_dtype = "float32";
  if (dtype == DType::F64) torch_dtype = "float64";
  if (dtype == DType::BF16) torch_dtype = "bfloat16";
  if (dtype == DType::F16) torch_dtype = "float16";
  j["torch_dtype"] = torch_dtype;
  return j;
}

/// \ingroup io
/// \brief Reads `<dir>/config.json` (see gpt_config_from_hf_json()).
/// \throws Error `[loralab.io] <dir>/config.json: ...` when missing, not JSON, or unsupported.
inline model::GptConfig read_hf_gpt2_config(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / kHfConfigFile;
  return gpt_config_from_hf_json(detail::read_json_file(path), path.string());
}

/// \ingroup io
/// \brief Fills `weights` from a GPT-2 safetensors checkpoint already loaded (keys with or
/// without the `transformer.` prefix; Conv1D weights transposed into [out x in]).
/// \throws Error `[loralab.io] <file>: ...` naming the key on a missing tensor, a shape that
/// differs from the config's (expected and got), a dtype that is not a float type, or a key that
/// belongs to no GPT-2 of this config. `weights` is only written when every check passed.
template <class T>
void load_hf_gpt2_weights(const SafetensorsFile& file, model::GptWeights<T>& weights) {
  const std::string& src = file.source();
  const std::string prefix = file.contains("transformer.wte.weight") ? "transformer." : "";
  const model::GptConfig& cfg = weights.config();
  std::vector<T> staged(weights.flat().size());
  std::set<std::string, std::less<>> used;
  for (const model::TensorSlot& s : weights.slots()) {
    const std::string key = prefix + s.name;
    LORALAB_CHECK(file.contains(key), "[loralab.io] ", src, ": missing tensor '", key,
                  "' of a GPT-2 with ", detail::hf_config_summary(cfg),
                  prefix.empty() ? "" : " (the file's keys carry the 'transformer.' prefix)");
    const std::vector<std::int64_t> want = detail::hf_shape(s);
    const TensorInfo& info = file.info(key);
    LORALAB_CHECK(info.shape == want, "[loralab.io] ", src, ": tensor '", key, "' has shape ",
                  detail::shape_string(info.shape), ", expected ", detail::shape_string(want),
                  detail::is_conv1d_weight(s.name) ? " (Conv1D layout [in, out])" : "",
                  " for a GPT-2 with ", detail::hf_config_summary(cfg));
    const std::vector<T> v = file.read<T>(key);
    T* out = staged.data() + s.offset;
    if (detail::is_conv1d_weight(s.name)) {  // HF [in x out] -> ours [out x in]
      const std::int64_t in = s.cols, outf = s.rows;
      for (std::int64_t i = 0; i < in; ++i)
        for (std::int64_t o = 0; o < outf; ++o) out[o * in + i] = v[std::size_t(i * outf + o)];
    } else {
      std::copy(v.begin(), v.end(), out);
    }
    used.insert(key);
  }
  std::vector<std::string> unexpected;
  for (const std::string& name : file.names()) {
    if (used.contains(name) || name == "lm_head.weight") continue;
    const std::string_view rest = std::string_view(name).starts_with(prefix)
                                      ? std::string_view(name).substr(prefix.size())
                                      : std::string_view();
    if (!rest.empty() && detail::is_attention_buffer(rest)) continue;
    unexpected.push_back(name);
  }
  if (!unexpected.empty()) {
    std::ostringstream os;
    for (std::size_t i = 0; i < unexpected.size() && i < 10; ++i)
      os << (i ? ", " : "") << "'" << unexpected[i] << "'";
    if (unexpected.size() > 10) os << ", ... (" << unexpected.size() << " in all)";
    LORALAB_FAIL("[loralab.io] ", src, ": unexpected tensor(s) ", os.str(), " for a GPT-2 with ",
                 detail::hf_config_summary(cfg), " (does config.json match the weights?)");
  }
  std::copy(staged.begin(), staged.end(), weights.flat().begin());
}

/// \ingroup io
/// \brief Imports a Hugging Face GPT-2 checkpoint directory (`config.json` +
/// `model.safetensors`) as base weights in precision T (float or double); the configuration is
/// `result.config()`.
/// \throws Error `[loralab.io]` naming the file (and key) on a missing file, a sharded or
/// non-safetensors checkpoint, an unsupported config (see gpt_config_from_hf_json()), or a
/// missing, mis-shaped or unexpected tensor (see load_hf_gpt2_weights()).
template <class T>
model::GptWeights<T> import_hf_gpt2(const std::filesystem::path& dir) {
  const model::GptConfig cfg = read_hf_gpt2_config(dir);
  const std::filesystem::path path = dir / kHfWeightsFile;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    LORALAB_CHECK(!std::filesystem::exists(dir / "model.safetensors.index.json", ec),
                  "[loralab.io] ", path.string(),
                  ": no such file; sharded checkpoints (model.safetensors.index.json) are not "
                  "supported: save with a larger max_shard_size");
    LORALAB_CHECK(!std::filesystem::exists(dir / "pytorch_model.bin", ec), "[loralab.io] ",
                  path.string(),
                  ": no such file; only safetensors checkpoints are read (this directory has "
                  "pytorch_model.bin: re-save with safe_serialization=True)");
  }
  const SafetensorsFile file = SafetensorsFile::load(path);
  model::GptWeights<T> weights(cfg);
  load_hf_gpt2_weights(file, weights);
  return weights;
}

/// \ingroup io
/// \brief Writes `weights` as a Hugging Face GPT-2 checkpoint into `dir` (created if missing):
/// `model.safetensors` (keys without prefix, Conv1D weights [in x out], tensors stored as
/// `dtype`, F32 by default; metadata format=pt) and `config.json` (hf_json_from_gpt_config()).
/// Both files are written atomically (temporary file, then rename), weights first.
/// \throws Error `[loralab.io]` naming the file when the directory or a file cannot be written.
template <class T>
void export_hf_gpt2(const model::GptWeights<T>& weights, const std::filesystem::path& dir,
                    DType dtype = DType::F32) {
  const nlohmann::json config = hf_json_from_gpt_config(weights.config(), dtype);
  detail::make_export_dir(dir);
  SafetensorsWriter writer;
  const std::span<const T> flat = weights.flat();
  std::vector<T> buf;
  for (const model::TensorSlot& s : weights.slots()) {
    const T* p = flat.data() + s.offset;
    buf.assign(p, p + s.size());
    if (detail::is_conv1d_weight(s.name)) {  // ours [out x in] -> HF [in x out]
      const std::int64_t in = s.cols, outf = s.rows;
      for (std::int64_t o = 0; o < outf; ++o)
        for (std::int64_t i = 0; i < in; ++i) buf[std::size_t(i * outf + o)] = p[o * in + i];
    }
    writer.add<T>(s.name, detail::hf_shape(s), buf, dtype);
  }
  writer.set_metadata("format", "pt");
  writer.write(dir / kHfWeightsFile);
  detail::write_text_atomic(dir / kHfConfigFile, config.dump(2) + "\n");
}

}  // namespace loralab::io
