// The one place that turns a request's JSON into an engine::Request, for both
// APIs. Every field of a request is honoured, or refused by name: a field we
// do not act on yet passes only at its neutral value (the one that asks for
// nothing), and a field the API does not have is refused too.
#include <httplib.h>

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <span>

#include "server/routes.h"

namespace philora::server {

using nlohmann::json;

namespace {

int bad_status(Api api) { return api == Api::openai ? 400 : 422; }

BadRequest bad(Api api, std::string message, std::string param = "", const char* code = nullptr) {
  return BadRequest{bad_status(api), std::move(message), std::move(param), code};
}

// Reads an optional field of the right type, or reports it.
template <typename T>
std::optional<T> field(const json& j, const char* name, Api api) {
  if (!j.contains(name) || j[name].is_null()) return std::nullopt;
  const json& v = j[name];
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) throw bad(api, fmt::format("'{}' must be a boolean", name), name);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) throw bad(api, fmt::format("'{}' must be a string", name), name);
  } else if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer() ||
        (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())))
      throw bad(api, fmt::format("'{}' must be an integer", name), name);
  } else {
    if (!v.is_number()) throw bad(api, fmt::format("'{}' must be a number", name), name);
  }
  return v.get<T>();
}

// ---- which fields each API has ----------------------------------------------

bool null_only(const json& v) { return v.is_null(); }
bool false_or_null(const json& v) { return v.is_null() || v == false; }
bool zero_or_null(const json& v) { return v.is_null() || (v.is_number() && v.get<double>() == 0.0); }
bool one_or_null(const json& v) { return v.is_null() || (v.is_number() && v.get<double>() == 1.0); }
bool empty_or_null(const json& v) {
  return v.is_null() || ((v.is_object() || v.is_array() || v.is_string()) && v.empty());
}
bool bool_or_null(const json& v) { return v.is_null() || v.is_boolean(); }
bool none_or_null(const json& v) { return v.is_null() || v == "none"; }
bool text_format_or_null(const json& v) {
  return v.is_null() || (v.is_object() && v.size() == 1 && v.value("type", "") == "text");
}
bool auto_tier_or_null(const json& v) { return v.is_null() || v == "auto" || v == "default"; }
bool text_modality_or_null(const json& v) { return v.is_null() || v == json::array({"text"}); }

// A field we do not act on: accepted at its neutral value, else refused with `why`.
struct Unsupported {
  const char* name;
  bool (*neutral)(const json&);
  const char* why;
};

constexpr const char* kNotYet = "is not supported yet";
constexpr const char* kTools = "is not supported: tool calling is not implemented yet";

constexpr Unsupported kLoraxUnsupported[] = {
    {"best_of", one_or_null, "> 1 is not supported yet"},
    {"repetition_penalty", one_or_null, kNotYet},
    {"frequency_penalty", zero_or_null, kNotYet},
    {"presence_penalty", zero_or_null, kNotYet},
    {"typical_p", one_or_null, kNotYet},
    {"watermark", false_or_null, kNotYet},
    {"return_full_text", false_or_null, kNotYet},
    {"decoder_input_details", false_or_null, kNotYet},
    {"return_k_alternatives", zero_or_null, kNotYet},
    {"adapter_parameters", null_only, "is not supported yet (adapter merging)"},
    {"response_format", null_only, "is not supported yet (structured output)"},
    {"apply_chat_template", false_or_null, "is not supported: use /v1/chat/completions"},
    {"api_token", null_only, "is not needed: adapters load from the server's adapter directory"},
};

