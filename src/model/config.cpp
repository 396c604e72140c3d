// Mirrors transformers/models/phi3/configuration_phi3.py (4.x `rope_scaling` and 5.x
// `rope_parameters` forms) and the LongRoPE attention factor of modeling_rope_utils.py.
#include "model/config.h"

#include <cmath>

#include <nlohmann/json.hpp>

#include "io/file.h"

namespace philora::model {
namespace {

using json = nlohmann::json;

// Reads typed fields of one JSON object; every error names the file and the field.
class Fields {
 public:
  Fields(const json& obj, const std::string& origin, std::string prefix = "")
      : obj_(obj), origin_(origin), prefix_(std::move(prefix)) {}

  // The field, or null when absent or JSON null.
  const json* get(const char* key) const {
    auto it = obj_.find(key);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }
  bool has(const char* key) const { return get(key) != nullptr; }

  Status type_error(const char* key, const char* expected) const {
    return Status::errorf("{}: field '{}{}' must be {}, found {} {}", origin_, prefix_, key,
                          expected, get(key)->type_name(), get(key)->dump());
  }

  // Leaves *out untouched when the field is absent; errors when `required`.
  Status get_int(const char* key, int64_t* out, bool required = false) const {
    const json* v = get(key);
    if (!v) return required ? missing(key) : Status();
    if (!v->is_number_integer()) return type_error(key, "an integer");
    *out = v->get<int64_t>();
    return Status();
  }
  Status get_int(const char* key, std::optional<int64_t>* out) const {
    const json* v = get(key);
    if (!v) return Status();
    if (!v->is_number_integer()) return type_error(key, "an integer or null");
    *out = v->get<int64_t>();
    return Status();
  }
  Status get_double(const char* key, double* out) const {
    const json* v = get(key);
    if (!v) return Status();
    if (!v->is_number()) return type_error(key, "a number");
    *out = v->get<double>();
    return Status();
  }
  Status get_bool(const char* key, bool* out) const {
    const json* v = get(key);
    if (!v) return Status();
    if (!v->is_boolean()) return type_error(key, "true or false");
    *out = v->get<bool>();
    return Status();
  }
  Status get_string(const char* key, std::string* out) const {
    const json* v = get(key);
    if (!v) return Status();
    if (!v->is_string()) return type_error(key, "a string");
    *out = v->get<std::string>();
    return Status();
  }
  // An int or a list of ints (eos_token_id).
  Status get_int_list(const char* key, std::vector<int64_t>* out) const {
    const json* v = get(key);
    if (!v) return Status();
    if (v->is_number_integer()) {
      *out = {v->get<int64_t>()};
      return Status();
    }
    if (!v->is_array()) return type_error(key, "an integer or a list of integers");
    std::vector<int64_t> ids;
    for (const json& x : *v) {
      if (!x.is_number_integer()) return type_error(key, "an integer or a list of integers");
      ids.push_back(x.get<int64_t>());
    }
    *out = std::move(ids);
    return Status();
  }
  Status get_double_list(const char* key, std::vector<double>* out, bool required) const {
    const json* v = get(key);
    if (!v) return required ? missing(key) : Status();
    if (!v->is_array()) return type_error(key, "a list of numbers");
    out->clear();
    for (const json& x : *v) {
      if (!x.is_number()) return type_error(key, "a list of numbers");
      out->push_back(x.get<double>());
    }
    return Status();
  }
  Status missing(const char* key) const {
    return Status::errorf("{}: missing required field '{}{}'", origin_, prefix_, key);
  }

 private:
  const json& obj_;
  const std::string& origin_;
  std::string prefix_;
};

Expected<json> parse_json(const std::string& text, const std::string& origin) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    return Status::errorf("{}: not valid JSON: {}", origin, e.what());
  }
}

Expected<DType> parse_torch_dtype(const std::string& s, const std::string& origin,
                                  const char* key) {
  std::string name = s.starts_with("torch.") ? s.substr(6) : s;
  if (name == "bfloat16") return DType::bf16;
  if (name == "float16" || name == "half") return DType::f16;
  if (name == "float32" || name == "float") return DType::f32;
  return Status::errorf(
      "{}: field '{}' is \"{}\", expected \"bfloat16\", \"float16\" or \"float32\"", origin, key,
      s);
}

