// PEFT LoRA adapters. Mirrors peft/tuners/lora (LoraConfig, LoraLayer.update_layer)
// and peft/tuners/tuners_utils.py (check_target_module_exists, get_pattern_key).
#include "lora/adapter.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <memory>
#include <set>
#include <stdexcept>
#include <vector>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include "core/hash.h"
#include "io/file.h"
#include "io/safetensors.h"

namespace philora::lora {
namespace {

using json = nlohmann::ordered_json;  // keeps pattern keys in file order

constexpr const char* kPhi3Targets = "qkv_proj, o_proj, gate_up_proj, down_proj, lm_head";
constexpr Target kLayerTargetList[] = {Target::qkv, Target::o, Target::gate_up, Target::down};

// A compiled regex with Python `re` semantics for what adapter configs use (PCRE2
// shares the syntax, `$` included). Matches are anchored at the subject's start.
class Regex {
 public:
  static Expected<Regex> compile(const std::string& pattern, const std::string& shown) {
    int err = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_ANCHORED, &err, &offset, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      return Status::errorf("invalid regex '{}': {}", shown, reinterpret_cast<const char*>(msg));
    }
    Regex r;
    r.code_ = std::shared_ptr<pcre2_code>(code, pcre2_code_free);
    return r;
  }
  // re.fullmatch(pattern, s)
  static Expected<Regex> full(const std::string& pattern) {
    return compile("(?:" + pattern + ")\\z", pattern);
  }

  // Group 1 of the match (or "" when the pattern has none); nullopt when no match.
  std::optional<std::string> match(const std::string& s) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_.get(), nullptr);
    const int rc = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0, 0,
                               md, nullptr);
    std::optional<std::string> out;
    if (rc > 0) {
      out.emplace();
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      if (rc > 1 && ov[2] != PCRE2_UNSET) out->assign(s, ov[2], ov[3] - ov[2]);
    }
    pcre2_match_data_free(md);
    return out;
  }

 private:
  std::shared_ptr<pcre2_code> code_;
};

bool full_match(const std::string& pattern, const std::string& s) {
  auto re = Regex::full(pattern);
  return re.ok() && re->match(s).has_value();
}

// re.match(rf"(.*\.)?({key})$", s): PEFT's pattern-key rule.
bool pattern_key_matches(const std::string& key, const std::string& s) {
  auto re = Regex::compile("(.*\\.)?(" + key + ")$", key);
  return re.ok() && re->match(s).has_value();
}

// `name` equals `key` or ends with "." + key (PEFT's list form).
bool name_matches(const std::string& name, const std::string& key) {
  return name == key || (name.size() > key.size() && name.ends_with(key) &&
                         name[name.size() - key.size() - 1] == '.');
}

using Dims = ModuleDims;

}  // namespace

ModuleDims module_dims(const model::Phi3Config& c, Target t) {
  switch (t) {
    case Target::qkv:
      return {c.hidden_size, c.qkv_size()};
    case Target::o:
      return {c.q_size(), c.hidden_size};
    case Target::gate_up:
      return {c.hidden_size, 2 * c.intermediate_size};
    case Target::down:
      return {c.intermediate_size, c.hidden_size};
    case Target::lm_head:
      return {c.hidden_size, c.vocab_size};
  }
  return {};
}

namespace {

// ---- adapter_config.json -----------------------------------------------------------------

// Reads typed fields; every error names the file and the field.
struct ConfigReader {
  const json& j;
  const std::string& origin;

  const json* get(const char* key) const {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  }
  Status bad(const char* key, const char* expected) const {
    return Status::errorf("{}: field '{}' must be {}, found {}", origin, key, expected,
                          get(key)->dump());
  }
  // A string, or a list of strings; null/absent leaves both outputs empty.
  Status string_or_list(const char* key, std::vector<std::string>* list,
                        std::optional<std::string>* str) const {
    const json* v = get(key);
    if (!v) return Status();
    if (v->is_string()) {
      *str = v->get<std::string>();
      return Status();
    }
    if (!v->is_array()) return bad(key, "a string or a list of strings");
    for (const json& x : *v) {
      if (!x.is_string()) return bad(key, "a string or a list of strings");
      list->push_back(x.get<std::string>());
    }
    return Status();
  }
};

}  // namespace

