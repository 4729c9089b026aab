/// \file
/// \brief LoRA adapters of a `model::Gpt` in Hugging Face PEFT's format: export to and import
/// from a directory with `adapter_config.json` + `adapter_model.safetensors` (what
/// `PeftModel.save_pretrained` writes and `PeftModel.from_pretrained` reads for a GPT-2), plus an
/// optional loralab sidecar `loralab_masks.safetensors` with LoRA-SP masks.
///
/// **Tensors.** One pair per adapted module, with PEFT's names for a `GPT2LMHeadModel` under
/// `task_type="CAUSAL_LM"`:
/// `base_model.model.transformer.h.{l}.{attn.c_attn|attn.c_proj|mlp.c_fc|mlp.c_proj}.lora_A.weight`
/// [r x in] and `....lora_B.weight` [out x r]. PEFT keeps lora_A/lora_B in nn.Linear layout even
/// for GPT-2's Conv1D (fan_in_fan_out=true only transposes the merged delta), which is loralab's
/// layout, so nothing is transposed. Stored in T's dtype unless PeftExportOptions::dtype says
/// otherwise; metadata `{"format": "pt"}` as PEFT writes. Import also accepts the prefix
/// `base_model.model.` without `transformer.` (a PEFT model around a bare `GPT2Model`).
///
/// **adapter_config.json.** The fields of PEFT's LoraConfig as of PEFT 0.7 (the first version
/// with use_rslora), and no others, since some PEFT versions reject unknown fields:
/// peft_type "LORA", task_type, r, lora_alpha, lora_dropout (the InputDropout rate, else 0),
/// target_modules, fan_in_fan_out true, bias "none", use_rslora (true under RsLoraScale),
/// init_lora_weights (true, or "gaussian" under GaussianA), inference_mode true,
/// base_model_name_or_path, modules_to_save/layers_to_transform/layers_pattern/revision/
/// auto_mapping null, rank_pattern/alpha_pattern {}.
///
/// **target_modules.** A list of module-name suffixes, which PEFT matches as
/// `name == t or name.endswith("." + t)`. PEFT's usual GPT-2 names are "c_attn", "c_proj",
/// "c_fc", but "c_proj" would select both attn.c_proj and mlp.c_proj, so loralab writes exactly
/// what it adapted, in Module order: "c_attn", "attn.c_proj", "c_fc", "mlp.c_proj" (each only when
/// targeted). On import, any list PEFT accepts works ("c_proj" = both projections, dotted
/// suffixes, full names) as does a regex string (PEFT's re.fullmatch, here std::regex_match on
/// `transformer.h.{l}.<module>` and `h.{l}.<module>`), provided it selects the same modules in
/// every layer and nothing loralab's blocks do not have.
///
/// **LoRA-SP masks (loralab only).** PEFT has no notion of frozen adapter entries, so the PEFT
/// files stay clean and an adapter type with a RandomMask also writes
/// `loralab_masks.safetensors`: for every adapted module, `<PEFT key with .mask instead of
/// .weight>` as I64 0/1 (1 = trainable) in the shape of its factor, and `__metadata__` with
/// magic "loralab-masks", version "1", seed, mask_sampling, frozen_percent, the module-id rule
/// (4 * layer + module) and the adapter policies, from which the masks can also be redrawn.
/// Import restores the masks when the sidecar is present (and the model's adapter type has a
/// mask); without it, the model keeps the masks drawn from its own seed. Export without masks
/// removes a stale sidecar from the directory.
///
/// **Sharing models (PureSharing, MixtureOfShards, Prolora).** Export writes every block's
/// assembled A_i [r x in] and B_i [out x r] (re-assembled from the pools first) as a plain rank-r
/// LoRA with the model's alpha and target modules: at inference a MoS model is a LoRA of rank r,
/// so HF PEFT (or a loralab `Adapter<Rank<r>>` model) loads it and computes the same function.
/// The pools and index tables are not in PEFT's format, so import into a sharing model is refused;
/// its own compact format is io/shard_pools.hpp (save_shard_pools / load_shard_pools).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include "loralab/adapter.hpp"
#include "loralab/core/error.hpp"
#include "loralab/cpu/adapted_linear.hpp"
#include "loralab/io/hf_gpt2.hpp"
#include "loralab/io/safetensors.hpp"
#include "loralab/model/gpt.hpp"
#include "loralab/model/weights.hpp"