// A value that may stand at the top level (4.x) or inside the rope dict (5.x); both
// present and different is an error rather than a silent choice.
template <typename T>
Status merge_rope_field(const char* key, const std::optional<T>& top, const std::optional<T>& rope,
                        const std::string& rope_name, const std::string& origin, T* out) {
  if (top && rope && *top != *rope)
    return Status::errorf("{}: '{}' is {} at the top level but {} in '{}'", origin, key, *top,
                          *rope, rope_name);
  if (top)
    *out = *top;
  else if (rope)
    *out = *rope;
  return Status();
}

Status parse_architecture(const json& j, const std::string& origin) {
  auto arch = j.find("architectures");
  if (arch != j.end() && !arch->is_null()) {
    if (!arch->is_array())
      return Status::errorf("{}: field 'architectures' must be a list, found {}", origin,
                            arch->dump());
    for (const json& a : *arch)
      if (a.is_string() && a.get<std::string>() == "Phi3ForCausalLM") return Status();
    return Status::errorf("{}: architectures is {}, expected [\"Phi3ForCausalLM\"]", origin,
                          arch->dump());
  }
  auto mt = j.find("model_type");
  if (mt != j.end() && mt->is_string() && mt->get<std::string>() == "phi3") return Status();
  return Status::errorf(
      "{}: no 'architectures' and model_type is {}, expected architectures "
      "[\"Phi3ForCausalLM\"] or model_type \"phi3\"",
      origin, mt == j.end() ? std::string("absent") : mt->dump());
}

// rope_scaling (4.x) or rope_parameters (5.x): type, LongRoPE factors, theta, lengths.
Status parse_rope(const json& j, const std::string& origin, Phi3Config* c) {
  Fields top(j, origin);
  const char* rope_key = nullptr;
  if (top.has("rope_scaling"))
    rope_key = "rope_scaling";  // transformers 5 lets it win too
  else if (top.has("rope_parameters"))
    rope_key = "rope_parameters";

  std::optional<double> theta_top, theta_rope, prf_top, prf_rope;
  std::optional<int64_t> orig_top, orig_rope;
  double d = 0;
  int64_t n = 0;
  if (top.has("rope_theta")) {
    PHILORA_RETURN_IF_ERROR(top.get_double("rope_theta", &d));
    theta_top = d;
  }
  if (top.has("partial_rotary_factor")) {
    PHILORA_RETURN_IF_ERROR(top.get_double("partial_rotary_factor", &d));
    prf_top = d;
  }
  if (top.has("original_max_position_embeddings")) {
    PHILORA_RETURN_IF_ERROR(top.get_int("original_max_position_embeddings", &n));
    orig_top = n;
  }

  std::string type = "default";
  double attention_factor = 0;
  bool has_attention_factor = false;
  if (rope_key) {
    const json& r = *top.get(rope_key);
    if (!r.is_object())
      return Status::errorf("{}: field '{}' must be an object or null, found {}", origin, rope_key,
                            r.dump());
    Fields rf(r, origin, std::string(rope_key) + ".");
    std::string rope_type, legacy_type;
    PHILORA_RETURN_IF_ERROR(rf.get_string("rope_type", &rope_type));
    PHILORA_RETURN_IF_ERROR(rf.get_string("type", &legacy_type));
    type = !rope_type.empty() ? rope_type : legacy_type;
    if (type.empty())
      return Status::errorf("{}: '{}' has neither 'type' nor 'rope_type'", origin, rope_key);
    // configuration_phi3.py renames "su" and "yarn" to "longrope" (older Phi-3 configs);
    // a real YaRN config has no short/long factors and is refused below.
    const bool has_factors = rf.has("short_factor") && rf.has("long_factor");
    if (type == "su" || (type == "yarn" && has_factors)) type = "longrope";
    if (type != "longrope" && type != "default")
      return Status::errorf(
          "{}: unsupported {} type {} (Phi-3 uses \"longrope\"/\"su\" or no scaling)", origin,
          rope_key, type);
    if (rf.has("rope_theta")) {
      PHILORA_RETURN_IF_ERROR(rf.get_double("rope_theta", &d));
      theta_rope = d;
    }
    if (rf.has("partial_rotary_factor")) {
      PHILORA_RETURN_IF_ERROR(rf.get_double("partial_rotary_factor", &d));
      prf_rope = d;
    }
    if (rf.has("original_max_position_embeddings")) {
      PHILORA_RETURN_IF_ERROR(rf.get_int("original_max_position_embeddings", &n));
      orig_rope = n;
    }
    if (type == "longrope") {
      c->longrope = true;
      PHILORA_RETURN_IF_ERROR(rf.get_double_list("short_factor", &c->short_factor, true));
      PHILORA_RETURN_IF_ERROR(rf.get_double_list("long_factor", &c->long_factor, true));
      if (rf.has("attention_factor")) {
        PHILORA_RETURN_IF_ERROR(rf.get_double("attention_factor", &attention_factor));
        has_attention_factor = true;
      }
    }
  }
  const std::string rope_name = rope_key ? rope_key : "";
  PHILORA_RETURN_IF_ERROR(
      merge_rope_field("rope_theta", theta_top, theta_rope, rope_name, origin, &c->rope_theta));
  PHILORA_RETURN_IF_ERROR(merge_rope_field("partial_rotary_factor", prf_top, prf_rope, rope_name,
                                           origin, &c->partial_rotary_factor));
  // Phi3Config's default original length is 4096 (the field's default in Phi3Config).
  c->original_max_position_embeddings = 4096;
  PHILORA_RETURN_IF_ERROR(merge_rope_field("original_max_position_embeddings", orig_top, orig_rope,
                                           rope_name, origin,
                                           &c->original_max_position_embeddings));

  c->rope_attention_factor = 1.0;
  if (c->longrope) {
    if (has_attention_factor) {
      c->rope_attention_factor = attention_factor;
    } else if (c->original_max_position_embeddings > 0) {
      const double orig = double(c->original_max_position_embeddings);
      const double s = double(c->max_position_embeddings) / orig;
      c->rope_attention_factor = s <= 1.0 ? 1.0 : std::sqrt(1.0 + std::log(s) / std::log(orig));
    }
  }
  return Status();
}

}  // namespace

