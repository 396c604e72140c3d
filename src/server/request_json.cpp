// The one place that turns a request's JSON into an engine::Request, for both APIs.
#include <httplib.h>

#include <fmt/format.h>

#include "server/routes.h"

namespace philora::server {

using nlohmann::json;

namespace {

int bad_status(Api api) { return api == Api::openai ? 400 : 422; }

// Reads an optional field of the right type, or reports it.
template <typename T>
std::optional<T> field(const json& j, const char* name, Api api) {
  if (!j.contains(name) || j[name].is_null()) return std::nullopt;
  const json& v = j[name];
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean())
      throw BadRequest{bad_status(api), fmt::format("'{}' must be a boolean", name)};
  } else if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer())
      throw BadRequest{bad_status(api), fmt::format("'{}' must be an integer", name)};
  } else {
    if (!v.is_number())
      throw BadRequest{bad_status(api), fmt::format("'{}' must be a number", name)};
  }
  return v.get<T>();
}

std::vector<std::string> stop_strings(const json& j, const char* name, Api api) {
  std::vector<std::string> out;
  if (!j.contains(name) || j[name].is_null()) return out;
  const json& v = j[name];
  const int status = bad_status(api);
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    for (const auto& s : v) {
      if (!s.is_string()) throw BadRequest{status, fmt::format("'{}' must hold strings", name)};
      out.push_back(s.get<std::string>());
    }
  } else {
    throw BadRequest{status, fmt::format("'{}' must be a string or an array of strings", name)};
  }
  if (out.size() > 16)
    throw BadRequest{status, fmt::format("'{}' holds more than 16 stop sequences", name)};
  for (const std::string& s : out)
    if (s.size() > 256)
      throw BadRequest{status, fmt::format("'{}': a stop sequence is longer than 256 bytes", name)};
  return out;
}