namespace loralab::io {

/// \ingroup io
/// \brief File name of PEFT's adapter configuration.
inline constexpr const char* kPeftConfigFile = "adapter_config.json";
/// \ingroup io
/// \brief File name of PEFT's adapter weights.
inline constexpr const char* kPeftWeightsFile = "adapter_model.safetensors";
/// \ingroup io
/// \brief File name of loralab's LoRA-SP mask sidecar (not part of PEFT's format).
inline constexpr const char* kLoralabMasksFile = "loralab_masks.safetensors";

/// \ingroup io
/// \brief Which factor of an adapter a key names.
enum class LoraFactor {
  A,  ///< lora_A [r x in]
  B,  ///< lora_B [out x r]
};

/// \ingroup io
/// \brief PEFT's key of a factor, e.g.
/// `base_model.model.transformer.h.0.attn.c_attn.lora_A.weight`.
inline std::string peft_lora_key(int layer, model::Module m, LoraFactor f) {
  return "base_model.model.transformer.h." + std::to_string(layer) + "." + model::module_name(m) +
         (f == LoraFactor::A ? ".lora_A.weight" : ".lora_B.weight");
}

/// \ingroup io
/// \brief The sidecar key of a factor's mask: the PEFT key with `.mask` for `.weight`.
inline std::string loralab_mask_key(int layer, model::Module m, LoraFactor f) {
  return "base_model.model.transformer.h." + std::to_string(layer) + "." + model::module_name(m) +
         (f == LoraFactor::A ? ".lora_A.mask" : ".lora_B.mask");
}

/// \ingroup io
/// \brief The target_modules list loralab writes for `targets`: "c_attn", "attn.c_proj",
/// "c_fc", "mlp.c_proj" (in that order, the targeted ones only), each matching exactly one
/// module per block under PEFT's suffix rule.
inline nlohmann::json peft_target_modules(const model::ModuleSet& targets) {
  constexpr const char* names[] = {"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"};
  nlohmann::json out = nlohmann::json::array();
  for (int m = 0; m < model::kModulesPerBlock; ++m)
    if (targets.contains(static_cast<model::Module>(m))) out.push_back(names[m]);
  return out;
}

namespace detail {

inline std::string module_set_string(const model::ModuleSet& s) {
  std::string out = "{";
  for (int m = 0; m < model::kModulesPerBlock; ++m)
    if (s.contains(static_cast<model::Module>(m)))
      out += std::string(out.size() > 1 ? ", " : "") +
             model::module_name(static_cast<model::Module>(m));
  return out + "}";
}

inline bool same_modules(const model::ModuleSet& a, const model::ModuleSet& b) {
  for (int m = 0; m < model::kModulesPerBlock; ++m)
    if (a.on[m] != b.on[m]) return false;
  return true;
}

/// PEFT's list rule: key == t or key ends with "." + t.
inline bool peft_suffix_match(std::string_view key, std::string_view t) {
  return key == t ||
         (key.size() > t.size() && key.ends_with(t) && key[key.size() - t.size() - 1] == '.');
}

/// The ModuleSet of one layer under a target_modules value (list of suffixes or a regex).
inline model::ModuleSet peft_layer_targets(const nlohmann::json& targets, int layer,
                                           const std::string& src, std::vector<bool>* entry_used) {
  model::ModuleSet s;
  for (bool& b : s.on) b = false;
  const std::string h = "h." + std::to_string(layer) + ".";
  for (int m = 0; m < model::kModulesPerBlock; ++m) {
    const std::string name = h + model::module_name(static_cast<model::Module>(m));
    const std::string full = "transformer." + name;
    if (targets.is_string()) {
      try {
        const std::regex re(targets.get<std::string>());
        s.on[m] = std::regex_match(full, re) || std::regex_match(name, re);
      } catch (const std::regex_error& e) {
        LORALAB_FAIL("[loralab.io] ", src, ": target_modules regex ", json_excerpt(targets),
                     " is not a valid regular expression: ", e.what());
      }
      continue;
    }
    for (std::size_t k = 0; k < targets.size(); ++k) {
      const std::string t = targets[k].get<std::string>();
      if (peft_suffix_match(full, t)) {
        s.on[m] = true;
        if (entry_used) (*entry_used)[k] = true;
      }
    }
  }
  return s;
}

/// alpha as PEFT writes it: an integer when it is one.
inline nlohmann::json alpha_json(double alpha) {
  if (std::isfinite(alpha) && alpha == std::floor(alpha) && std::abs(alpha) < 9.0e15)
    return nlohmann::json(static_cast<std::int64_t>(alpha));
  return nlohmann::json(alpha);
}

/// Every (layer, module, adapter) of a model in adapter mode; errors when there is none.
template <class Spec, class T>
struct AdapterRef {
  int layer;
  model::Module module;
  cpu::AdaptedLinear<Spec, T>* adapter;
};

template <class Spec, class T>
std::vector<AdapterRef<Spec, T>> adapters_of(model::Gpt<Spec, T>& gpt, const char* fn) {
  std::vector<AdapterRef<Spec, T>> out;
  if (gpt.options().mode == model::TrainMode::adapters)
    for (int l = 0; l < gpt.config().layers; ++l)
      for (int m = 0; m < model::kModulesPerBlock; ++m)
        if (auto* a = gpt.adapter(l, static_cast<model::Module>(m)))
          out.push_back({l, static_cast<model::Module>(m), a});
  LORALAB_CHECK(!out.empty(), "[loralab.state] ", fn,
                ": the model carries no adapters (full fine-tuning mode or no target modules)");
  return out;
}

template <class Spec>
constexpr int frozen_percent_of() {
  if constexpr (requires { Spec::freeze::frozen_percent; })
    return Spec::freeze::frozen_percent;
  else
    return 0;
}

/// The policy name of a sharing scheme, for messages.
inline const char* share_policy_name(ShareKind kind) {
  switch (kind) {
    case ShareKind::pure:
      return "PureSharing";
    case ShareKind::mixture_of_shards:
      return "MixtureOfShards";
    case ShareKind::prolora:
      return "Prolora";
    default:
      return "PrivateFactors";
  }
}

/// Tensor names of `file` that are not in `used`, as an error.
inline void reject_unexpected(const SafetensorsFile& file,
                              const std::set<std::string, std::less<>>& used,
                              const std::string& why) {
  std::vector<std::string> extra;
  for (const std::string& n : file.names())
    if (!used.contains(n)) extra.push_back(n);
  if (extra.empty()) return;
  std::ostringstream os;
  for (std::size_t i = 0; i < extra.size() && i < 6; ++i)
    os << (i ? ", " : "") << "'" << extra[i] << "'";
  if (extra.size() > 6) os << ", ... (" << extra.size() << " in all)";
  LORALAB_FAIL("[loralab.io] ", file.source(), ": unexpected tensor(s) ", os.str(), " ", why);
}

}  // namespace detail

/// \ingroup io
/// \brief Which modules of a GPT-2 block a PEFT target_modules value selects (see the file
/// comment for the rules).
/// \throws Error `[loralab.io] <source>: ...` when the value is neither a list of strings nor a
/// string, a list entry matches no linear of a block (e.g. "lm_head", "q_proj"), a regex is
/// invalid, or the selection differs between layers (layer-specific adapters are not supported).
inline model::ModuleSet module_set_from_peft(const nlohmann::json& target_modules, int layers,
                                             const std::string& source = "<json>") {
  const bool list = target_modules.is_array();
  LORALAB_CHECK(list || target_modules.is_string(), "[loralab.io] ", source,
                ": target_modules must be a list of module names or a regex string, got ",
                detail::json_excerpt(target_modules));
  if (list)
    for (const auto& t : target_modules)
      LORALAB_CHECK(t.is_string(), "[loralab.io] ", source,
                    ": target_modules entries must be strings, got ", detail::json_excerpt(t));
  std::vector<bool> used(list ? target_modules.size() : 0, false);
  const model::ModuleSet first = detail::peft_layer_targets(target_modules, 0, source, &used);
  for (int l = 1; l < layers; ++l) {
    const model::ModuleSet s = detail::peft_layer_targets(target_modules, l, source, &used);
    LORALAB_CHECK(detail::same_modules(s, first), "[loralab.io] ", source, ": target_modules ",
                  detail::json_excerpt(target_modules), " select ",
                  detail::module_set_string(first), " in layer 0 but ",
                  detail::module_set_string(s), " in layer ", l,
                  "; loralab adapts the same modules in every layer");
  }
  for (std::size_t k = 0; k < used.size(); ++k)
    LORALAB_CHECK(used[k], "[loralab.io] ", source, ": target_modules entry ",
                  detail::json_excerpt(target_modules[k]),
                  " matches no linear of a GPT-2 block (attn.c_attn, attn.c_proj, mlp.c_fc, "
                  "mlp.c_proj); other modules cannot carry loralab adapters");
  return first;
}

/// \ingroup io
/// \brief Options of export_peft_lora().
struct PeftExportOptions {
  std::optional<DType> dtype;           ///< stored dtype of lora_A/lora_B; default: T's (F32, F64)
  std::string base_model_name_or_path;  ///< written as is (PEFT loads the base from it)
  std::string task_type = "CAUSAL_LM";  ///< PEFT task type (keys assume a GPT2LMHeadModel)
};

/// \ingroup io
/// \brief The adapter_config.json object of `gpt`'s adapters (see the file comment).
/// \throws Error `[loralab.state]` when the model carries no adapters.
template <AdapterSpec Spec, class T>
nlohmann::json peft_adapter_config(model::Gpt<Spec, T>& gpt, const PeftExportOptions& opts = {}) {
  const auto refs = detail::adapters_of(gpt, "peft_adapter_config");
  const AdapterConfig& ac = gpt.options().adapter;
  nlohmann::json j;
  j["alpha_pattern"] = nlohmann::json::object();
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = opts.base_model_name_or_path;
  j["bias"] = "none";
  j["fan_in_fan_out"] = true;
  j["inference_mode"] = true;
  if constexpr (Spec::init::gaussian)
    j["init_lora_weights"] = "gaussian";
  else
    j["init_lora_weights"] = true;
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["lora_alpha"] = detail::alpha_json(ac.alpha);
  j["lora_dropout"] = Spec::dropout::has_input_dropout ? ac.dropout : 0.0;
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "LORA";
  j["r"] = refs.front().adapter->rank();
  j["rank_pattern"] = nlohmann::json::object();
  j["revision"] = nullptr;
  j["target_modules"] = peft_target_modules(gpt.options().targets);
  j["task_type"] = opts.task_type;
  j["use_rslora"] = std::is_same_v<typename Spec::scaling, RsLoraScale>;
  return j;
}

/// \ingroup io
/// \brief Writes the adapters of `gpt` (not modified; non-const only because Gpt::adapter is)
/// into `dir` (created if missing) in PEFT's format: adapter_model.safetensors, then, for an
/// adapter type with a RandomMask, loralab_masks.safetensors (else a stale one is removed), then
/// adapter_config.json; each file atomically.
/// For a sharing model (Spec::shares_factors) the factors are first re-assembled from the pools
/// (Gpt::sync_shared_factors), so the file holds what the next forward would use: a plain LoRA of
/// rank r per module (see the file comment).
/// \throws Error `[loralab.state]` when the model carries no adapters, `[loralab.io]` naming the
/// file when writing fails.
template <AdapterSpec Spec, class T>
void export_peft_lora(model::Gpt<Spec, T>& gpt, const std::filesystem::path& dir,
                      const PeftExportOptions& opts = {}) {
  const auto refs = detail::adapters_of(gpt, "export_peft_lora");
  if constexpr (Spec::shares_factors) gpt.sync_shared_factors();  // pools may have moved
  const nlohmann::json config = peft_adapter_config(gpt, opts);
  const DType dtype = opts.dtype.value_or(dtype_of<T>);
  detail::make_export_dir(dir);

  SafetensorsWriter weights;
  std::vector<T> buf;
  for (const auto& r : refs) {
    const auto& a = *r.adapter;
    const auto A = a.A();
    const auto B = a.B();
    buf.assign(A.data(), A.data() + A.size());
    weights.add<T>(peft_lora_key(r.layer, r.module, LoraFactor::A), {A.rows(), A.cols()}, buf,
                   dtype);
    buf.assign(B.data(), B.data() + B.size());
    weights.add<T>(peft_lora_key(r.layer, r.module, LoraFactor::B), {B.rows(), B.cols()}, buf,
                   dtype);
  }
  weights.set_metadata("format", "pt");
  weights.write(dir / kPeftWeightsFile);

  const std::filesystem::path sidecar = dir / kLoralabMasksFile;
  if constexpr (Spec::freeze::has_mask) {
    SafetensorsWriter masks;
    std::vector<std::int64_t> m;
    for (const auto& r : refs) {
      const auto& a = *r.adapter;
      const auto mA = a.mask_A();
      const auto mB = a.mask_B();
      m.assign(mA.begin(), mA.end());
      masks.add<std::int64_t>(loralab_mask_key(r.layer, r.module, LoraFactor::A),
                              {a.A().rows(), a.A().cols()}, m);
      m.assign(mB.begin(), mB.end());
      masks.add<std::int64_t>(loralab_mask_key(r.layer, r.module, LoraFactor::B),
                              {a.B().rows(), a.B().cols()}, m);
    }
    const AdapterConfig& ac = gpt.options().adapter;
    masks.set_metadata("magic", "loralab-masks");
    masks.set_metadata("version", "1");
    masks.set_metadata("seed", std::to_string(ac.seed));
    masks.set_metadata("mask_sampling",
                       ac.mask_sampling == MaskSampling::exact ? "exact" : "bernoulli");
    masks.set_metadata("frozen_percent", std::to_string(detail::frozen_percent_of<Spec>()));
    masks.set_metadata(
        "module_id", "4 * layer + module (attn.c_attn 0, attn.c_proj 1, mlp.c_fc 2, mlp.c_proj 3)");
    masks.set_metadata("init", Spec::init::gaussian ? "GaussianA" : "KaimingUniformA");
    masks.set_metadata("scaling", std::is_same_v<typename Spec::scaling, RsLoraScale>
                                      ? "RsLoraScale"
                                      : "AlphaOverRank");
    masks.set_metadata("meaning",
                       "1 = trainable, 0 = frozen at its value in adapter_model.safetensors");
    masks.write(sidecar);
  } else {
    std::error_code ec;
    std::filesystem::remove(sidecar, ec);
    LORALAB_CHECK(!ec, "[loralab.io] ", sidecar.string(),
                  ": cannot remove the stale mask sidecar: ", ec.message());
  }
  detail::write_text_atomic(dir / kPeftConfigFile, config.dump(2) + "\n");
}

/// \ingroup io
/// \brief What import_peft_lora() did besides loading A and B.
struct PeftImportResult {
  bool masks_restored = false;  ///< loralab_masks.safetensors was present and its masks were set
};

/// \ingroup io
/// \brief Loads a PEFT LoRA adapter directory into the adapters of `gpt`, which must have been
/// built with the same target modules, rank, lora_alpha and scaling (use_rslora). Restores
/// LoRA-SP masks from loralab_masks.safetensors when present. Every file is checked before the
/// model is touched; gradients are zeroed afterwards. lora_dropout, init_lora_weights,
/// fan_in_fan_out and task_type are not compared (they do not change the loaded function).
/// \throws Error `[loralab.io] <file>: ...` naming both values on a rank, alpha, scaling or
/// target mismatch, naming the key on a missing, mis-shaped or unexpected tensor, on an
/// unsupported config (peft_type other than LORA, bias other than "none", DoRA, rank/alpha
/// patterns, layers_to_transform not covering every layer, modules_to_save), and on masks for an
/// adapter type without one, and for a model whose adapters share factors (PureSharing,
/// MixtureOfShards, Prolora: use load_shard_pools); `[loralab.state]` when the model carries no
/// adapters or one is merged.
template <AdapterSpec Spec, class T>
PeftImportResult import_peft_lora(model::Gpt<Spec, T>& gpt, const std::filesystem::path& dir) {
  if constexpr (Spec::shares_factors)
    LORALAB_FAIL("[loralab.io] ", dir.string(),
                 ": cannot import a PEFT LoRA adapter into a model whose adapters share factors "
                 "(sharing policy ",
                 detail::share_policy_name(Spec::share::scheme.kind),
                 "): its A_i and B_i are views assembled from shard pools at every forward, "
                 "so independent per-module factors have nowhere to go; load the compact format "
                 "(io::load_shard_pools, a file written by io::save_shard_pools) instead, or "
                 "import the PEFT adapter into a plain LoRA model (Adapter<Rank<r>>) to serve it");
  const auto refs = detail::adapters_of(gpt, "import_peft_lora");
  for (const auto& r : refs)
    LORALAB_CHECK(!r.adapter->merged(), "[loralab.state] import_peft_lora: the adapter of h.",
                  r.layer, ".", model::module_name(r.module),
                  " is merged; unmerge() before loading adapters");
  const int layers = gpt.config().layers;
  const int rank = refs.front().adapter->rank();

  // ---- adapter_config.json
  const std::filesystem::path cfg_path = dir / kPeftConfigFile;
  const std::string csrc = cfg_path.string();
  const nlohmann::json j = detail::read_json_file(cfg_path);
  auto field = [&](const char* key) -> const nlohmann::json* {
    const auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
  };
  auto absent_or_empty = [&](const char* key) {
    const nlohmann::json* v = field(key);
    return v == nullptr || v->is_null() || ((v->is_object() || v->is_array()) && v->empty());
  };
  const nlohmann::json* peft_type = field("peft_type");
  LORALAB_CHECK(peft_type && peft_type->is_string() && peft_type->get<std::string>() == "LORA",
                "[loralab.io] ", csrc, ": unsupported adapter: peft_type=",
                peft_type ? detail::json_excerpt(*peft_type) : "<missing>", " (expected \"LORA\")");
  const nlohmann::json* r_field = field("r");
  LORALAB_CHECK(r_field && r_field->is_number_integer(), "[loralab.io] ", csrc,
                ": field 'r' must be an integer, got ",
                r_field ? detail::json_excerpt(*r_field) : "<missing>");
  LORALAB_CHECK(r_field->get<std::int64_t>() == rank, "[loralab.io] ", csrc,
                ": rank mismatch: r=", r_field->get<std::int64_t>(),
                " in the file, but the model's adapters have rank ", rank);
  const nlohmann::json* alpha = field("lora_alpha");
  LORALAB_CHECK(alpha && alpha->is_number(), "[loralab.io] ", csrc,
                ": field 'lora_alpha' must be a number, got ",
                alpha ? detail::json_excerpt(*alpha) : "<missing>");
  LORALAB_CHECK(alpha->get<double>() == gpt.options().adapter.alpha, "[loralab.io] ", csrc,
                ": lora_alpha mismatch: ", alpha->get<double>(),
                " in the file, but the model's adapters use alpha=", gpt.options().adapter.alpha);
  bool rslora = false;
  if (const nlohmann::json* v = field("use_rslora"); v && !v->is_null()) {
    LORALAB_CHECK(v->is_boolean(), "[loralab.io] ", csrc,
                  ": field 'use_rslora' must be true or false, got ", detail::json_excerpt(*v));
    rslora = v->get<bool>();
  }
  constexpr bool model_rslora = std::is_same_v<typename Spec::scaling, RsLoraScale>;
  LORALAB_CHECK(rslora == model_rslora, "[loralab.io] ", csrc,
                ": scaling mismatch: use_rslora=", rslora ? "true" : "false",
                " in the file, but the model's adapters scale by ",
                model_rslora ? "alpha/sqrt(r) (RsLoraScale)" : "alpha/r (AlphaOverRank)");
  if (const nlohmann::json* v = field("bias"); v && !v->is_null())
    LORALAB_CHECK(v->is_string() && v->get<std::string>() == "none", "[loralab.io] ", csrc,
                  ": unsupported adapter: bias=", detail::json_excerpt(*v), " (only \"none\")");
  if (const nlohmann::json* v = field("use_dora"); v && !v->is_null())
    LORALAB_CHECK(v->is_boolean() && !v->get<bool>(), "[loralab.io] ", csrc,
                  ": unsupported adapter: use_dora=", detail::json_excerpt(*v));
  for (const char* key : {"rank_pattern", "alpha_pattern", "modules_to_save"})
    LORALAB_CHECK(absent_or_empty(key), "[loralab.io] ", csrc, ": unsupported adapter: ", key, "=",
                  detail::json_excerpt(*field(key)),
                  " (loralab needs one rank and alpha for every module)");
  if (const nlohmann::json* v = field("layers_to_transform"); v && !v->is_null()) {
    std::set<std::int64_t> listed;
    if (v->is_number_integer()) listed.insert(v->get<std::int64_t>());
    if (v->is_array())
      for (const auto& e : *v)
        if (e.is_number_integer()) listed.insert(e.get<std::int64_t>());
    bool all = std::int64_t(listed.size()) == layers;
    for (int l = 0; l < layers && all; ++l) all = listed.contains(l);
    LORALAB_CHECK(all, "[loralab.io] ", csrc,
                  ": unsupported adapter: layers_to_transform=", detail::json_excerpt(*v),
                  " (loralab adapts all ", layers, " layers)");
  }
  const nlohmann::json* tm = field("target_modules");
  LORALAB_CHECK(tm != nullptr, "[loralab.io] ", csrc, ": missing field 'target_modules'");
  const model::ModuleSet file_targets = module_set_from_peft(*tm, layers, csrc);
  LORALAB_CHECK(detail::same_modules(file_targets, gpt.options().targets), "[loralab.io] ", csrc,
                ": target mismatch: target_modules ", detail::json_excerpt(*tm), " select ",
                detail::module_set_string(file_targets), ", but the model's adapters are on ",
                detail::module_set_string(gpt.options().targets));

  // ---- adapter_model.safetensors
  const SafetensorsFile wfile = SafetensorsFile::load(dir / kPeftWeightsFile);
  const std::string wsrc = wfile.source();
  const bool bare =
      !wfile.contains(peft_lora_key(refs.front().layer, refs.front().module, LoraFactor::A)) &&
      wfile.contains("base_model.model.h." + std::to_string(refs.front().layer) + "." +
                     model::module_name(refs.front().module) + ".lora_A.weight");
  auto key_of = [&](const auto& r, LoraFactor f) {
    std::string k = peft_lora_key(r.layer, r.module, f);
    if (bare)
      k.erase(std::string_view("base_model.model.").size(),
              std::string_view("transformer.").size());
    return k;
  };
  std::set<std::string, std::less<>> used;
  std::vector<std::vector<T>> staged;  // A, B per adapter
  for (const auto& r : refs) {
    const auto& a = *r.adapter;
    for (LoraFactor f : {LoraFactor::A, LoraFactor::B}) {
      const std::string key = key_of(r, f);
      const std::vector<std::int64_t> want =
          f == LoraFactor::A ? std::vector<std::int64_t>{rank, a.in_features()}
                             : std::vector<std::int64_t>{a.out_features(), rank};
      LORALAB_CHECK(wfile.contains(key), "[loralab.io] ", wsrc, ": missing tensor '", key,
                    "' (the model adapts ", model::module_name(r.module), " in every layer)");
      const TensorInfo& info = wfile.info(key);
      LORALAB_CHECK(info.shape == want, "[loralab.io] ", wsrc, ": tensor '", key, "' has shape ",
                    detail::shape_string(info.shape), ", expected ", detail::shape_string(want),
                    f == LoraFactor::A ? " (lora_A [r x in]" : " (lora_B [out x r]",
                    " with the model's rank ", rank, ")");
      staged.push_back(wfile.read<T>(key));
      used.insert(key);
    }
  }
  detail::reject_unexpected(wfile, used, "(adapters on modules the model does not target?)");

  // ---- loralab_masks.safetensors (optional)
  const std::filesystem::path mpath = dir / kLoralabMasksFile;
  std::error_code ec;
  const bool have_masks = std::filesystem::exists(mpath, ec);
  std::vector<std::vector<std::int64_t>> masks;
  if (have_masks) {
    LORALAB_CHECK(
        Spec::freeze::has_mask, "[loralab.io] ", mpath.string(),
        ": the adapter has LoRA-SP masks, but the model's adapter type has no freeze mask "
        "(build it with RandomMask<p>, or delete the sidecar to drop the masks)");
    const SafetensorsFile mfile = SafetensorsFile::load(mpath);
    const auto magic = mfile.metadata().find("magic");
    LORALAB_CHECK(magic != mfile.metadata().end() && magic->second == "loralab-masks",
                  "[loralab.io] ", mpath.string(),
                  ": not a loralab mask sidecar (metadata magic is not \"loralab-masks\")");
    std::set<std::string, std::less<>> mused;
    for (const auto& r : refs) {
      const auto& a = *r.adapter;
      for (LoraFactor f : {LoraFactor::A, LoraFactor::B}) {
        const std::string key = loralab_mask_key(r.layer, r.module, f);
        const std::vector<std::int64_t> want =
            f == LoraFactor::A ? std::vector<std::int64_t>{rank, a.in_features()}
                               : std::vector<std::int64_t>{a.out_features(), rank};
        LORALAB_CHECK(mfile.contains(key), "[loralab.io] ", mpath.string(), ": missing mask '", key,
                      "'");
        std::vector<std::int64_t> v = mfile.read<std::int64_t>(key, want);
        for (std::int64_t x : v)
          LORALAB_CHECK(x == 0 || x == 1, "[loralab.io] ", mpath.string(), ": mask '", key,
                        "' holds ", x, "; masks are 0 (frozen) or 1 (trainable)");
        masks.push_back(std::move(v));
        mused.insert(key);
      }
    }
    detail::reject_unexpected(mfile, mused, "(masks of modules the model does not target?)");
  }

  // ---- every check passed: write into the model
  std::size_t k = 0;
  for (const auto& r : refs) {
    auto& a = *r.adapter;
    const std::vector<T>& A = staged[2 * k];
    const std::vector<T>& B = staged[2 * k + 1];
    std::copy(A.begin(), A.end(), a.A().data());
    std::copy(B.begin(), B.end(), a.B().data());
    if constexpr (Spec::freeze::has_mask) {
      if (have_masks) {
        const std::vector<std::int64_t>& mA = masks[2 * k];
        const std::vector<std::int64_t>& mB = masks[2 * k + 1];
        std::vector<std::uint8_t> m(mA.size() + mB.size());
        for (std::size_t i = 0; i < mA.size(); ++i) m[i] = static_cast<std::uint8_t>(mA[i]);
        for (std::size_t i = 0; i < mB.size(); ++i)
          m[mA.size() + i] = static_cast<std::uint8_t>(mB[i]);
        a.set_mask(m);
      }
    }
    a.zero_grad();
    ++k;
  }
  return {have_masks};
}

}  // namespace loralab::io