const char* target_module_name(Target t) {
  switch (t) {
    case Target::qkv:
      return "qkv_proj";
    case Target::o:
      return "o_proj";
    case Target::gate_up:
      return "gate_up_proj";
    case Target::down:
      return "down_proj";
    case Target::lm_head:
      return "lm_head";
  }
  return "?";
}

std::string module_full_name(int64_t layer, Target t) {
  switch (t) {
    case Target::qkv:
    case Target::o:
      return fmt::format("model.layers.{}.self_attn.{}", layer, target_module_name(t));
    case Target::gate_up:
    case Target::down:
      return fmt::format("model.layers.{}.mlp.{}", layer, target_module_name(t));
    case Target::lm_head:
      return "lm_head";
  }
  return "?";
}

Expected<AdapterConfig> parse_adapter_config(const std::string& json_text,
                                             const std::string& origin) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    return Status::errorf("{}: not valid JSON: {}", origin, e.what());
  }
  if (!j.is_object())
    return Status::errorf("{}: expected a JSON object, found {}", origin, j.type_name());
  ConfigReader rd{j, origin};
  AdapterConfig c;

  if (const json* v = rd.get("peft_type")) {
    if (!v->is_string() || v->get<std::string>() != "LORA")
      return Status::errorf("{}: peft_type is {}, but philora loads only LORA adapters", origin,
                            v->dump());
  }
  if (const json* v = rd.get("use_dora"); v && !(v->is_boolean() && !v->get<bool>()))
    return Status::errorf("{}: use_dora is {}: DoRA adapters are not supported", origin, v->dump());
  if (const json* v = rd.get("modules_to_save"); v && !(v->is_array() && v->empty()))
    return Status::errorf(
        "{}: modules_to_save is {}: adapters that replace whole modules are not supported", origin,
        v->dump());
  if (const json* v = rd.get("bias"); v && !(v->is_string() && v->get<std::string>() == "none"))
    return Status::errorf("{}: bias is {}, expected \"none\" (trained biases are not supported)",
                          origin, v->dump());
  if (const json* v = rd.get("lora_bias"); v && !(v->is_boolean() && !v->get<bool>()))
    return Status::errorf("{}: lora_bias is {}: LoRA biases are not supported", origin, v->dump());
  for (const char* key :
       {"layer_replication", "trainable_token_indices", "alora_invocation_tokens"})
    if (const json* v = rd.get(key); v && !(v->is_array() && v->empty()))
      return Status::errorf("{}: {} is {}: not supported", origin, key, v->dump());
  if (const json* v = rd.get("target_parameters"); v && !(v->is_array() && v->empty()))
    return Status::errorf("{}: target_parameters is {}: not supported", origin, v->dump());

  if (const json* v = rd.get("r")) {
    if (!v->is_number_integer() || v->get<int64_t>() <= 0) return rd.bad("r", "a positive integer");
    c.r = v->get<int64_t>();
  }
  if (const json* v = rd.get("lora_alpha")) {
    if (!v->is_number()) return rd.bad("lora_alpha", "a number");
    c.lora_alpha = v->get<double>();
  }
  for (auto [key, out] : {std::pair<const char*, bool*>{"use_rslora", &c.use_rslora},
                          {"fan_in_fan_out", &c.fan_in_fan_out}}) {
    if (const json* v = rd.get(key)) {
      if (!v->is_boolean()) return rd.bad(key, "true or false");
      *out = v->get<bool>();
    }
  }
  if (const json* v = rd.get("base_model_name_or_path")) {
    if (!v->is_string()) return rd.bad("base_model_name_or_path", "a string");
    c.base_model_name_or_path = v->get<std::string>();
  }

  // target_modules: a list, a regex string, or "all-linear".
  if (!rd.get("target_modules"))
    return Status::errorf("{}: target_modules is missing or null", origin);
  PHILORA_RETURN_IF_ERROR(
      rd.string_or_list("target_modules", &c.target_modules, &c.target_modules_regex));
  if (c.target_modules_regex) {
    std::string lower = *c.target_modules_regex;
    for (char& ch : lower) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    if (lower == "all-linear") {
      // Every linear layer but the output layer (peft _maybe_include_all_linear_layers).
      c.target_modules = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"};
      c.target_modules_regex.reset();
      if (rd.get("layers_to_transform") || rd.get("layers_pattern"))
        return Status::errorf(
            "{}: layers_to_transform / layers_pattern cannot be used when target_modules is a "
            "string",
            origin);
    } else {
      PHILORA_RETURN_IF_ERROR(
          Regex::full(*c.target_modules_regex).status().with_context(origin + ": target_modules"));
    }
  } else if (c.target_modules.empty()) {
    return Status::errorf("{}: target_modules is an empty list", origin);
  }

  PHILORA_RETURN_IF_ERROR(
      rd.string_or_list("exclude_modules", &c.exclude_modules, &c.exclude_modules_regex));
  if (c.exclude_modules_regex)
    PHILORA_RETURN_IF_ERROR(
        Regex::full(*c.exclude_modules_regex).status().with_context(origin + ": exclude_modules"));

  if (const json* v = rd.get("layers_to_transform")) {
    if (c.target_modules_regex)
      return Status::errorf(
          "{}: layers_to_transform cannot be used when target_modules is a string (a regex)",
          origin);
    if (v->is_number_integer()) {
      c.layers_to_transform = {v->get<int64_t>()};
    } else if (v->is_array()) {
      for (const json& x : *v) {
        if (!x.is_number_integer())
          return rd.bad("layers_to_transform", "an integer or a list of integers");
        c.layers_to_transform.push_back(x.get<int64_t>());
      }
    } else {
      return rd.bad("layers_to_transform", "an integer or a list of integers");
    }
  }
  {
    std::optional<std::string> one;
    PHILORA_RETURN_IF_ERROR(rd.string_or_list("layers_pattern", &c.layers_pattern, &one));
    if (one && !one->empty()) c.layers_pattern = {*one};
    if (!c.layers_pattern.empty() && c.target_modules_regex)
      return Status::errorf("{}: layers_pattern cannot be used when target_modules is a string",
                            origin);
    for (const std::string& p : c.layers_pattern)
      PHILORA_RETURN_IF_ERROR(Regex::compile(".*\\." + p + "\\.(\\d+)\\.", p)
                                  .status()
                                  .with_context(origin + ": layers_pattern"));
  }

  if (const json* v = rd.get("rank_pattern")) {
    if (!v->is_object()) return rd.bad("rank_pattern", "an object");
    for (auto it = v->begin(); it != v->end(); ++it) {
      if (!it->is_number_integer() || it->get<int64_t>() <= 0)
        return Status::errorf("{}: rank_pattern['{}'] must be a positive integer, found {}", origin,
                              it.key(), it->dump());
      PHILORA_RETURN_IF_ERROR(Regex::compile("(.*\\.)?(" + it.key() + ")$", it.key())
                                  .status()
                                  .with_context(origin + ": rank_pattern"));
      c.rank_pattern[it.key()] = it->get<int64_t>();
      c.rank_pattern_order.push_back(it.key());
    }
  }
  if (const json* v = rd.get("alpha_pattern")) {
    if (!v->is_object()) return rd.bad("alpha_pattern", "an object");
    for (auto it = v->begin(); it != v->end(); ++it) {
      if (!it->is_number())
        return Status::errorf("{}: alpha_pattern['{}'] must be a number, found {}", origin,
                              it.key(), it->dump());
      PHILORA_RETURN_IF_ERROR(Regex::compile("(.*\\.)?(" + it.key() + ")$", it.key())
                                  .status()
                                  .with_context(origin + ": alpha_pattern"));
      c.alpha_pattern[it.key()] = it->get<double>();
      c.alpha_pattern_order.push_back(it.key());
    }
  }
  return c;
}

