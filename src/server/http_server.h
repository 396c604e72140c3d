// The HTTP front: LoRAX (/generate, /generate_stream: lorax_routes.cpp),
// OpenAI (/v1/completions, /v1/chat/completions: openai_routes.cpp;
// /v1/models), /health, /info, /metrics. Each API's parameters are checked as
// the JSON becomes an engine::Request (request_json.cpp), the request against
// the model by the engine; bad input gets a JSON error with a 4xx status, and
// every engine outcome its status and name from one table (outcome.cpp).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "server/engine_host.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
}

namespace philora::server {

struct ServerContext {
  EngineHost* host = nullptr;
  const tokenizer::Tokenizer* tokenizer = nullptr;  // null: only token-id prompts
  std::string model_name = "philora";       // the served name of the base model
  std::vector<std::string> model_aliases;  // other names that select the base model (its path)
  std::vector<std::string> adapters;       // adapters known at start, listed by /v1/models
  int64_t max_positions = 4096;
  int64_t default_max_new_tokens = 64;
  // Renders chat messages (a JSON array) to a prompt; null: no chat endpoint.
  std::function<Expected<std::string>(const std::string& messages_json)> chat_template;
  // The server's log (philora serve: stderr): one line per request that ended
  // in an error, with the full message, which may name server files that the
  // client is not shown. Null: not logged.
  std::function<void(const std::string& line)> log;
};

class HttpServer {
 public:
  explicit HttpServer(ServerContext ctx);
  ~HttpServer();

  // Binds host:port (port 0 = any free port) and serves until stop().
  Status listen(const std::string& host, int port);
  // Binds now, serves on a background thread; returns the bound port.
  Expected<int> start(const std::string& host, int port);
  void stop();

 private:
  void routes();
  void add_info_routes();
  void add_error_handlers();
  ServerContext ctx_;
  std::unique_ptr<httplib::Server> http_;
  std::atomic<uint64_t> next_id_{0};
  std::unique_ptr<std::thread> thread_;
};

}  // namespace philora::server