// Both OpenAI routes; the ones that only exist on one are refused by name too.
constexpr Unsupported kOpenAiUnsupported[] = {
    {"frequency_penalty", zero_or_null, kNotYet},
    {"presence_penalty", zero_or_null, kNotYet},
    {"repetition_penalty", one_or_null, kNotYet},
    {"logit_bias", empty_or_null, kNotYet},
    {"echo", false_or_null, kNotYet},
    {"suffix", empty_or_null, kNotYet},
    {"min_tokens", zero_or_null, kNotYet},
    {"tools", empty_or_null, kTools},
    {"tool_choice", none_or_null, kTools},
    {"functions", empty_or_null, kTools},
    {"function_call", none_or_null, kTools},
    {"parallel_tool_calls", bool_or_null, kTools},
    {"response_format", text_format_or_null, "is not supported yet (structured output)"},
    {"store", false_or_null, "is not supported: this server stores no completions"},
    {"metadata", empty_or_null, "is not supported: this server stores no completions"},
    {"service_tier", auto_tier_or_null, "is not supported"},
    {"modalities", text_modality_or_null, "is not supported: text only"},
    {"audio", null_only, "is not supported: text only"},
    {"prediction", null_only, kNotYet},
    {"reasoning_effort", null_only, "is not supported"},
    {"web_search_options", null_only, "is not supported"},
};

// Refuses any field of `j` that is neither in `honoured` nor neutral in `unsupported`.
void check_fields(const json& j, Api api, std::span<const char* const> honoured,
                  std::span<const Unsupported> unsupported, const char* where) {
  for (const auto& [key, value] : j.items()) {
    if (std::find_if(honoured.begin(), honoured.end(), [&](const char* h) { return key == h; }) !=
        honoured.end())
      continue;
    auto u = std::find_if(unsupported.begin(), unsupported.end(),
                          [&](const Unsupported& x) { return key == x.name; });
    if (u == unsupported.end())
      throw bad(api,
                api == Api::openai
                    ? fmt::format("Unrecognized request argument supplied: {}", key)
                    : fmt::format("unknown {} '{}'", where, key),
                key);
    if (!u->neutral(value)) throw bad(api, fmt::format("'{}' {}", key, u->why), key);
  }
}

// ---- values -----------------------------------------------------------------

std::vector<std::string> stop_strings(const json& j, const char* name, const ServerContext& ctx,
                                      Api api) {
  std::vector<std::string> out;
  if (!j.contains(name) || j[name].is_null()) return out;
  const json& v = j[name];
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    for (const auto& s : v) {
      if (!s.is_string()) throw bad(api, fmt::format("'{}' must hold strings", name), name);
      out.push_back(s.get<std::string>());
    }
  } else {
    throw bad(api, fmt::format("'{}' must be a string or an array of strings", name), name);
  }
  const RequestLimits& l = ctx.limits;
  if (int64_t(out.size()) > l.max_stop_sequences)
    throw bad(api,
              fmt::format("'{}' holds {} stop sequences; at most {} are allowed", name, out.size(),
                          l.max_stop_sequences),
              name);
  for (const std::string& s : out) {
    if (s.empty()) throw bad(api, fmt::format("'{}': a stop sequence is empty", name), name);
    if (int64_t(s.size()) > l.max_stop_bytes)
      throw bad(api,
                fmt::format("'{}': a stop sequence is longer than {} bytes", name, l.max_stop_bytes),
                name);
  }
  return out;
}

// Token ids of a prompt given as text or as ids.
std::vector<int32_t> prompt_ids(const ServerContext& ctx, const json& p, Api api,
                                const char* param) {
  std::vector<int32_t> ids;
  if (p.is_string()) {
    if (p.get_ref<const std::string&>().empty())
      throw bad(api, fmt::format("'{}' cannot be empty", param), param);
    if (!ctx.tokenizer) throw bad(api, "this server has no tokenizer: give token ids", param);
    return ctx.tokenizer->encode(p.get<std::string>(), /*add_special_tokens=*/true);
  }
  if (!p.is_array() || p.empty() || !p[0].is_number_integer())
    throw bad(api, fmt::format("'{}' must be a string or a non-empty array of token ids", param),
              param);
  for (const auto& v : p) {
    if (!v.is_number_integer())
      throw bad(api, "a token-id prompt must hold integers only", param);
    const bool in_range = v.is_number_unsigned()
                              ? v.get<uint64_t>() <= uint64_t(std::numeric_limits<int32_t>::max())
                              : v.get<int64_t>() >= 0 &&
                                    v.get<int64_t>() <= std::numeric_limits<int32_t>::max();
    if (!in_range)
      throw bad(api, fmt::format("token id {} is outside the vocabulary", v.dump()), param);
    ids.push_back(v.get<int32_t>());
  }
  return ids;
}