// Token ids of a prompt given as text or as ids.
std::vector<int32_t> prompt_ids(const ServerContext& ctx, const json& p, Api api) {
  const int status = bad_status(api);
  std::vector<int32_t> ids;
  if (p.is_string()) {
    if (!ctx.tokenizer) throw BadRequest{status, "this server has no tokenizer: give token ids"};
    return ctx.tokenizer->encode(p.get<std::string>(), /*add_special_tokens=*/true);
  }
  if (!p.is_array() || p.empty() || !p[0].is_number_integer())
    throw BadRequest{status, "the prompt must be a string or an array of token ids"};
  for (const auto& v : p) {
    if (!v.is_number_integer())
      throw BadRequest{status, "a token-id prompt must hold integers only"};
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

int64_t max_new_tokens(std::optional<int64_t> given, const ServerContext& ctx, Api api) {
  const int64_t n = given.value_or(ctx.default_max_new_tokens);
  if (n < 1) throw BadRequest{bad_status(api), "max new tokens must be at least 1"};
  return n;
}

}  // namespace

std::optional<json> parse_body(const httplib::Request& req, httplib::Response& res, Api api) {
  json j = json::parse(req.body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    send_error(res, api, 400, "the request body must be a JSON object", "invalid_request_error");
    return std::nullopt;
  }
  return j;
}

LoraxRequest lorax_request(const json& j, const ServerContext& ctx, std::string id) {
  const Api api = Api::lorax;
  if (!j.contains("inputs")) throw BadRequest{422, "missing 'inputs'"};
  LoraxRequest out;
  out.request = new_request(ctx, std::move(id));
  engine::Request& r = out.request;
  r.prompt = prompt_ids(ctx, j["inputs"], api);
  const json params = j.value("parameters", json::object());
  if (!params.is_object()) throw BadRequest{422, "'parameters' must be an object"};
  if (params.contains("adapter_id") && !params["adapter_id"].is_null()) {
    if (!params["adapter_id"].is_string()) throw BadRequest{422, "'adapter_id' must be a string"};
    const std::string a = params["adapter_id"].get<std::string>();
    if (!is_base_model(ctx, a)) r.adapter = a;
  }
  r.max_new_tokens = max_new_tokens(field<int64_t>(params, "max_new_tokens", api), ctx, api);
  const auto temperature = field<double>(params, "temperature", api);
  const auto top_k = field<int64_t>(params, "top_k", api);
  const auto top_p = field<double>(params, "top_p", api);
  const bool do_sample = field<bool>(params, "do_sample", api).value_or(false);
  if (temperature && *temperature <= 0)
    throw BadRequest{422, "'temperature' must be strictly positive"};
  if (top_k && *top_k <= 0) throw BadRequest{422, "'top_k' must be strictly positive"};
  if (top_p && (*top_p <= 0 || *top_p > 1)) throw BadRequest{422, "'top_p' must be in (0, 1]"};
  r.sampling.greedy =
      !(do_sample || (temperature && *temperature != 1.0) || top_k || (top_p && *top_p < 1.0));
  r.sampling.temperature = float(temperature.value_or(1.0));
  r.sampling.top_k = top_k.value_or(0);
  r.sampling.top_p = float(top_p.value_or(1.0));
  r.sampling.seed = uint64_t(field<int64_t>(params, "seed", api).value_or(0));
  r.stop = stop_strings(params, "stop", api);
  r.ignore_eos = field<bool>(params, "ignore_eos_token", api).value_or(false);
  out.details = field<bool>(params, "details", api).value_or(false);
  return out;
}

// The prompt of a completion ("prompt") or of a chat ("messages" through the
// chat template).
static std::vector<int32_t> openai_prompt(const json& j, const ServerContext& ctx, bool chat) {
  if (chat) {
    if (!j.contains("messages") || !j["messages"].is_array() || j["messages"].empty())
      throw BadRequest{400, "'messages' must be a non-empty array"};
    if (!ctx.chat_template) throw BadRequest{400, "this model has no chat template"};
    if (!ctx.tokenizer) throw BadRequest{400, "this server has no tokenizer"};
    auto text = ctx.chat_template(j["messages"].dump());
    if (!text.ok()) throw BadRequest{400, text.status().message()};
    return ctx.tokenizer->encode(*text, /*add_special_tokens=*/false);
  }
  if (!j.contains("prompt")) throw BadRequest{400, "missing 'prompt'"};
  json p = j["prompt"];
  if (p.is_array() && p.size() == 1 && p[0].is_string()) p = p[0];  // one prompt in a list
  return prompt_ids(ctx, p, Api::openai);
}

OpenAiRequest openai_request(const json& j, const ServerContext& ctx, bool chat, std::string id) {
  const Api api = Api::openai;
  OpenAiRequest out;
  out.request = new_request(ctx, std::move(id));
  engine::Request& r = out.request;
  r.prompt = openai_prompt(j, ctx, chat);
  out.model = ctx.model_name;
  if (j.contains("model") && j["model"].is_string()) {
    out.model = j["model"].get<std::string>();
    if (!is_base_model(ctx, out.model))
      r.adapter = out.model;  // LoRAX: the model names the adapter
  }
  if (field<int64_t>(j, "n", api).value_or(1) != 1)
    throw BadRequest{400, "only n = 1 is supported"};
  if (field<int64_t>(j, "best_of", api).value_or(1) != 1)
    throw BadRequest{400, "only best_of = 1 is supported"};
  if (j.contains("logprobs") && !j["logprobs"].is_null() && j["logprobs"] != false)
    throw BadRequest{400, "logprobs are not supported"};
  if (field<bool>(j, "echo", api).value_or(false)) throw BadRequest{400, "echo is not supported"};
  auto max_tokens = field<int64_t>(j, "max_completion_tokens", api);
  if (!max_tokens) max_tokens = field<int64_t>(j, "max_tokens", api);
  r.max_new_tokens = max_new_tokens(max_tokens, ctx, api);
  const double temperature = field<double>(j, "temperature", api).value_or(1.0);
  const double top_p = field<double>(j, "top_p", api).value_or(1.0);
  if (temperature < 0 || temperature > 2) throw BadRequest{400, "'temperature' must be in [0, 2]"};
  if (top_p <= 0 || top_p > 1) throw BadRequest{400, "'top_p' must be in (0, 1]"};
  r.sampling.greedy = temperature == 0.0;
  r.sampling.temperature = float(temperature);
  r.sampling.top_p = float(top_p);
  r.sampling.top_k = field<int64_t>(j, "top_k", api).value_or(0);
  r.sampling.seed = uint64_t(field<int64_t>(j, "seed", api).value_or(0));
  r.stop = stop_strings(j, "stop", api);
  r.ignore_eos = field<bool>(j, "ignore_eos", api).value_or(false);  // vLLM's extension
  out.stream = field<bool>(j, "stream", api).value_or(false);
  return out;
}

}  // namespace philora::server