bool targets_module(const AdapterConfig& c, const std::string& name) {
  if (c.exclude_modules_regex) {
    if (full_match(*c.exclude_modules_regex, name)) return false;
  } else {
    for (const std::string& k : c.exclude_modules)
      if (name_matches(name, k)) return false;
  }
  if (c.target_modules_regex) return full_match(*c.target_modules_regex, name);
  for (const std::string& k : c.target_modules)
    if (k == name) return true;  // an exact full name skips the layer filter
  bool found = false;
  for (const std::string& k : c.target_modules) found = found || name_matches(name, k);
  if (!found || c.layers_to_transform.empty()) return found;
  // The layer index: re.match(r".*\.[^.]*\.(\d+)\.", name), or with each layers_pattern.
  std::optional<std::string> index;
  if (c.layers_pattern.empty()) {
    if (auto re = Regex::compile(".*\\.[^.]*\\.(\\d+)\\.", "")) index = re->match(name);
  } else {
    for (const std::string& p : c.layers_pattern) {
      if (auto re = Regex::compile(".*\\." + p + "\\.(\\d+)\\.", p)) index = re->match(name);
      if (index) break;
    }
  }
  if (!index || index->empty()) return false;
  int64_t layer = -1;  // digits only (the pattern's \\d+); too many for int64: no layer listed
  const auto [end, err] = std::from_chars(index->data(), index->data() + index->size(), layer);
  if (err != std::errc() || end != index->data() + index->size()) return false;
  for (int64_t l : c.layers_to_transform)
    if (l == layer) return true;
  return false;
}

