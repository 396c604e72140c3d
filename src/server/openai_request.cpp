// OpenAI /v1/completions and /v1/chat/completions -> engine::Request: the
// OpenAI fields, and vLLM's extra sampling parameters (top_k, min_p,
// repetition_penalty, min_tokens, ignore_eos, stop_token_ids, bad_words,
// skip_special_tokens, include_stop_str_in_output), each honoured or
// refused with a 400 that names it.
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <map>

#include "server/request_fields.h"

namespace philora::server {

using nlohmann::json;
using namespace fields;

namespace {

constexpr Api kApi = Api::openai;

constexpr const char* kTools = "is not supported: tool calling is not implemented yet";
constexpr const char* kStructured =
    "is not supported: give the constraint as response_format or guided_json, guided_regex, "
    "guided_grammar or guided_choice";

bool none_or_null(const json& v) { return v.is_null() || v == "none"; }
bool bool_or_null(const json& v) { return v.is_null() || v.is_boolean(); }
bool auto_tier_or_null(const json& v) { return v.is_null() || v == "auto" || v == "default"; }
bool text_modality_or_null(const json& v) { return v.is_null() || v == json::array({"text"}); }

// Both routes; the ones that only exist on one are refused by name too.
constexpr Unsupported kUnsupported[] = {
    {"suffix", empty_or_null, "is not supported yet"},
    {"tools", empty_or_null, kTools},
    {"tool_choice", none_or_null, kTools},
    {"functions", empty_or_null, kTools},
    {"function_call", none_or_null, kTools},
    {"parallel_tool_calls", bool_or_null, kTools},
    {"structured_outputs", null_only, kStructured},
    {"guided_whitespace_pattern", null_only,
     "is not supported: JSON output takes at most 8 whitespace characters [ \\t\\n\\r] "
     "between tokens (docs/STRUCTURED.md)"},
    {"guided_decoding_backend", null_only, "is not supported: this server has one"},
    {"store", false_or_null, "is not supported: this server stores no completions"},
    {"metadata", empty_or_null, "is not supported: this server stores no completions"},
    {"service_tier", auto_tier_or_null, "is not supported"},
    {"modalities", text_modality_or_null, "is not supported: text only"},
    {"audio", null_only, "is not supported: text only"},
    {"prediction", null_only, "is not supported yet"},
    {"reasoning_effort", null_only, "is not supported"},
    {"web_search_options", null_only, "is not supported"},
    {"use_beam_search", false_or_null, "is not supported: beam search is not implemented"},
    {"spaces_between_special_tokens", true_or_null, "false is not supported"},
    {"prompt_logprobs", null_only,
     "is not supported: ask for `echo` with `logprobs` for the prompt's logprobs"},
};

// The fields both routes honour.
#define PHILORA_SHARED_FIELDS                                                              \
  "model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stream", \
      "stream_options", "n", "user", "logprobs", "presence_penalty", "frequency_penalty",    \
      "repetition_penalty", "logit_bias", "min_tokens", "ignore_eos", "stop_token_ids",      \
      "bad_words", "skip_special_tokens", "include_stop_str_in_output", "response_format",    \
      "guided_json", "guided_regex", "guided_grammar", "guided_choice"
constexpr const char* kCompletionFields[] = {PHILORA_SHARED_FIELDS, "prompt", "echo", "best_of"};
constexpr const char* kChatFields[] = {PHILORA_SHARED_FIELDS, "messages", "max_completion_tokens",
                                       "top_logprobs"};
#undef PHILORA_SHARED_FIELDS

constexpr const char* kRoles[] = {"system", "user", "assistant"};

// The messages as the chat template takes them: each {role, content} with
// the content a string (text parts joined).
json chat_messages(const json& messages) {
  if (!messages.is_array() || messages.empty())
    throw bad(kApi, "'messages' must be a non-empty array", "messages");
  json out = json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object()) throw bad(kApi, fmt::format("'{}' must be an object", where), "messages");
    for (const auto& item : m.items()) {
      const std::string& key = item.key();
      if (key != "role" && key != "content" && key != "name")
        throw bad(kApi,
                  key == "tool_calls" || key == "tool_call_id" || key == "function_call"
                      ? fmt::format("'{}.{}' is not supported: tool calling is not implemented yet",
                                    where, key)
                      : fmt::format("'{}.{}' is not supported", where, key),
                  "messages");
    }
    if (!m.contains("role") || !m["role"].is_string())
      throw bad(kApi, fmt::format("'{}.role' must be a string", where), "messages");
    const std::string role = m["role"];
    if (std::find(std::begin(kRoles), std::end(kRoles), role) == std::end(kRoles))
      throw bad(kApi,
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
          throw bad(kApi,
                    fmt::format("'{}.content': only text parts ({{\"type\": \"text\", \"text\": "
                                "...}}) are supported",
                                where),
                    "messages");
        content += part["text"].get<std::string>();
      }
    } else if (!(c.is_null() && role == "assistant")) {
      throw bad(kApi, fmt::format("'{}.content' must be a string or an array of text parts", where),
                "messages");
    }
    json msg = {{"role", role}, {"content", content}};
    if (m.contains("name")) {
      if (!m["name"].is_string())
        throw bad(kApi, fmt::format("'{}.name' must be a string", where), "messages");
      msg["name"] = m["name"];
    }
    out.push_back(std::move(msg));
  }
  return out;
}

