// The HTTP front: LoRAX (/generate, /generate_stream, POST /:
// lorax_routes.cpp), OpenAI (/v1/completions, /v1/chat/completions:
// openai_routes.cpp; /v1/models), /health, /info, /metrics. Each API's
// parameters are checked as the JSON becomes an engine::Request
// (request_json.cpp), the request against the model by the engine; bad input
// gets a JSON error with a 4xx status, and every engine outcome its status
// and name from one table (outcome.cpp).
//
// Every route runs behind the same gate (http_server.cpp): the body read
// under --max-body-bytes (413), X-Request-Id echoed (generated when absent),
// the API key (401, every route but /health), the server's state (503 while
// the model loads or the server drains), the connection limit (503), then one
// JSON access-log line and the request counters once the response is sent.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "server/engine_host.h"
#include "server/metrics.h"
#include "structured/matcher.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
}

namespace philora::server {

struct Call;

// What one request may ask for; a request beyond a limit gets a 4xx that names it.
struct RequestLimits {
  // Prompt + new tokens of one sequence: the model's positions, or the KV
  // cache when it is smaller (Engine::max_sequence_tokens).
  int64_t max_total_tokens = 4096;
  int64_t max_input_tokens = 0;         // prompt tokens (after truncate); 0: max_total_tokens - 1
  int64_t max_new_tokens = 0;           // the most one request may ask for; 0: what the context leaves
  int64_t default_max_new_tokens = 64;  // when a request gives none (at most what the context leaves)
  int64_t max_stop_sequences = 16;
  int64_t max_stop_bytes = 256;  // of one stop sequence
  int64_t max_n = 16;            // OpenAI's n and best_of, LoRAX's best_of
  int64_t input_limit() const { return max_input_tokens > 0 ? max_input_tokens : max_total_tokens - 1; }
};

// Everything the routes need once the model is loaded.
struct ServerContext {
  EngineHost* host = nullptr;
  // The engine's tokenizer (the engine detokenizes and matches stop strings
  // with it); null: only token-id prompts, no text and no stop strings.
  const tokenizer::Tokenizer* tokenizer = nullptr;
  std::string model_name = "philora";       // the served name of the base model
  // The model's vocabulary: token ids a client gives (prompts, logit_bias,
  // stop_token_ids) are checked against it; 0: only against int32.
  int64_t vocab_size = 0;
  std::vector<std::string> model_aliases;  // other names that select the base model (its path)
  // The adapters a client may name (/v1/models lists them): `adapters`, given
  // by name (--adapter NAME=DIR), then every directory of `adapter_dir` that
  // holds an adapter_config.json, read again each time (available_adapters),
  // so that one added while the server runs is listed too.
  std::vector<std::string> adapters;
  std::string adapter_dir;  // empty: none
  RequestLimits limits;
  int64_t speculate = 0;  // the most drafted tokens a sequence verifies per step (/info); 0: off
  std::string speculate_method;  // "ngram" or "medusa" (/info), empty when off
  int64_t speculate_paths = 1;   // candidate chains a sequence verifies per step (/info)
  // Structured output: the server's compiled constraints (one cache for every
  // request, keyed by the constraint's text; built over the tokenizer's
  // vocabulary); null: response_format / guided_* are refused.
  std::shared_ptr<structured::ConstraintCache> constraints;
  // Renders chat messages (a JSON array) to a prompt; null: no chat endpoint.
  std::function<Expected<std::string>(const std::string& messages_json)> chat_template;
  // The server's log (philora serve: stderr): one line per request that ended
  // in an error, with the full message, which may name server files that the
  // client is not shown. Null: not logged.
  std::function<void(const std::string& line)> log;
};

// `ctx.adapters`, then the adapter directories in `ctx.adapter_dir` now (sorted; a name given
// twice is listed once).
std::vector<std::string> available_adapters(const ServerContext& ctx);

// Whether a client may name `adapter`: one of available_adapters(ctx).
bool is_available_adapter(const ServerContext& ctx, const std::string& adapter);

// How the HTTP server itself behaves, before and after the model is there.
struct HttpOptions {
  size_t max_body_bytes = size_t(4) << 20;  // larger request bodies get a 413
  int max_connections = 512;  // connections served at once; one more gets a 503
  std::string api_key;        // non-empty: "Authorization: Bearer KEY" on every route but /health
  // One JSON line per request (request id, route, adapter, tokens, status,
  // latency); null: none.
  std::function<void(const std::string& line)> access_log;
};

class HttpServer {
 public:
  // Loading: /health answers 503 and every other route 503 until serve().
  explicit HttpServer(HttpOptions options = {});
  // Ready at once, over `ctx`.
  explicit HttpServer(ServerContext ctx, HttpOptions options = {});
  ~HttpServer();

  // Binds host:port (port 0 = any free port) and serves until stop().
  Status listen(const std::string& host, int port);
  // Binds now, serves on a background thread; returns the bound port.
  Expected<int> start(const std::string& host, int port);
  // The model is loaded: the routes serve `ctx` from now on.
  void serve(ServerContext ctx);
  // Stops taking work: new requests for generation get a 503 (with
  // Connection: close) and /health says draining, while what runs goes on.
  // Returns once no request is in flight, or false when `grace` ran out
  // first; stop() then closes the listener.
  bool drain(std::chrono::milliseconds grace);
  void stop();

  // Requests being served (a stream until its last event is sent).
  int64_t in_flight() const { return in_flight_.load(); }

  enum class State { loading, ready, draining };
  State state() const { return state_.load(std::memory_order_acquire); }
  struct Gate;  // the per-request checks and bookkeeping (http_server.cpp)

 private:
  void routes();
  void add_info_routes();
  void add_error_handlers();
  void done(Call& call);
  HttpOptions options_;
  ServerContext ctx_;
  std::atomic<State> state_{State::loading};
  std::unique_ptr<httplib::Server> http_;
  std::atomic<uint64_t> next_id_{0};         // X-Request-Id when the client gives none
  std::atomic<uint64_t> next_engine_id_{0};  // engine::Request::id, unique
  std::atomic<int64_t> in_flight_{0};
  std::mutex drain_mu_;
  std::condition_variable drained_;
  CounterFamily requests_{{"route", "status", "adapter"}};  // philora_http_requests_total
  CounterFamily finished_{{"finished_reason"}};            // vllm:request_success_total
  std::unique_ptr<std::thread> thread_;
  std::atomic<bool> listener_done_{false};  // start()'s thread has left listen_after_bind
};

}  // namespace philora::server