// Whether a request's model / adapter_id names the base model (empty does too).
bool is_base_model(const ServerContext& ctx, const std::string& name) {
  if (name.empty() || name == ctx.model_name) return true;
  for (const std::string& a : ctx.model_aliases)
    if (!a.empty() && name == a) return true;
  return false;
}

// What every request starts from: its id, the tokenizer's stop ids.
engine::Request new_request(const ServerContext& ctx, std::string id) {
  engine::Request r;
  r.id = std::move(id);
  if (ctx.tokenizer)
    for (int32_t s : ctx.tokenizer->stop_ids()) r.stop_token_ids.push_back(s);
  return r;
}

// The prompt against the context, and the tokens to generate: the request's
// (checked against the limits), else the default, at most what the context
// leaves. Each API words a prompt that does not fit as it does.
int64_t fit_context(const ServerContext& ctx, int64_t prompt_len, std::optional<int64_t> given,
                    Api api, const char* prompt_param, const char* max_param) {
  const RequestLimits& l = ctx.limits;
  const int64_t total = l.max_total_tokens;
  if (prompt_len > l.input_limit()) {
    if (api == Api::lorax)
      throw bad(api, fmt::format("`inputs` must have less than {} tokens. Given: {}",
                                 l.input_limit() + 1, prompt_len));
    throw bad(api,
              fmt::format("This model's maximum context length is {} tokens. However, your {} "
                          "resulted in {} tokens. Please reduce the length of the {}.",
                          total, prompt_param, prompt_len, prompt_param),
              prompt_param, "context_length_exceeded");
  }
  const int64_t room = total - prompt_len;
  if (!given) {
    int64_t n = std::min(l.default_max_new_tokens, room);
    if (l.max_new_tokens > 0) n = std::min(n, l.max_new_tokens);
    return n;
  }
  if (*given < 1) throw bad(api, fmt::format("'{}' must be at least 1", max_param), max_param);
  if (l.max_new_tokens > 0 && *given > l.max_new_tokens)
    throw bad(api,
              fmt::format("'{}' must be at most {} on this server. Given: {}", max_param,
                          l.max_new_tokens, *given),
              max_param);
  if (*given > room) {
    if (api == Api::lorax)
      throw bad(api, fmt::format("`inputs` tokens + `max_new_tokens` must be <= {}. Given: {} "
                                 "`inputs` tokens and {} `max_new_tokens`",
                                 total, prompt_len, *given));
    throw bad(api,
              fmt::format("This model's maximum context length is {} tokens. However, you "
                          "requested {} tokens ({} in the {}, {} in the completion). Please "
                          "reduce the length of the {} or completion.",
                          total, prompt_len + *given, prompt_len, prompt_param, *given,
                          prompt_param),
              max_param, "context_length_exceeded");
  }
  return *given;
}

constexpr const char* kLoraxTop[] = {"inputs", "parameters", "stream"};
constexpr const char* kLoraxParams[] = {
    "adapter_id",  "adapter_source", "max_new_tokens",   "temperature", "top_k",
    "top_p",       "do_sample",      "seed",             "stop",        "ignore_eos_token",
    "details",     "truncate"};

}  // namespace