// The prompt of a completion ("prompt") or of a chat ("messages" through the
// chat template); `text` gets a completion's prompt as text (for echo).
std::vector<int32_t> openai_prompt(const json& j, const ServerContext& ctx, bool chat,
                                   std::string& text) {
  if (chat) {
    if (!j.contains("messages")) throw bad(kApi, "missing 'messages'", "messages");
    const json messages = chat_messages(j["messages"]);
    if (!ctx.chat_template) throw bad(kApi, "this model has no chat template", "messages");
    if (!ctx.tokenizer) throw bad(kApi, "this server has no tokenizer", "messages");
    auto rendered = ctx.chat_template(messages.dump());
    if (!rendered.ok()) throw bad(kApi, rendered.status().message(), "messages");
    return ctx.tokenizer->encode(*rendered, /*add_special_tokens=*/false);
  }
  if (!j.contains("prompt")) throw bad(kApi, "missing 'prompt'", "prompt");
  json p = j["prompt"];
  if (p.is_array() && p.size() == 1 && (p[0].is_string() || p[0].is_array()))
    p = p[0];  // one prompt in a list
  else if (p.is_array() && p.size() > 1 && (p[0].is_string() || p[0].is_array()))
    throw bad(kApi, "several prompts in one request are not supported yet", "prompt");
  std::vector<int32_t> ids = prompt_ids(ctx, p, kApi, "prompt");
  text = p.is_string()     ? p.get<std::string>()
         : ctx.tokenizer   ? ctx.tokenizer->decode(ids, /*skip_special_tokens=*/false)
                           : std::string();
  return ids;
}

// OpenAI's logit_bias: {"token id": bias in [-100, 100]}.
std::map<int32_t, float> logit_bias_of(const json& j, const ServerContext& ctx) {
  std::map<int32_t, float> out;
  if (!present(j, "logit_bias")) return out;
  const json& b = j["logit_bias"];
  if (!b.is_object())
    throw bad(kApi, "'logit_bias' must be an object of token ids to biases", "logit_bias");
  for (const auto& item : b.items()) {
    const std::string& key = item.key();
    char* end = nullptr;
    errno = 0;
    const long long id = std::strtoll(key.c_str(), &end, 10);
    if (key.empty() || *end != '\0' || errno != 0)
      throw bad(kApi, fmt::format("'logit_bias': key '{}' is not a token id", key), "logit_bias");
    const int32_t tok = token_id(json(int64_t(id)), ctx, kApi, "logit_bias");
    const json& v = item.value();
    if (!v.is_number() || !(v.get<double>() >= -100 && v.get<double>() <= 100))
      throw bad(kApi,
                fmt::format("'logit_bias': the bias of token {} must be a number in [-100, 100]",
                            key),
                "logit_bias");
    out[tok] = float(v.get<double>());
  }
  return out;
}

