// What the route files share (internal to src/server): the one place that
// turns a request's JSON into an engine::Request (request_json.cpp), and the
// one table from engine outcomes to HTTP statuses and API names (outcome.cpp).
#pragma once

#include <functional>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/request.h"
#include "server/generation.h"
#include "server/http_server.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace philora::server {

enum class Api { lorax, openai };

// A request the client got wrong: the HTTP status to answer with and why.
struct BadRequest {
  int status;
  std::string message;
};

// ---- JSON -> engine::Request (request_json.cpp) ----------------------------
// Each throws BadRequest for a parameter of the wrong type or out of the
// API's range; what depends on the model (vocabulary, positions, KV cache) is
// checked once, by Engine::add_request.

// The body as a JSON object, or nullopt after answering 400.
std::optional<nlohmann::json> parse_body(const httplib::Request& req, httplib::Response& res,
                                         Api api);

// LoRAX / TGI {inputs, parameters}.
struct LoraxRequest {
  engine::Request request;
  bool details = false;
};
LoraxRequest lorax_request(const nlohmann::json& body, const ServerContext& ctx, std::string id);

// OpenAI /v1/completions (`chat` false) and /v1/chat/completions.
struct OpenAiRequest {
  engine::Request request;
  std::string model;  // as the client named it (the served name when it gave none)
  bool stream = false;
};
OpenAiRequest openai_request(const nlohmann::json& body, const ServerContext& ctx, bool chat,
                             std::string id);

// ---- outcomes (outcome.cpp) ------------------------------------------------
// How a request that ended with `reason` is answered on each API.
struct Outcome {
  engine::FinishReason reason;
  int lorax_status;  // 200 for a normal end
  int openai_status;
  const char* lorax_name;   // details.finish_reason, or an error's error_type
  const char* openai_name;  // choices[].finish_reason, or an error's type
  const char* openai_code;  // an error's code (nullptr: null)
};
const Outcome& outcome(engine::FinishReason reason);
inline int status_of(const Outcome& o, Api api) {
  return api == Api::openai ? o.openai_status : o.lorax_status;
}
inline const char* name_of(const Outcome& o, Api api) {
  return api == Api::openai ? o.openai_name : o.lorax_name;
}

// A JSON error in the API's shape: LoRAX {error, error_type}, OpenAI
// {error: {message, type, param, code}}.
void send_error(httplib::Response& res, Api api, int status, const std::string& message,
                const std::string& type, const char* code = nullptr);
nlohmann::json error_json(Api api, const std::string& message, const std::string& type,
                          const char* code = nullptr);

// Answers a request that ended with an error reason: the status and names of
// the table, `message` (the event's when empty) for the client, and the full
// message in the server's log.
void send_engine_error(httplib::Response& res, Api api, const ServerContext& ctx,
                       const std::string& id, const Event& e, const std::string& message = "");
void log_engine_error(const ServerContext& ctx, const std::string& id, const Event& e);

// Reads events until the end; returns the final one.
Event run_to_end(Generation& gen);

// ---- routes (lorax_routes.cpp, openai_routes.cpp) --------------------------
using IdSource = std::function<std::string()>;  // a fresh request id per call
void add_lorax_routes(httplib::Server& http, const ServerContext& ctx, IdSource next_id);
void add_openai_routes(httplib::Server& http, const ServerContext& ctx, IdSource next_id);

}  // namespace philora::server