std::optional<json> parse_body(const Call& call, httplib::Response& res, Api api) {
  json j;
  try {
    j = json::parse(call.body);
  } catch (const json::parse_error& e) {
    // The parser's message quotes what it last read, which may be anything:
    // name the byte offset instead.
    send_error(res, api, 400,
               fmt::format("the request body is not valid JSON (at byte {}){}", e.byte,
                           std::string_view(e.what()).find("UTF-8") != std::string_view::npos
                               ? ": a string is not valid UTF-8"
                               : ""),
               api == Api::openai ? "invalid_request_error" : "validation");
    return std::nullopt;
  }
  if (!j.is_object()) {
    send_error(res, api, 400, "the request body must be a JSON object",
               api == Api::openai ? "invalid_request_error" : "validation");
    return std::nullopt;
  }
  return j;
}

LoraxRequest lorax_request(const json& j, const ServerContext& ctx, std::string id,
                           LoraxRoute route) {
  const Api api = Api::lorax;
  check_fields(j, api, kLoraxTop, {}, "field");
  if (!j.contains("inputs")) throw bad(api, "missing 'inputs'", "inputs");
  LoraxRequest out;
  out.stream = route == LoraxRoute::generate_stream;
  if (const auto stream = field<bool>(j, "stream", api)) {
    if (route == LoraxRoute::compat)
      out.stream = *stream;
    else if (*stream != out.stream)
      throw bad(api,
                fmt::format("'stream': {} does not fit {} (POST / takes either)", *stream,
                            out.stream ? "/generate_stream" : "/generate"),
                "stream");
  }
  out.request = new_request(ctx, std::move(id));
  engine::Request& r = out.request;
  r.prompt = prompt_ids(ctx, j["inputs"], api, "inputs");
  const json params = j.contains("parameters") && !j["parameters"].is_null() ? j["parameters"]
                                                                              : json::object();
  if (!params.is_object()) throw bad(api, "'parameters' must be an object", "parameters");
  check_fields(params, api, kLoraxParams, kLoraxUnsupported, "parameter");
  if (const auto a = field<std::string>(params, "adapter_id", api); a && !is_base_model(ctx, *a))
    r.adapter = *a;
  if (const auto source = field<std::string>(params, "adapter_source", api);
      source && *source != "local")
    throw bad(api,
              fmt::format("'adapter_source' '{}' is not supported: adapters load by name from the "
                          "server's adapter directory ('local')",
                          *source),
              "adapter_source");
  if (const auto truncate = field<int64_t>(params, "truncate", api)) {
    if (*truncate < 1) throw bad(api, "'truncate' must be at least 1", "truncate");
    if (int64_t(r.prompt.size()) > *truncate)  // keeps the last `truncate` tokens, as TGI
      r.prompt.erase(r.prompt.begin(), r.prompt.end() - *truncate);
  }
  r.max_new_tokens = fit_context(ctx, int64_t(r.prompt.size()),
                                 field<int64_t>(params, "max_new_tokens", api), api, "inputs",
                                 "max_new_tokens");
  const auto temperature = field<double>(params, "temperature", api);
  const auto top_k = field<int64_t>(params, "top_k", api);
  const auto top_p = field<double>(params, "top_p", api);
  const bool do_sample = field<bool>(params, "do_sample", api).value_or(false);
  if (temperature && *temperature <= 0)
    throw bad(api, "'temperature' must be strictly positive", "temperature");
  if (top_k && *top_k <= 0) throw bad(api, "'top_k' must be strictly positive", "top_k");
  if (top_p && (*top_p <= 0 || *top_p > 1)) throw bad(api, "'top_p' must be in (0, 1]", "top_p");
  r.sampling.greedy =
      !(do_sample || (temperature && *temperature != 1.0) || top_k || (top_p && *top_p < 1.0));
  r.sampling.temperature = float(temperature.value_or(1.0));
  r.sampling.top_k = top_k.value_or(0);
  r.sampling.top_p = float(top_p.value_or(1.0));
  r.sampling.seed = uint64_t(field<int64_t>(params, "seed", api).value_or(0));
  r.stop = stop_strings(params, "stop", ctx, api);
  r.ignore_eos = field<bool>(params, "ignore_eos_token", api).value_or(false);
  out.details = field<bool>(params, "details", api).value_or(false);
  return out;
}