int64_t module_rank(const AdapterConfig& c, const std::string& name) {
  for (const std::string& k : c.rank_pattern_order)
    if (pattern_key_matches(k, name)) return c.rank_pattern.at(k);
  return c.r;
}

double module_alpha(const AdapterConfig& c, const std::string& name) {
  for (const std::string& k : c.alpha_pattern_order)
    if (pattern_key_matches(k, name)) return c.alpha_pattern.at(k);
  return c.lora_alpha;
}

// ---- adapter_model.safetensors -------------------------------------------------------------

namespace {

// What one tensor name says: which module, and A or B.
struct TensorName {
  int64_t layer = -1;  // -1 for lm_head
  Target target = Target::qkv;
  bool is_b = false;
};

std::string phi3_targets_message() {
  return fmt::format(
      "Phi-3 has the LoRA targets {} (q/k/v are fused into qkv_proj, gate/up into "
      "gate_up_proj)",
      kPhi3Targets);
}

// `[base_model.model.]<module>.lora_{A,B}[.<adapter name>].weight`
Expected<TensorName> parse_tensor_name(const std::string& name, const std::string& file,
                                       int64_t num_layers) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t dot; (dot = name.find('.', start)) != std::string::npos; start = dot + 1)
    parts.push_back(name.substr(start, dot - start));
  parts.push_back(name.substr(start));

  size_t k = 0;
  while (k < parts.size() && parts[k] != "lora_A" && parts[k] != "lora_B" &&
         parts[k] != "lora_embedding_A" && parts[k] != "lora_embedding_B" &&
         parts[k] != "lora_magnitude_vector")
    ++k;
  if (k < parts.size() && parts[k].starts_with("lora_embedding_"))
    return Status::errorf("{}: tensor '{}': embedding LoRA ({}) is not supported; {}", file, name,
                          parts[k], phi3_targets_message());
  if (k < parts.size() && parts[k] == "lora_magnitude_vector")
    return Status::errorf("{}: tensor '{}': DoRA magnitude vectors are not supported", file, name);
  const size_t rest = parts.size() - k;
  if (k == parts.size() || k == 0 || !(rest == 2 || rest == 3) || parts.back() != "weight")
    return Status::errorf(
        "{}: tensor '{}' is not a LoRA weight philora understands (expected "
        "'base_model.model.<module>.lora_A.weight' or '.lora_B.weight')",
        file, name);

  TensorName out;
  out.is_b = parts[k] == "lora_B";
  std::vector<std::string> mod(parts.begin(), parts.begin() + long(k));
  if (mod.size() >= 2 && mod[0] == "base_model" && mod[1] == "model")
    mod.erase(mod.begin(), mod.begin() + 2);
  std::string module;
  for (size_t i = 0; i < mod.size(); ++i) module += (i ? "." : "") + mod[i];

  if (module == "lm_head") {
    out.target = Target::lm_head;
    return out;
  }
  const std::string& leaf = mod.back();
  std::optional<Target> target;
  for (Target t : kLayerTargetList)
    if (leaf == target_module_name(t)) target = t;
  if (!target)
    return Status::errorf("{}: tensor '{}' is for module '{}' ({}), which Phi-3 does not have; {}",
                          file, name, leaf, module, phi3_targets_message());
  const bool attn = *target == Target::qkv || *target == Target::o;
  const bool ok_shape = mod.size() == 5 && mod[0] == "model" && mod[1] == "layers" &&
                        mod[3] == (attn ? "self_attn" : "mlp") && !mod[2].empty() &&
                        mod[2].size() <= 9 &&
                        mod[2].find_first_not_of("0123456789") == std::string::npos;
  if (!ok_shape)
    return Status::errorf(
        "{}: tensor '{}' is not a LoRA weight philora understands: expected module "
        "'model.layers.<i>.{}.{}', found '{}'",
        file, name, attn ? "self_attn" : "mlp", leaf, module);
  out.layer = std::stoll(mod[2]);
  out.target = *target;
  if (out.layer >= num_layers)
    return Status::errorf(
        "{}: tensor '{}': layer {} is out of range (the base model has {} layers)", file, name,
        out.layer, num_layers);
  return out;
}

