// What the route files share (internal to src/server): the one place that
// turns a request's JSON into an engine::Request (request_json.cpp), and the
// one table from engine outcomes to HTTP statuses and API names (outcome.cpp).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
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

// A request the client got wrong: the HTTP status to answer with and why
// (OpenAI errors also name the parameter and may carry a code).
struct BadRequest {
  int status;
  std::string message;
  std::string param = "";
  const char* code = nullptr;
};

// One HTTP request as a route sees it. The gate (http_server.cpp) makes it
// and reads the body; once the response is sent — a stream's after its last
// event, when the stream's provider, which holds it too, lets it go — its
// destructor writes the access-log line and counts the request.
struct Call {
  std::string request_id;  // X-Request-Id: the client's, or generated
  std::string route;       // the route's pattern, e.g. "/generate"
  std::string method;
  std::string remote;
  std::string body;
  std::chrono::steady_clock::time_point start;
  // Filled by the route, for the log and the counters:
  std::string adapter;  // the adapter the request named; empty: the base model
  int64_t prompt_tokens = 0;
  int64_t output_tokens = 0;
  std::string finish_reason;  // the API's finish reason; empty: none (an error before any)
  int status = 500;           // the HTTP status (the gate sets it after the handler)
  std::function<void(Call&)> on_done;
  Call() = default;
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;
  ~Call() {
    if (on_done) on_done(*this);
  }
};
using CallPtr = std::shared_ptr<Call>;
using Handler =
    std::function<void(const CallPtr& call, const httplib::Request&, httplib::Response&)>;
// Registers a POST route that needs the model (503 while loading or draining).
using AddRoute = std::function<void(const std::string& path, Api api, Handler handler)>;

// ---- JSON -> engine::Request (lorax_request.cpp, openai_request.cpp) -------
// Each throws BadRequest for a parameter of the wrong type or out of the
// API's range; what depends on the model (positions, KV cache) is checked
// once more by Engine::add_request.

// The body as a JSON object, or nullopt after answering 400 (request_json.cpp).
std::optional<nlohmann::json> parse_body(const Call& call, httplib::Response& res, Api api);

// LoRAX / TGI {inputs, parameters} (and `stream` on POST /: `route` says which
// route it came to).
enum class LoraxRoute { generate, generate_stream, compat };
struct LoraxRequest {
  engine::Request request;  // logprobs of kind processed, as LoRAX reports them
  bool stream = false;
  bool details = false;                // details (tokens, seed, ...)
  bool decoder_input_details = false;  // details.prefill with the prompt's logprobs
  int32_t k_alternatives = 0;          // LoRAX's alternative_tokens per token
  int32_t top_n_tokens = 0;            // TGI's top_tokens per token
  std::optional<std::string> full_text_prefix;  // return_full_text: the inputs as given
};
LoraxRequest lorax_request(const nlohmann::json& body, const ServerContext& ctx, std::string id,
                           LoraxRoute route = LoraxRoute::generate);

// OpenAI /v1/completions (`chat` false) and /v1/chat/completions.
struct OpenAiRequest {
  engine::Request request;  // logprobs of kind raw, as vLLM reports them
  std::string model;  // as the client named it (the served name when it gave none)
  bool chat = false;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
  // Completions: `logprobs` (the top k per token); chat: `top_logprobs` when
  // `logprobs` is true. nullopt: no logprobs.
  std::optional<int32_t> logprobs;
  bool echo = false;        // completions: the prompt comes first, in the text and the logprobs
  std::string prompt_text;  // with echo: the prompt as given (token ids: decoded)
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
                const std::string& type, const char* code = nullptr,
                const std::string& param = "");
nlohmann::json error_json(Api api, const std::string& message, const std::string& type,
                          const char* code = nullptr, const std::string& param = "");
void send_bad_request(httplib::Response& res, Api api, const BadRequest& e);
// The waiting queue is full (EngineHost::submit refused): 429 with Retry-After.
void send_queue_full(httplib::Response& res, Api api);
// JSON as text for a client; bytes that are not UTF-8 become U+FFFD.
std::string json_text(const nlohmann::json& j);

// The message a client gets for a request that ended with an error reason:
// `message` (the event's when empty), except for an internal failure (the
// device, or an outcome the table lacks): "internal error" and the request's
// X-Request-Id, never the failure's text, which may name server files.
std::string client_error(const Call& call, const Event& e, const std::string& message = "");
// Answers such a request with the table's status and names and
// client_error(), and writes the full message to the server's log.
void send_engine_error(httplib::Response& res, Api api, const ServerContext& ctx,
                       const Call& call, const Event& e, const std::string& message = "");
void log_engine_error(const ServerContext& ctx, const Call& call, const Event& e);

// Reads events until the request's last, or the first error; returns it.
Event run_to_end(Generation& gen);

// ---- routes (lorax_routes.cpp, openai_routes.cpp) --------------------------
using IdSource = std::function<std::string()>;  // a fresh engine request id per call
void add_lorax_routes(const AddRoute& add, const ServerContext& ctx, IdSource next_id);
void add_openai_routes(const AddRoute& add, const ServerContext& ctx, IdSource next_id);
// POST /tokenize (LoRAX / TGI and vLLM shapes, by the body) and vLLM's /detokenize
// (tokenize_routes.cpp).
void add_tokenize_routes(const AddRoute& add, const ServerContext& ctx);

}  // namespace philora::server