namespace {

constexpr const char* kCompletionFields[] = {
    "model", "prompt",   "max_tokens", "temperature", "top_p", "top_k",   "seed",
    "stop",  "stream",   "stream_options", "ignore_eos", "n",  "best_of", "user",
    "logprobs"};
constexpr const char* kChatFields[] = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "top_k", "seed",     "stop",       "stream",                "stream_options", "ignore_eos",
    "n",     "user",     "logprobs",   "top_logprobs"};
constexpr const char* kRoles[] = {"system", "user", "assistant"};

// The messages as the chat template takes them: each {role, content} with
// the content a string (text parts joined).
json chat_messages(const json& messages) {
  const Api api = Api::openai;
  if (!messages.is_array() || messages.empty())
    throw bad(api, "'messages' must be a non-empty array", "messages");
  json out = json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object()) throw bad(api, fmt::format("'{}' must be an object", where), "messages");
    for (const auto& [key, value] : m.items())
      if (key != "role" && key != "content" && key != "name")
        throw bad(api,
                  key == "tool_calls" || key == "tool_call_id" || key == "function_call"
                      ? fmt::format("'{}.{}' is not supported: tool calling is not implemented yet",
                                    where, key)
                      : fmt::format("'{}.{}' is not supported", where, key),
                  "messages");
    if (!m.contains("role") || !m["role"].is_string())
      throw bad(api, fmt::format("'{}.role' must be a string", where), "messages");
    const std::string role = m["role"];
    if (std::find(std::begin(kRoles), std::end(kRoles), role) == std::end(kRoles))
      throw bad(api,
                fmt::format("'{}.role' '{}' is not supported (system, user, assistant)", where,
                            role),
                "messages");
    std::string content;
    const json c = m.value("content", json());
    if (c.is_string()) {
      content = c.get<std::string>();
    } else if (c.is_array()) {
      for (const json& part : c) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
            !part["text"].is_string())
          throw bad(api,
                    fmt::format("'{}.content': only text parts ({{\"type\": \"text\", \"text\": "
                                "...}}) are supported",
                                where),
                    "messages");
        content += part["text"].get<std::string>();
      }
    } else if (!(c.is_null() && role == "assistant")) {
      throw bad(api, fmt::format("'{}.content' must be a string or an array of text parts", where),
                "messages");
    }
    json msg = {{"role", role}, {"content", content}};
    if (m.contains("name")) {
      if (!m["name"].is_string())
        throw bad(api, fmt::format("'{}.name' must be a string", where), "messages");
      msg["name"] = m["name"];
    }
    out.push_back(std::move(msg));
  }
  return out;
}

// The prompt of a completion ("prompt") or of a chat ("messages" through the
// chat template).
std::vector<int32_t> openai_prompt(const json& j, const ServerContext& ctx, bool chat) {
  const Api api = Api::openai;
  if (chat) {
    if (!j.contains("messages")) throw bad(api, "missing 'messages'", "messages");
    const json messages = chat_messages(j["messages"]);
    if (!ctx.chat_template) throw bad(api, "this model has no chat template", "messages");
    if (!ctx.tokenizer) throw bad(api, "this server has no tokenizer", "messages");
    auto text = ctx.chat_template(messages.dump());
    if (!text.ok()) throw bad(api, text.status().message(), "messages");
    return ctx.tokenizer->encode(*text, /*add_special_tokens=*/false);
  }
  if (!j.contains("prompt")) throw bad(api, "missing 'prompt'", "prompt");
  json p = j["prompt"];
  if (p.is_array() && p.size() == 1 && (p[0].is_string() || p[0].is_array()))
    p = p[0];  // one prompt in a list
  else if (p.is_array() && p.size() > 1 && (p[0].is_string() || p[0].is_array()))
    throw bad(api, "several prompts in one request are not supported yet", "prompt");
  return prompt_ids(ctx, p, api, "prompt");
}

}  // namespace