Tensor to_bf16_host(const Tensor& v) {
  const size_t n = size_t(v.numel());
  std::shared_ptr<uint16_t[]> buf = std::make_shared<uint16_t[]>(std::max<size_t>(n, 1));
  if (v.dtype == DType::bf16) {
    std::memcpy(buf.get(), v.data, n * sizeof(uint16_t));
  } else {
    std::vector<float> wide(n);
    to_f32(v.data, v.dtype, wide.data(), n);
    for (size_t i = 0; i < n; ++i) buf[i] = f32_to_bf16(wide[i]);
  }
  Tensor t(buf.get(), DType::bf16, {v.shape[0], v.shape[1]});
  t.storage = buf;
  return t;
}

Tensor to_f32_host(const Tensor& v) {
  const size_t n = size_t(v.numel());
  std::shared_ptr<float[]> buf = std::make_shared<float[]>(std::max<size_t>(n, 1));
  to_f32(v.data, v.dtype, buf.get(), n);
  Tensor t(buf.get(), DType::f32, {v.shape[0], v.shape[1]});
  t.storage = buf;
  return t;
}

// The modules of Phi-3 LoRA cannot target (PEFT refuses or embeds them differently).
std::vector<std::string> other_module_names(int64_t num_layers) {
  std::vector<std::string> out = {"model", "model.embed_tokens", "model.layers", "model.norm",
                                  "model.rotary_emb"};
  for (int64_t l = 0; l < num_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}", l);
    for (const char* s : {"", ".self_attn", ".mlp", ".mlp.activation_fn", ".input_layernorm",
                          ".post_attention_layernorm"})
      out.push_back(p + s);
  }
  return out;
}

// Every name in target_modules must pick out a module Phi-3 can adapt.
Status check_targets(const AdapterConfig& c, const model::Phi3Config& base,
                     const std::string& origin) {
  std::vector<std::string> lora_names;
  for (int64_t l = 0; l < base.num_hidden_layers; ++l)
    for (Target t : kLayerTargetList) lora_names.push_back(module_full_name(l, t));
  lora_names.push_back("lm_head");

  if (c.target_modules_regex) {
    for (const std::string& other : other_module_names(base.num_hidden_layers))
      if (full_match(*c.target_modules_regex, other))
        return Status::errorf(
            "{}: target_modules regex '{}' matches '{}', which LoRA cannot target; {}", origin,
            *c.target_modules_regex, other, phi3_targets_message());
    for (const std::string& n : lora_names)
      if (full_match(*c.target_modules_regex, n)) return Status();
    return Status::errorf("{}: target_modules regex '{}' matches no module of Phi-3; {}", origin,
                          *c.target_modules_regex, phi3_targets_message());
  }
  for (const std::string& k : c.target_modules) {
    bool found = false;
    for (const std::string& n : lora_names) found = found || name_matches(n, k);
    if (!found)
      return Status::errorf("{}: target_modules names '{}', which Phi-3 does not have; {}", origin,
                            k, phi3_targets_message());
  }
  for (int64_t l : c.layers_to_transform)
    if (l < 0 || l >= base.num_hidden_layers)
      return Status::errorf(
          "{}: layers_to_transform names layer {}, but the base model has {} layers", origin, l,
          base.num_hidden_layers);
  return Status();
}

// `base_model.model.<module>.base_layer.weight`: PEFT's copy of a targeted
// module's base weight; returns <module> ("lm_head", "model.layers.0.mlp.down_proj").
std::optional<std::string> base_layer_copy(const std::string& name) {
  const std::string prefix = "base_model.model.", suffix = ".base_layer.weight";
  if (!name.starts_with(prefix) || !name.ends_with(suffix) ||
      name.size() <= prefix.size() + suffix.size())
    return std::nullopt;
  return name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
}