// vLLM's bad_words: each word tokenized alone, and after a space when that
// makes a different first token of the same length (a word inside the text).
std::vector<std::vector<int32_t>> bad_words_of(const json& j, const ServerContext& ctx) {
  std::vector<std::vector<int32_t>> out;
  if (!present(j, "bad_words")) return out;
  const json& w = j["bad_words"];
  if (!w.is_array()) throw bad(kApi, "'bad_words' must be an array of strings", "bad_words");
  if (!w.empty() && !ctx.tokenizer)
    throw bad(kApi, "'bad_words' needs a tokenizer, which this server lacks", "bad_words");
  for (const json& word : w) {
    if (!word.is_string()) throw bad(kApi, "'bad_words' must hold strings", "bad_words");
    std::string s = word.get<std::string>();
    s.erase(0, s.find_first_not_of(' '));
    if (s.empty()) throw bad(kApi, "'bad_words': a word is empty", "bad_words");
    std::vector<int32_t> alone = ctx.tokenizer->encode(s, /*add_special_tokens=*/false);
    std::vector<int32_t> spaced = ctx.tokenizer->encode(" " + s, /*add_special_tokens=*/false);
    if (alone.empty()) continue;
    if (!spaced.empty() && spaced.size() == alone.size() && spaced[0] != alone[0])
      out.push_back(std::move(spaced));
    out.push_back(std::move(alone));
  }
  return out;
}

void sampling_of(const json& j, const ServerContext& ctx, engine::Request& r) {
  engine::SamplingParams& s = r.sampling;
  const double temperature = get_number_in(j, "temperature", kApi, 0, 2).value_or(1.0);
  const double top_p = get_number(j, "top_p", kApi).value_or(1.0);
  if (!(top_p > 0 && top_p <= 1)) throw bad(kApi, "'top_p' must be in (0, 1]", "top_p");
  const int64_t top_k = get_int(j, "top_k", kApi).value_or(0);
  if (top_k < -1) throw bad(kApi, "'top_k' must be -1, 0 (off) or positive", "top_k");
  const double repetition = get_number(j, "repetition_penalty", kApi).value_or(1.0);
  if (!(repetition > 0 && repetition <= 2))
    throw bad(kApi, "'repetition_penalty' must be in (0, 2]", "repetition_penalty");
  s.greedy = temperature == 0.0;
  s.temperature = float(temperature);
  s.top_p = float(top_p);
  s.top_k = std::max<int64_t>(top_k, 0);
  s.min_p = float(get_number_in(j, "min_p", kApi, 0, 1).value_or(0.0));
  s.repetition_penalty = float(repetition);
  s.frequency_penalty = float(get_number_in(j, "frequency_penalty", kApi, -2, 2).value_or(0.0));
  s.presence_penalty = float(get_number_in(j, "presence_penalty", kApi, -2, 2).value_or(0.0));
  s.logit_bias = logit_bias_of(j, ctx);
  s.bad_words = bad_words_of(j, ctx);
  s.seed = get_seed(j, kApi);  // none: the engine draws one
}

// The stop conditions besides `stop`: vLLM's stop_token_ids, min_tokens, ignore_eos.
void stopping_of(const json& j, const ServerContext& ctx, engine::Request& r) {
  r.stop = stop_strings(j, "stop", ctx, kApi);
  r.ignore_eos = get_bool(j, "ignore_eos", kApi, false);
  r.skip_special_tokens = get_bool(j, "skip_special_tokens", kApi, true);
  r.include_stop_str_in_output = get_bool(j, "include_stop_str_in_output", kApi, false);
  if (present(j, "stop_token_ids")) {
    if (!j["stop_token_ids"].is_array())
      throw bad(kApi, "'stop_token_ids' must be an array of token ids", "stop_token_ids");
    for (const json& v : j["stop_token_ids"])
      r.stop_token_ids.push_back(token_id(v, ctx, kApi, "stop_token_ids"));
  }
  const int64_t min_tokens = get_int(j, "min_tokens", kApi).value_or(0);
  if (min_tokens < 0 || min_tokens > r.max_new_tokens)
    throw bad(kApi,
              fmt::format("'min_tokens' must be in [0, max_tokens ({})]. Given: {}",
                          r.max_new_tokens, min_tokens),
              "min_tokens");
  r.min_new_tokens = min_tokens;
}