Status Phi3Config::validate() const {
  struct Positive {
    const char* name;
    int64_t value;
  };
  for (const Positive& p :
       {Positive{"vocab_size", vocab_size},
        {"hidden_size", hidden_size},
        {"intermediate_size", intermediate_size},
        {"num_hidden_layers", num_hidden_layers},
        {"num_attention_heads", num_attention_heads},
        {"num_key_value_heads", num_key_value_heads},
        {"head_dim", head_dim},
        {"max_position_embeddings", max_position_embeddings},
        {"original_max_position_embeddings", original_max_position_embeddings}}) {
    if (p.value <= 0) return Status::errorf("{} must be positive, found {}", p.name, p.value);
  }
  if (num_attention_heads % num_key_value_heads != 0)
    return Status::errorf("num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                          num_attention_heads, num_key_value_heads);
  if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps))
    return Status::errorf("rms_norm_eps must be positive, found {}", rms_norm_eps);
  if (!(rope_theta > 0) || !std::isfinite(rope_theta))
    return Status::errorf("rope_theta must be positive, found {}", rope_theta);
  if (!(partial_rotary_factor > 0) || partial_rotary_factor > 1)
    return Status::errorf("partial_rotary_factor must be in (0, 1], found {}",
                          partial_rotary_factor);
  const int64_t rd = rotary_dim();
  if (rd <= 0 || rd % 2 != 0 || rd > head_dim)
    return Status::errorf(
        "rotary_dim = int(head_dim {} * partial_rotary_factor {}) = {} must be even, positive and "
        "at most head_dim",
        head_dim, partial_rotary_factor, rd);
  if (sliding_window && *sliding_window <= 0)
    return Status::errorf("sliding_window must be positive or null, found {}", *sliding_window);
  if (longrope) {
    const size_t want = size_t(rd / 2);
    for (const auto& [name, f] :
         {std::pair<const char*, const std::vector<double>*>{"short_factor", &short_factor},
          {"long_factor", &long_factor}}) {
      if (f->size() != want)
        return Status::errorf(
            "rope_scaling.{} has length {}, expected {} (rotary_dim / 2 = {} / 2)", name, f->size(),
            want, rd);
      for (size_t i = 0; i < f->size(); ++i)
        if (!((*f)[i] > 0) || !std::isfinite((*f)[i]))
          return Status::errorf("rope_scaling.{}[{}] must be a positive number, found {}", name, i,
                                (*f)[i]);
    }
    if (!(rope_attention_factor > 0) || !std::isfinite(rope_attention_factor))
      return Status::errorf("rope_scaling.attention_factor must be positive, found {}",
                            rope_attention_factor);
  } else if (!short_factor.empty() || !long_factor.empty()) {
    return Status::error("short_factor/long_factor are set but LongRoPE is off");
  }
  return Status();
}