// A copy of a base weight must be the base's: same shape, same values.
Status check_base_copy(const io::TensorEntry& copy, const std::string& module,
                       const model::Phi3Config& base, const io::TensorSet* checkpoint,
                       const std::string& file) {
  // Tied embeddings: the checkpoint names the matrix model.embed_tokens.weight.
  const std::string base_name = module == "lm_head" && base.tie_word_embeddings
                                    ? "model.embed_tokens.weight"
                                    : module + ".weight";
  const bool known = module == "lm_head" || module.starts_with("model.layers.");
  if (!known)
    return Status::errorf("{}: tensor '{}' is a copy of the base weight of '{}', which Phi-3 LoRA "
                          "cannot target", file, copy.name, module);
  if (!checkpoint) return Status();
  const io::TensorEntry* mine = checkpoint->find(base_name);
  if (!mine)
    return Status::errorf("{}: tensor '{}' copies the base weight '{}', which the model does not have",
                          file, copy.name, base_name);
  const Tensor& a = copy.view;
  const Tensor& b = mine->view;
  bool same = a.ndim == b.ndim;
  for (int i = 0; same && i < a.ndim; ++i) same = a.shape[size_t(i)] == b.shape[size_t(i)];
  if (!same)
    return Status::errorf("{}: tensor '{}' has shape {}, but the model's '{}' has shape {}", file,
                          copy.name, a.shape_str(), base_name, b.shape_str());
  if (a.dtype == b.dtype && std::memcmp(a.data, b.data, size_t(a.nbytes())) == 0) return Status();
  // Compare as f32 in chunks (both may be bf16, f16 or f32).
  constexpr size_t kChunk = 1 << 16;
  std::vector<float> x(kChunk), y(kChunk);
  const size_t n = size_t(a.numel());
  for (size_t i = 0; i < n; i += kChunk) {
    const size_t m = std::min(kChunk, n - i);
    to_f32(static_cast<const char*>(a.data) + i * dtype_size(a.dtype), a.dtype, x.data(), m);
    to_f32(static_cast<const char*>(b.data) + i * dtype_size(b.dtype), b.dtype, y.data(), m);
    for (size_t k = 0; k < m; ++k)
      if (x[k] != y[k] && !(std::isnan(x[k]) && std::isnan(y[k])))
        return Status::errorf(
            "{}: tensor '{}' is a copy of the base weight '{}' (PEFT saves it when lm_head is a "
            "target) but differs from the model's at element {} ({} vs {}): this adapter was "
            "saved over another base; philora serves every adapter over one shared base (re-save "
            "it with save_embedding_layers=False over this base)",
            file, copy.name, base_name, i + k, x[k], y[k]);
  }
  return Status();
}

// A and B of one module while reading the file.
struct Pair {
  const io::TensorEntry* a = nullptr;
  const io::TensorEntry* b = nullptr;
};

// Adapter::content_hash.
uint64_t content_hash(const Adapter& a) {
  uint64_t h = 0x6c6f72612d616463ull;
  for (int64_t layer = -1; layer < int64_t(a.layers.size()); ++layer)
    for (int t = 0; t <= int(Target::lm_head); ++t) {
      const Target target = Target(t);
      if ((layer < 0) != (target == Target::lm_head)) continue;
      const std::optional<LoraModule>& m = a.module(layer < 0 ? 0 : layer, target);
      if (!m) continue;
      h = hash_combine(h, uint64_t(layer));
      h = hash_combine(h, uint64_t(t));
      h = hash_combine(h, uint64_t(m->rank));
      uint32_t scale_bits;
      std::memcpy(&scale_bits, &m->scale, 4);
      h = hash_combine(h, scale_bits);
      h = hash_combine(h, uint64_t(m->a.dtype));
      h = hash_bytes(h, m->a.data, m->a.nbytes());
      h = hash_bytes(h, m->b.data, m->b.nbytes());
    }
  return h;
}

}  // namespace

Adapter with_host_dtype(const Adapter& adapter, DType dtype) {
  Adapter out = adapter;
  if (dtype != DType::f32 && dtype != DType::bf16)
    throw std::invalid_argument("with_host_dtype: f32 or bf16");
  for (int64_t layer = -1; layer < int64_t(out.layers.size()); ++layer)
    for (int t = 0; t <= int(Target::lm_head); ++t) {
      const Target target = Target(t);
      if ((layer < 0) != (target == Target::lm_head)) continue;
      std::optional<LoraModule>& m = out.module(layer < 0 ? 0 : layer, target);
      if (!m) continue;
      for (Tensor* x : {&m->a, &m->b})
        if (x->dtype != dtype) *x = dtype == DType::bf16 ? to_bf16_host(*x) : to_f32_host(*x);
    }
  out.content_hash = content_hash(out);
  out.packed_a = Tensor();
  out.packed_b = Tensor();
  return out;
}