// Completions' `logprobs` (an integer), chat's `logprobs` (a boolean) with `top_logprobs`.
std::optional<int32_t> logprobs_of(const json& j, bool chat) {
  if (!chat) {
    const auto k = get_int(j, "logprobs", kApi);
    if (k && (*k < 0 || *k > kMaxLogprobs))
      throw bad(kApi, fmt::format("'logprobs' must be in [0, {}]. Given: {}", kMaxLogprobs, *k),
                "logprobs");
    return k ? std::optional<int32_t>(int32_t(*k)) : std::nullopt;
  }
  const bool on = get_bool(j, "logprobs", kApi, false);
  const auto top = get_int(j, "top_logprobs", kApi);
  if (top && (*top < 0 || *top > kMaxLogprobs))
    throw bad(kApi, fmt::format("'top_logprobs' must be in [0, {}]. Given: {}", kMaxLogprobs, *top),
              "top_logprobs");
  if (top && !on)
    throw bad(kApi, "'top_logprobs' needs 'logprobs' set to true", "top_logprobs");
  return on ? std::optional<int32_t>(int32_t(top.value_or(0))) : std::nullopt;
}

}  // namespace

OpenAiRequest openai_request(const json& j, const ServerContext& ctx, bool chat, std::string id) {
  if (chat)
    check_fields(j, kApi, kChatFields, kUnsupported, "field");
  else
    check_fields(j, kApi, kCompletionFields, kUnsupported, "field");
  OpenAiRequest out;
  out.chat = chat;
  out.request = new_request(ctx, std::move(id));
  engine::Request& r = out.request;
  out.model = ctx.model_name;
  if (const auto model = get_string(j, "model", kApi)) {
    out.model = *model;
    if (!is_base_model(ctx, out.model)) r.adapter = out.model;  // LoRAX: the model names the adapter
  }
  const int64_t n = get_int(j, "n", kApi).value_or(1);
  if (n < 1 || n > ctx.limits.max_n)
    throw bad(kApi, fmt::format("'n' must be between 1 and {}", ctx.limits.max_n), "n");
  const int64_t best_of = get_int(j, "best_of", kApi).value_or(n);
  if (best_of < n || best_of > ctx.limits.max_n)
    throw bad(kApi,
              fmt::format("'best_of' must be between 'n' ({}) and {}. Given: {}", n,
                          ctx.limits.max_n, best_of),
              "best_of");
  out.logprobs = logprobs_of(j, chat);
  out.echo = !chat && get_bool(j, "echo", kApi, false);
  (void)get_string(j, "user", kApi);  // an end-user id: accepted and not used, as vLLM does
  r.prompt = openai_prompt(j, ctx, chat, out.prompt_text);
  auto max_tokens = chat ? get_int(j, "max_completion_tokens", kApi) : std::nullopt;
  const char* max_param = max_tokens ? "max_completion_tokens" : "max_tokens";
  if (!max_tokens) max_tokens = get_int(j, "max_tokens", kApi);
  r.max_new_tokens = fit_context(ctx, int64_t(r.prompt.size()), max_tokens, kApi,
                                 chat ? "messages" : "prompt", max_param);
  sampling_of(j, ctx, r);
  stopping_of(j, ctx, r);
  openai_constraint(j, ctx, r);
  // The model's own logprobs, before any processor (vLLM V1's default).
  r.logprobs = out.logprobs;
  r.logprob_kind = engine::LogprobKind::raw;
  if (out.echo && out.logprobs) r.prompt_logprobs = out.logprobs;
  out.stream = get_bool(j, "stream", kApi, false);
  // n choices, from best_of candidates (the n of highest cumulative logprob).
  r.n = int32_t(n);
  if (best_of > n) {
    if (r.sampling.greedy)
      throw bad(kApi, "'best_of' > 'n' needs sampling (a temperature above 0)", "best_of");
    if (out.stream)
      throw bad(kApi, "'best_of' > 'n' is not supported when streaming", "best_of");
    r.best_of = int32_t(best_of);
  }
  if (present(j, "stream_options")) {
    const json& so = j["stream_options"];
    if (!out.stream)
      throw bad(kApi, "'stream_options' is only allowed when 'stream' is true", "stream_options");
    if (!so.is_object()) throw bad(kApi, "'stream_options' must be an object", "stream_options");
    for (const auto& item : so.items())
      if (item.key() != "include_usage")
        throw bad(kApi, fmt::format("'stream_options.{}' is not supported", item.key()),
                  "stream_options");
    out.include_usage = get_bool(so, "include_usage", kApi, false);
  }
  return out;
}

}  // namespace philora::server