OpenAiRequest openai_request(const json& j, const ServerContext& ctx, bool chat, std::string id) {
  const Api api = Api::openai;
  if (chat)
    check_fields(j, api, kChatFields, kOpenAiUnsupported, "field");
  else
    check_fields(j, api, kCompletionFields, kOpenAiUnsupported, "field");
  OpenAiRequest out;
  out.request = new_request(ctx, std::move(id));
  engine::Request& r = out.request;
  out.model = ctx.model_name;
  if (const auto model = field<std::string>(j, "model", api)) {
    out.model = *model;
    if (!is_base_model(ctx, out.model)) r.adapter = out.model;  // LoRAX: the model names the adapter
  }
  const int64_t n = field<int64_t>(j, "n", api).value_or(1);
  if (n < 1 || n > ctx.limits.max_n)
    throw bad(api, fmt::format("'n' must be between 1 and {}", ctx.limits.max_n), "n");
  if (n != 1) throw bad(api, "'n' > 1 is not supported yet", "n");
  const int64_t best_of = field<int64_t>(j, "best_of", api).value_or(1);
  if (best_of != 1) throw bad(api, "'best_of' other than 1 is not supported yet", "best_of");
  if (chat) {
    if (field<bool>(j, "logprobs", api).value_or(false))
      throw bad(api, "'logprobs' is not supported yet", "logprobs");
    if (j.contains("top_logprobs") && !j["top_logprobs"].is_null())
      throw bad(api, "'top_logprobs' is not supported yet", "top_logprobs");
  } else if (j.contains("logprobs") && !j["logprobs"].is_null()) {
    throw bad(api, "'logprobs' is not supported yet", "logprobs");
  }
  (void)field<std::string>(j, "user", api);  // an end-user id: nothing to do with it here
  r.prompt = openai_prompt(j, ctx, chat);
  auto max_tokens = chat ? field<int64_t>(j, "max_completion_tokens", api) : std::nullopt;
  const char* max_param = max_tokens ? "max_completion_tokens" : "max_tokens";
  if (!max_tokens) max_tokens = field<int64_t>(j, "max_tokens", api);
  r.max_new_tokens = fit_context(ctx, int64_t(r.prompt.size()), max_tokens, api,
                                 chat ? "messages" : "prompt", max_param);
  const double temperature = field<double>(j, "temperature", api).value_or(1.0);
  const double top_p = field<double>(j, "top_p", api).value_or(1.0);
  if (temperature < 0 || temperature > 2)
    throw bad(api, "'temperature' must be in [0, 2]", "temperature");
  if (top_p <= 0 || top_p > 1) throw bad(api, "'top_p' must be in (0, 1]", "top_p");
  const int64_t top_k = field<int64_t>(j, "top_k", api).value_or(0);
  if (top_k < 0 && top_k != -1) throw bad(api, "'top_k' must be -1, 0 (off) or positive", "top_k");
  r.sampling.greedy = temperature == 0.0;
  r.sampling.temperature = float(temperature);
  r.sampling.top_p = float(top_p);
  r.sampling.top_k = std::max<int64_t>(top_k, 0);
  r.sampling.seed = uint64_t(field<int64_t>(j, "seed", api).value_or(0));
  r.stop = stop_strings(j, "stop", ctx, api);
  r.ignore_eos = field<bool>(j, "ignore_eos", api).value_or(false);  // vLLM's extension
  out.stream = field<bool>(j, "stream", api).value_or(false);
  if (j.contains("stream_options") && !j["stream_options"].is_null()) {
    const json& so = j["stream_options"];
    if (!out.stream)
      throw bad(api, "'stream_options' is only allowed when 'stream' is true", "stream_options");
    if (!so.is_object()) throw bad(api, "'stream_options' must be an object", "stream_options");
    for (const auto& [key, value] : so.items())
      if (key != "include_usage")
        throw bad(api, fmt::format("'stream_options.{}' is not supported", key), "stream_options");
    out.include_usage = field<bool>(so, "include_usage", api).value_or(false);
  }
  return out;
}

}  // namespace philora::server