std::optional<DType> modules_dtype(const Adapter& adapter) {
  std::optional<DType> dtype;
  bool mixed = false;
  auto see = [&](const std::optional<LoraModule>& m) {
    if (!m) return;
    for (const Tensor* t : {&m->a, &m->b}) {
      if (!dtype) dtype = t->dtype;
      mixed = mixed || t->dtype != *dtype;
    }
  };
  for (const auto& layer : adapter.layers)
    for (const auto& m : layer) see(m);
  see(adapter.lm_head);
  return mixed ? std::nullopt : dtype;
}

Expected<Adapter> pack(const Adapter& adapter, const HostAllocator& alloc) {
  Adapter out = adapter;
  std::vector<LoraModule*> modules;
  for (auto& layer : out.layers)
    for (auto& m : layer)
      if (m) modules.push_back(&*m);
  if (out.lm_head) modules.push_back(&*out.lm_head);
  if (modules.empty()) return out;
  const std::optional<DType> common = modules_dtype(adapter);
  if (!common)
    return Status::errorf("adapter '{}': its A and B matrices are not all of one dtype",
                          adapter.name);
  const DType dtype = *common;
  const auto align = int64_t(kPackAlignment / dtype_size(dtype));
  auto place = [&](Tensor LoraModule::*which) {
    int64_t n = 0;
    std::vector<int64_t> at;
    for (const LoraModule* m : modules) {
      n = (n + align - 1) / align * align;
      at.push_back(n);
      n += (m->*which).numel();
    }
    Tensor block = alloc(dtype, n);
    for (size_t i = 0; i < modules.size(); ++i) {
      Tensor& t = modules[i]->*which;
      Tensor v = t;
      v.data = static_cast<char*>(block.data) + size_t(at[i]) * dtype_size(dtype);
      v.storage = block.storage;
      std::memcpy(v.data, t.data, t.nbytes());
      t = v;
    }
    return block;
  };
  out.packed_a = place(&LoraModule::a);
  out.packed_b = place(&LoraModule::b);
  return out;
}

