// POST /tokenize and POST /detokenize: the server's tokenizer, no model step.
//
// /tokenize answers two APIs, told apart by the body:
//   - LoRAX / TGI, {"inputs", "add_special_tokens"?, "parameters"?}: a JSON list of
//     {id, text, start, stop} per token, `start` / `stop` in code points of `inputs` (HF
//     tokenizers' char offsets: LoRAX's encode_char_offsets), `text` the token as the vocabulary
//     spells it (LoRAX: id_to_token, e.g. "▁Hello"; TGI puts the input's characters there).
//     Special tokens are added unless add_special_tokens is false, as /generate encodes inputs;
//     the post-processor's BOS has (0, 0). `parameters` is TGI's GenerateRequest's; of it only
//     `truncate` (keep the last N tokens) changes tokenization, the rest is accepted unused.
//   - vLLM, {"model"?, "prompt"} or {"model"?, "messages"}: {count, max_model_len, tokens,
//     token_strs}; messages go through the chat template (with the generation prompt).
// /detokenize is vLLM's: {"model"?, "tokens"} -> {"prompt"}.
#include <httplib.h>

#include "server/request_fields.h"
#include "server/routes.h"

namespace philora::server {

using nlohmann::json;
using namespace fields;

namespace {

void send_no_tokenizer(httplib::Response& res, Api api) {
  send_error(res, api, 404, "No fast tokenizer or tokenizer.json for this model",
             api == Api::openai ? "invalid_request_error" : "no fast tokenizer");
}

// LoRAX / TGI /tokenize.
json lorax_tokenize(const json& j, const ServerContext& ctx) {
  constexpr Api kApi = Api::lorax;
  static constexpr const char* kFields[] = {"inputs", "add_special_tokens", "parameters"};
  check_fields(j, kApi, kFields, {}, "field");
  if (!j["inputs"].is_string()) throw bad(kApi, "`inputs` must be a string", "inputs");
  const bool special = get_bool(j, "add_special_tokens", kApi, true);
  std::optional<int64_t> truncate;
  if (present(j, "parameters")) {
    const json& p = j["parameters"];
    if (!p.is_object()) throw bad(kApi, "`parameters` must be an object", "parameters");
    truncate = get_int(p, "truncate", kApi);
    if (truncate && *truncate < 1) throw bad(kApi, "`truncate` must be at least 1", "truncate");
  }
  const auto enc = ctx.tokenizer->encode_with_offsets(j["inputs"].get<std::string>(), special);
  size_t first = 0;
  if (truncate && size_t(*truncate) < enc.ids.size()) first = enc.ids.size() - size_t(*truncate);
  json out = json::array();
  for (size_t i = first; i < enc.ids.size(); ++i)
    out.push_back({{"id", enc.ids[i]},
                   {"text", ctx.tokenizer->id_to_token(enc.ids[i]).value_or("")},
                   {"start", enc.offsets[i].begin},
                   {"stop", enc.offsets[i].end}});
  return out;
}

// vLLM's `model`: absent, the base model's names or an adapter's.
void check_model(const json& j, const ServerContext& ctx, httplib::Response& res, bool& ok) {
  ok = true;
  const std::optional<std::string> m = get_string(j, "model", Api::openai);
  if (!m || is_base_model(ctx, *m) || is_available_adapter(ctx, *m)) return;
  send_error(res, Api::openai, 404, fmt::format("The model `{}` does not exist.", *m),
             "invalid_request_error", "model_not_found", "model");
  ok = false;
}

// vLLM /tokenize.
json vllm_tokenize(const json& j, const ServerContext& ctx) {
  constexpr Api kApi = Api::openai;
  static constexpr const char* kFields[] = {"model", "prompt", "messages", "add_special_tokens",
                                            "add_generation_prompt", "return_token_strs"};
  static constexpr Unsupported kUnsupported[] = {
      {"continue_final_message", false_or_null, "continuing the last message is not supported"},
      {"chat_template", null_only, "a request's own chat template is not supported"},
      {"chat_template_kwargs", empty_or_null, "chat template arguments are not supported"},
      {"tools", empty_or_null, "tools are not supported yet"},
      {"mm_processor_kwargs", empty_or_null, "this model takes text only"}};
  check_fields(j, kApi, kFields, kUnsupported, "field");
  const bool has_prompt = present(j, "prompt"), has_messages = present(j, "messages");
  if (has_prompt == has_messages)
    throw bad(kApi, "give either 'prompt' or 'messages'", has_prompt ? "messages" : "prompt");
  std::vector<int32_t> ids;
  if (has_prompt) {
    if (!j["prompt"].is_string()) throw bad(kApi, "'prompt' must be a string", "prompt");
    ids = ctx.tokenizer->encode(j["prompt"].get<std::string>(),
                                get_bool(j, "add_special_tokens", kApi, true));
  } else {
    if (!j["messages"].is_array() || j["messages"].empty())
      throw bad(kApi, "'messages' must be a non-empty array", "messages");
    if (!get_bool(j, "add_generation_prompt", kApi, true))
      throw bad(kApi, "'add_generation_prompt': false is not supported", "add_generation_prompt");
    if (!ctx.chat_template) throw bad(kApi, "this model has no chat template", "messages");
    auto rendered = ctx.chat_template(j["messages"].dump());
    if (!rendered.ok()) throw bad(kApi, rendered.status().message(), "messages");
    ids = ctx.tokenizer->encode(*rendered, get_bool(j, "add_special_tokens", kApi, false));
  }
  json strs = nullptr;
  if (get_bool(j, "return_token_strs", kApi, false)) {
    strs = json::array();
    for (int32_t id : ids) strs.push_back(ctx.tokenizer->id_to_token(id).value_or(""));
  }
  return {{"count", ids.size()},
          {"max_model_len", ctx.limits.max_total_tokens},
          {"tokens", ids},
          {"token_strs", strs}};
}

// vLLM /detokenize.
json vllm_detokenize(const json& j, const ServerContext& ctx) {
  constexpr Api kApi = Api::openai;
  static constexpr const char* kFields[] = {"model", "tokens"};
  check_fields(j, kApi, kFields, {}, "field");
  if (!j.contains("tokens") || !j["tokens"].is_array())
    throw bad(kApi, "'tokens' must be an array of token ids", "tokens");
  std::vector<int32_t> ids;
  for (const json& v : j["tokens"]) ids.push_back(token_id(v, ctx, kApi, "tokens"));
  return {{"prompt", ctx.tokenizer->decode(ids, /*skip_special_tokens=*/false)}};
}

}  // namespace

void add_tokenize_routes(const AddRoute& add, const ServerContext& ctx) {
  add("/tokenize", Api::lorax,
      [&ctx](const CallPtr& call, const httplib::Request&, httplib::Response& res) {
        auto j = parse_body(*call, res, Api::lorax);
        if (!j) return;
        const Api api = j->contains("inputs") ? Api::lorax : Api::openai;
        if (!ctx.tokenizer) return send_no_tokenizer(res, api);
        try {
          if (api == Api::lorax) {
            const json out = lorax_tokenize(*j, ctx);
            call->prompt_tokens = int64_t(out.size());  // for the access log
            res.set_content(json_text(out), "application/json");
            return;
          }
          bool ok = false;
          check_model(*j, ctx, res, ok);
          if (!ok) return;
          const json out = vllm_tokenize(*j, ctx);
          call->prompt_tokens = out["count"].get<int64_t>();
          res.set_content(json_text(out), "application/json");
        } catch (const BadRequest& e) {
          send_bad_request(res, api, e);
        }
      });
  add("/detokenize", Api::openai,
      [&ctx](const CallPtr& call, const httplib::Request&, httplib::Response& res) {
        auto j = parse_body(*call, res, Api::openai);
        if (!j) return;
        if (!ctx.tokenizer) return send_no_tokenizer(res, Api::openai);
        try {
          bool ok = false;
          check_model(*j, ctx, res, ok);
          if (ok) res.set_content(json_text(vllm_detokenize(*j, ctx)), "application/json");
        } catch (const BadRequest& e) {
          send_bad_request(res, Api::openai, e);
        }
      });
}

}  // namespace philora::server
