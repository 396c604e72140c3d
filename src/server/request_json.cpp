// What both APIs' request readers share (request_fields.h): typed fields,
// the check that every field is honoured or refused by name, token ids, stop
// strings, prompts and the context. The APIs' own mappings to an
// engine::Request are lorax_request.cpp and openai_request.cpp.
#include <httplib.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>

#include "server/request_fields.h"

namespace philora::server {

using nlohmann::json;

namespace fields {

bool get_bool(const json& j, const char* name, Api api, bool fallback) {
  if (!present(j, name)) return fallback;
  if (!j[name].is_boolean()) throw bad(api, fmt::format("'{}' must be a boolean", name), name);
  return j[name].get<bool>();
}

std::optional<std::string> get_string(const json& j, const char* name, Api api) {
  if (!present(j, name)) return std::nullopt;
  if (!j[name].is_string()) throw bad(api, fmt::format("'{}' must be a string", name), name);
  return j[name].get<std::string>();
}

std::optional<int64_t> get_int(const json& j, const char* name, Api api) {
  if (!present(j, name)) return std::nullopt;
  const json& v = j[name];
  if (!v.is_number_integer() ||
      (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())))
    throw bad(api, fmt::format("'{}' must be an integer", name), name);
  return v.get<int64_t>();
}

std::optional<double> get_number(const json& j, const char* name, Api api) {
  if (!present(j, name)) return std::nullopt;
  if (!j[name].is_number()) throw bad(api, fmt::format("'{}' must be a number", name), name);
  return j[name].get<double>();
}

std::optional<double> get_number_in(const json& j, const char* name, Api api, double lo,
                                    double hi) {
  const auto v = get_number(j, name, api);
  if (v && !(*v >= lo && *v <= hi))
    throw bad(api, fmt::format("'{}' must be in [{}, {}]. Given: {}", name, lo, hi, *v), name);
  return v;
}

std::optional<uint64_t> get_seed(const json& j, Api api) {
  if (!present(j, "seed")) return std::nullopt;
  const json& v = j["seed"];
  if (api == Api::lorax) {
    if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0))
      throw bad(api, "'seed' must be an integer in [0, 2^64)", "seed");
    return v.get<uint64_t>();
  }
  if (!v.is_number_integer() ||
      (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())))
    throw bad(api, "'seed' must be an integer in [-2^63, 2^63)", "seed");
  return uint64_t(v.get<int64_t>());
}

int32_t token_id(const json& v, const ServerContext& ctx, Api api, const std::string& param) {
  const int64_t vocab =
      ctx.vocab_size > 0 ? ctx.vocab_size : int64_t(std::numeric_limits<int32_t>::max()) + 1;
  if (!v.is_number_integer())
    throw bad(api, fmt::format("'{}': token ids must be integers", param), param);
  // Read as 64 bits (an unsigned one past int64 is out of range too), then checked.
  const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() < uint64_t(vocab)
                                               : v.get<int64_t>() >= 0 && v.get<int64_t>() < vocab;
  if (!in_range)
    throw bad(api,
              fmt::format("'{}': token id {} is outside the vocabulary [0, {})", param, v.dump(),
                          vocab),
              param);
  return int32_t(v.get<int64_t>());
}

void check_fields(const json& j, Api api, std::span<const char* const> honoured,
                  std::span<const Unsupported> unsupported, const char* where) {
  for (const auto& item : j.items()) {
    const std::string& key = item.key();
    const json& value = item.value();
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

std::vector<std::string> stop_strings(const json& j, const char* name, const ServerContext& ctx,
                                      Api api) {
  std::vector<std::string> out;
  if (!present(j, name)) return out;
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
  if (!out.empty() && !ctx.tokenizer)
    throw bad(api, fmt::format("'{}': stop strings need a tokenizer, which this server lacks", name),
              name);
  return out;
}

std::vector<int32_t> prompt_ids(const ServerContext& ctx, const json& p, Api api,
                                const char* param) {
  if (p.is_string()) {
    if (p.get_ref<const std::string&>().empty())
      throw bad(api, fmt::format("'{}' cannot be empty", param), param);
    if (!ctx.tokenizer) throw bad(api, "this server has no tokenizer: give token ids", param);
    return ctx.tokenizer->encode(p.get<std::string>(), /*add_special_tokens=*/true);
  }
  if (!p.is_array() || p.empty() || !p[0].is_number_integer())
    throw bad(api, fmt::format("'{}' must be a string or a non-empty array of token ids", param),
              param);
  std::vector<int32_t> ids;
  for (const auto& v : p) {
    if (!v.is_number_integer())
      throw bad(api, "a token-id prompt must hold integers only", param);
    ids.push_back(token_id(v, ctx, api, param));
  }
  return ids;
}

bool is_base_model(const ServerContext& ctx, const std::string& name) {
  if (name.empty() || name == ctx.model_name) return true;
  for (const std::string& a : ctx.model_aliases)
    if (!a.empty() && name == a) return true;
  return false;
}

engine::Request new_request(const ServerContext& ctx, std::string id) {
  engine::Request r;
  r.id = std::move(id);
  if (ctx.tokenizer)
    for (int32_t s : ctx.tokenizer->stop_ids()) r.stop_token_ids.push_back(s);
  return r;
}

int64_t fit_context(const ServerContext& ctx, int64_t prompt_len, std::optional<int64_t> given,
                    Api api, const char* prompt_param, const char* max_param) {
  const RequestLimits& l = ctx.limits;
  const int64_t total = l.max_total_tokens;
  if (prompt_len > l.input_limit()) {
    if (api == Api::lorax)
      throw bad(api, fmt::format("`inputs` must have less than {} tokens. Given: {}",
                                 l.input_limit() + 1, prompt_len));
    if (prompt_len < total)  // within the context, over --max-input-tokens: say which limit
      throw bad(api,
                fmt::format("This server accepts at most {} prompt tokens. However, your {} "
                            "resulted in {} tokens. Please reduce the length of the {}.",
                            l.input_limit(), prompt_param, prompt_len, prompt_param),
                prompt_param, "context_length_exceeded");
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
  if (l.max_new_tokens > 0 && *given > l.max_new_tokens) {  // --max-new-tokens-limit
    if (api == Api::lorax)  // LoRAX's (and TGI's) ValidationError::MaxNewTokens
      throw bad(api, fmt::format("`{}` must be <= {}. Given: {}", max_param, l.max_new_tokens,
                                 *given),
                max_param);
    throw bad(api,  // as OpenAI words a max_tokens over the model's completion limit
              fmt::format("{} is too large: {}. This server supports at most {} completion "
                          "tokens, whereas you provided {}.",
                          max_param, *given, l.max_new_tokens, *given),
              max_param);
  }
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

}  // namespace fields

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

}  // namespace philora::server