Expected<Phi3Config> parse_config(const std::string& json_text, const std::string& origin) {
  PHILORA_ASSIGN_OR_RETURN(json j, parse_json(json_text, origin));
  if (!j.is_object())
    return Status::errorf("{}: expected a JSON object, found {}", origin, j.type_name());
  PHILORA_RETURN_IF_ERROR(parse_architecture(j, origin));
  if (j.contains("quantization_config") && !j["quantization_config"].is_null())
    return Status::errorf("{}: quantized checkpoints (quantization_config {}) are not supported",
                          origin, j["quantization_config"].dump());

  Fields f(j, origin);
  Phi3Config c;
  PHILORA_RETURN_IF_ERROR(f.get_int("vocab_size", &c.vocab_size, true));
  PHILORA_RETURN_IF_ERROR(f.get_int("hidden_size", &c.hidden_size, true));
  PHILORA_RETURN_IF_ERROR(f.get_int("intermediate_size", &c.intermediate_size, true));
  PHILORA_RETURN_IF_ERROR(f.get_int("num_hidden_layers", &c.num_hidden_layers, true));
  PHILORA_RETURN_IF_ERROR(f.get_int("num_attention_heads", &c.num_attention_heads, true));
  c.num_key_value_heads = c.num_attention_heads;
  PHILORA_RETURN_IF_ERROR(f.get_int("num_key_value_heads", &c.num_key_value_heads));
  if (c.num_attention_heads > 0) c.head_dim = c.hidden_size / c.num_attention_heads;
  PHILORA_RETURN_IF_ERROR(f.get_int("head_dim", &c.head_dim));
  PHILORA_RETURN_IF_ERROR(f.get_double("rms_norm_eps", &c.rms_norm_eps));
  PHILORA_RETURN_IF_ERROR(f.get_int("max_position_embeddings", &c.max_position_embeddings));
  PHILORA_RETURN_IF_ERROR(f.get_int("sliding_window", &c.sliding_window));
  PHILORA_RETURN_IF_ERROR(f.get_bool("tie_word_embeddings", &c.tie_word_embeddings));

  std::string hidden_act = "silu";
  PHILORA_RETURN_IF_ERROR(f.get_string("hidden_act", &hidden_act));
  if (hidden_act != "silu")
    return Status::errorf("{}: hidden_act is \"{}\", expected \"silu\" (Phi-3's MLP)", origin,
                          hidden_act);

  // transformers 5 writes "dtype"; 4.x writes "torch_dtype".
  for (const char* key : {"torch_dtype", "dtype"}) {
    std::string s;
    PHILORA_RETURN_IF_ERROR(f.get_string(key, &s));
    if (s.empty()) continue;
    PHILORA_ASSIGN_OR_RETURN(c.torch_dtype, parse_torch_dtype(s, origin, key));
  }

  // Token ids: Phi3Config's defaults apply when a key is absent; null means none.
  c.bos_token_id = j.contains("bos_token_id") ? std::nullopt : std::optional<int64_t>(1);
  c.pad_token_id = j.contains("pad_token_id") ? std::nullopt : std::optional<int64_t>(32000);
  if (!j.contains("eos_token_id")) c.eos_token_ids = {32000};
  PHILORA_RETURN_IF_ERROR(f.get_int("bos_token_id", &c.bos_token_id));
  PHILORA_RETURN_IF_ERROR(f.get_int("pad_token_id", &c.pad_token_id));
  PHILORA_RETURN_IF_ERROR(f.get_int_list("eos_token_id", &c.eos_token_ids));

  PHILORA_RETURN_IF_ERROR(parse_rope(j, origin, &c));
  PHILORA_RETURN_IF_ERROR(c.validate().with_context(origin));
  return c;
}

Expected<Phi3Config> load_config(const std::string& dir) {
  const std::string path = io::join_path(dir, "config.json");
  PHILORA_ASSIGN_OR_RETURN(std::string text, io::read_text_file(path));
  PHILORA_ASSIGN_OR_RETURN(Phi3Config c, parse_config(text, path));

  const std::string gen_path = io::join_path(dir, "generation_config.json");
  if (!io::is_regular_file(gen_path)) return c;
  PHILORA_ASSIGN_OR_RETURN(std::string gen_text, io::read_text_file(gen_path));
  PHILORA_ASSIGN_OR_RETURN(json g, parse_json(gen_text, gen_path));
  if (!g.is_object())
    return Status::errorf("{}: expected a JSON object, found {}", gen_path, g.type_name());
  Fields gf(g, gen_path);
  PHILORA_RETURN_IF_ERROR(gf.get_int_list("eos_token_id", &c.eos_token_ids));
  PHILORA_RETURN_IF_ERROR(gf.get_int("bos_token_id", &c.bos_token_id));
  return c;
}

}  // namespace philora::model