Expected<Adapter> load_adapter(const std::string& name, const std::string& dir,
                               const model::Phi3Config& base, const io::TensorSet* base_checkpoint,
                               DType host_dtype) {
  if (host_dtype != DType::f32 && host_dtype != DType::bf16)
    return Status::errorf("adapter '{}': host dtype {} (expected F32 or BF16)", name,
                          dtype_name(host_dtype));
  const std::string config_path = io::join_path(dir, "adapter_config.json");
  const std::string model_path = io::join_path(dir, "adapter_model.safetensors");
  const std::string context = fmt::format("adapter '{}'", name);
  auto fail = [&](const Status& s) { return s.with_context(context); };

  auto text = io::read_text_file(config_path);
  if (!text.ok()) return fail(text.status());
  auto config = parse_adapter_config(*text, config_path);
  if (!config.ok()) return fail(config.status());
  const AdapterConfig& cfg = *config;
  if (Status s = check_targets(cfg, base, config_path); !s.ok()) return fail(s);

  if (!io::is_regular_file(model_path)) {
    const bool bin = io::is_regular_file(io::join_path(dir, "adapter_model.bin"));
    return fail(Status::errorf("{}: file not found{}", model_path,
                               bin ? " (adapter_model.bin is not supported: save with "
                                     "safe_serialization=True)"
                                   : ""));
  }
  auto tensors = io::TensorSet::open_file(model_path);
  if (!tensors.ok()) return fail(tensors.status());

  // (layer, target) -> A and B; layer -1 is lm_head.
  std::map<std::pair<int64_t, Target>, Pair> pairs;
  for (const std::string& tname : tensors->names()) {
    if (const auto module = base_layer_copy(tname)) {
      if (!targets_module(cfg, *module))
        return fail(Status::errorf("{}: tensor '{}' copies the base weight of '{}', which "
                                   "target_modules in {} does not select",
                                   model_path, tname, *module, config_path));
      if (Status s = check_base_copy(*tensors->find(tname), *module, base, base_checkpoint, model_path);
          !s.ok())
        return fail(s);
      continue;
    }
    auto parsed = parse_tensor_name(tname, model_path, base.num_hidden_layers);
    if (!parsed.ok()) return fail(parsed.status());
    Pair& p = pairs[{parsed->layer, parsed->target}];
    const io::TensorEntry*& slot = parsed->is_b ? p.b : p.a;
    if (slot)
      return fail(Status::errorf("{}: two lora_{} tensors for module '{}': '{}' and '{}'",
                                 model_path, parsed->is_b ? "B" : "A",
                                 module_full_name(parsed->layer, parsed->target), slot->name,
                                 tname));
    slot = tensors->find(tname);
  }
  if (pairs.empty()) return fail(Status::errorf("{}: holds no LoRA tensors", model_path));

  Adapter adapter;
  adapter.name = name;
  adapter.dir = dir;
  adapter.config = cfg;
  adapter.layers.resize(size_t(base.num_hidden_layers));
  for (const auto& [key, p] : pairs) {
    const auto [layer, target] = key;
    const std::string module = module_full_name(layer, target);
    if (!p.a || !p.b)
      return fail(Status::errorf("{}: module '{}' has '{}' but no lora_{} tensor", model_path,
                                 module, (p.a ? p.a : p.b)->name, p.a ? "B" : "A"));
    if (!targets_module(cfg, module))
      return fail(Status::errorf(
          "{}: tensor '{}' is for module '{}', which target_modules in {} does not select",
          model_path, p.a->name, module, config_path));
    for (const io::TensorEntry* e : {p.a, p.b}) {
      const DType dt = e->view.dtype;
      if (dt != DType::f32 && dt != DType::f16 && dt != DType::bf16)
        return fail(Status::errorf("{}: tensor '{}' has dtype {}, expected F32, F16 or BF16",
                                   model_path, e->name, dtype_name(dt)));
      if (e->view.ndim != 2)
        return fail(Status::errorf("{}: tensor '{}' has shape {}, expected a matrix", model_path,
                                   e->name, e->view.shape_str()));
    }
    const Dims dims = module_dims(base, target);
    const Tensor& a = p.a->view;
    const Tensor& b = p.b->view;
    const int64_t rank = a.dim(0);
    const int64_t want_rank = module_rank(cfg, module);
    if (a.dim(1) != dims.in)
      return fail(Status::errorf(
          "{}: tensor '{}' (lora_A of '{}'): expected shape (rank, in_features) = ({}, {}), "
          "found {}",
          model_path, p.a->name, module, rank, dims.in, a.shape_str()));
    if (b.dim(0) != dims.out || b.dim(1) != rank)
      return fail(Status::errorf(
          "{}: tensor '{}' (lora_B of '{}'): expected shape (out_features, rank) = ({}, {}), "
          "found {}",
          model_path, p.b->name, module, dims.out, rank, b.shape_str()));
    if (rank != want_rank)
      return fail(Status::errorf("{}: module '{}' has rank {} (rows of '{}'), but {} gives r = {}",
                                 model_path, module, rank, p.a->name, config_path, want_rank));
    LoraModule m;
    m.rank = rank;
    const double alpha = module_alpha(cfg, module);
    m.scale = float(cfg.use_rslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank));
    m.a = to_f32_host(a);
    m.b = to_f32_host(b);
    // A NaN or infinity would not stay in its own requests: B shares the base
    // matmul with every token of a step (LoRA columns), where 0 · inf is NaN.
    for (const auto& [t, name] : {std::pair{&m.a, &p.a->name}, std::pair{&m.b, &p.b->name}}) {
      const float* v = t->ptr<float>();
      for (int64_t i = 0; i < t->numel(); ++i)
        if (!std::isfinite(v[i]))
          return fail(Status::errorf("{}: tensor '{}' holds a non-finite value ({}) at element {}", model_path,
                                     *name, v[i], i));
    }
    if (host_dtype == DType::bf16) {
      m.a = to_bf16_host(m.a);
      m.b = to_bf16_host(m.b);
    }
    adapter.max_rank = std::max(adapter.max_rank, rank);
    if (target == Target::lm_head)
      adapter.lm_head = std::move(m);
    else
      adapter.layers[size_t(layer)][size_t(target)] = std::move(m);
  }
  adapter.content_hash = content_hash(adapter);
  return adapter;
}

}  // namespace philora::lora
