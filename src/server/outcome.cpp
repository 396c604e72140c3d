// How each engine outcome is answered: one table for both APIs.
#include <httplib.h>

#include <fmt/format.h>

#include "server/routes.h"

namespace philora::server {

using engine::FinishReason;
using nlohmann::json;

namespace {

// reason, LoRAX status, OpenAI status, LoRAX name, OpenAI name, OpenAI code
constexpr Outcome kOutcomes[] = {
    {FinishReason::length, 200, 200, "length", "length", nullptr},
    {FinishReason::eos, 200, 200, "eos_token", "stop", nullptr},
    {FinishReason::stop_sequence, 200, 200, "stop_sequence", "stop", nullptr},
    {FinishReason::abort, 200, 200, "abort", "abort", nullptr},
    {FinishReason::invalid_request, 422, 400, "validation", "invalid_request_error", nullptr},
    {FinishReason::unknown_adapter, 404, 404, "adapter_error", "invalid_request_error",
     "model_not_found"},
    {FinishReason::adapter_invalid, 400, 400, "adapter_error", "invalid_request_error",
     "adapter_invalid"},
    {FinishReason::no_adapter_slot, 503, 503, "overloaded", "server_error", nullptr},
    {FinishReason::device_error, 500, 500, "generation", "server_error", nullptr},
};
constexpr Outcome kNone = {FinishReason::none, 500, 500, "unknown", "server_error", nullptr};

}  // namespace

const Outcome& outcome(FinishReason reason) {
  for (const Outcome& o : kOutcomes)
    if (o.reason == reason) return o;
  return kNone;
}

std::string json_text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json error_json(Api api, const std::string& message, const std::string& type, const char* code,
                const std::string& param) {
  if (api == Api::openai)
    return {{"error",
             {{"message", message},
              {"type", type},
              {"param", param.empty() ? json(nullptr) : json(param)},
              {"code", code ? json(code) : json(nullptr)}}}};
  return {{"error", message}, {"error_type", type}};
}

void send_error(httplib::Response& res, Api api, int status, const std::string& message,
                const std::string& type, const char* code, const std::string& param) {
  res.status = status;
  res.set_content(json_text(error_json(api, message, type, code, param)), "application/json");
}

void send_bad_request(httplib::Response& res, Api api, const BadRequest& e) {
  send_error(res, api, e.status, e.message,
             api == Api::openai ? "invalid_request_error" : "validation", e.code, e.param);
}

void send_queue_full(httplib::Response& res, Api api) {
  res.set_header("Retry-After", "1");
  send_error(res, api, 429, "the server is overloaded: its waiting queue is full; retry later",
             "overloaded", api == Api::openai ? "queue_full" : nullptr);
}

std::string client_error(const Call& call, const Event& e, const std::string& message) {
  if (e.finish == FinishReason::device_error || &outcome(e.finish) == &kNone)
    return fmt::format("internal error (request id {})", call.request_id);
  return message.empty() ? e.error : message;
}

void log_engine_error(const ServerContext& ctx, const Call& call, const Event& e) {
  if (ctx.log)
    ctx.log(fmt::format("request {}: {}: {}", call.request_id, engine::name(e.finish),
                        e.error_detail.empty() ? e.error : e.error_detail));
}

void send_engine_error(httplib::Response& res, Api api, const ServerContext& ctx,
                       const Call& call, const Event& e, const std::string& message) {
  log_engine_error(ctx, call, e);
  const Outcome& o = outcome(e.finish);
  send_error(res, api, status_of(o, api), client_error(call, e, message), name_of(o, api),
             api == Api::openai ? o.openai_code : nullptr);
}

Event run_to_end(Generation& gen) {
  for (;;) {
    Event e = gen.next();
    if (e.last || engine::is_error(e.finish)) return e;
  }
}

}  // namespace philora::server
