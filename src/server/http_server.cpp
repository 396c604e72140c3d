#include "server/http_server.h"

#include <httplib.h>

#include <chrono>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "server/routes.h"

namespace philora::server {

using nlohmann::json;

namespace {

int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

HttpServer::HttpServer(ServerContext ctx)
    : ctx_(std::move(ctx)), http_(std::make_unique<httplib::Server>()) {
  // One handler thread per in-flight request: the engine batches them.
  http_->new_task_queue = [] { return new httplib::ThreadPool(512); };
  routes();
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::stop() {
  if (http_) http_->stop();
  if (thread_ && thread_->joinable()) thread_->join();
  thread_.reset();
}

Status HttpServer::listen(const std::string& host, int port) {
  if (!http_->listen(host, port)) return Status::errorf("cannot listen on {}:{}", host, port);
  return Status();
}

Expected<int> HttpServer::start(const std::string& host, int port) {
  int bound = port;
  if (port == 0) {
    bound = http_->bind_to_any_port(host);
    if (bound < 0) return Status::errorf("cannot bind {}", host);
  } else if (!http_->bind_to_port(host, port)) {
    return Status::errorf("cannot bind {}:{}", host, port);
  }
  thread_ = std::make_unique<std::thread>([this] { http_->listen_after_bind(); });
  return bound;
}

void HttpServer::routes() {
  const ServerContext& ctx = ctx_;
  IdSource next_id = [this] { return fmt::format("req-{}", next_id_++); };
  add_info_routes();
  add_lorax_routes(*http_, ctx, next_id);
  add_openai_routes(*http_, ctx, next_id);
  add_error_handlers();
}

// /health, /info, /v1/models, /metrics.
void HttpServer::add_info_routes() {
  const ServerContext& ctx = ctx_;
  http_->Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  http_->Get("/info", [&ctx](const httplib::Request&, httplib::Response& res) {
    json j = {{"model_id", ctx.model_name},
              {"max_total_tokens", ctx.max_positions},
              {"max_input_length", ctx.max_positions - 1},
              {"version", "0.1.0"},
              {"docker_label", nullptr},
              {"sha", nullptr}};
    res.set_content(j.dump(), "application/json");
  });
  http_->Get("/v1/models", [&ctx](const httplib::Request&, httplib::Response& res) {
    const int64_t created = now_seconds();
    json data = json::array(
        {{{"id", ctx.model_name}, {"object", "model"}, {"created", created}, {"owned_by", "philora"}}});
    for (const std::string& a : ctx.adapters)
      data.push_back({{"id", a},
                      {"object", "model"},
                      {"created", created},
                      {"owned_by", "philora"},
                      {"parent", ctx.model_name}});
    json j = {{"object", "list"}, {"data", data}};
    res.set_content(j.dump(), "application/json");
  });
  http_->Get("/metrics", [&ctx](const httplib::Request&, httplib::Response& res) {
    const EngineHost::Stats s = ctx.host->stats();
    std::string m;
    m += fmt::format("# TYPE philora_requests_total counter\nphilora_requests_total {}\n",
                     s.requests);
    m += fmt::format("# TYPE philora_running gauge\nphilora_running {}\n", s.running);
    m += fmt::format("# TYPE philora_waiting gauge\nphilora_waiting {}\n", s.waiting);
    m +=
        fmt::format("# TYPE philora_steps_total counter\nphilora_steps_total {}\n", s.engine.steps);
    m += fmt::format("# TYPE philora_prompt_tokens_total counter\nphilora_prompt_tokens_total {}\n",
                     s.engine.prompt_tokens);
    m += fmt::format(
        "# TYPE philora_generated_tokens_total counter\nphilora_generated_tokens_total {}\n",
        s.engine.generated_tokens);
    m += fmt::format("# TYPE philora_preemptions_total counter\nphilora_preemptions_total {}\n",
                     s.engine.preemptions);
    // In tokens, as vLLM's: the hit rate is hits / queries.
    m += fmt::format(
        "# HELP philora_prefix_cache_queries_total Tokens of the sequences looked up in the prefix "
        "cache at admission.\n"
        "# TYPE philora_prefix_cache_queries_total counter\nphilora_prefix_cache_queries_total {}\n"
        "# HELP philora_prefix_cache_hits_total Of those, tokens found in cached KV pages.\n"
        "# TYPE philora_prefix_cache_hits_total counter\nphilora_prefix_cache_hits_total {}\n",
        s.engine.prefix_cache_queries, s.engine.prefix_cache_hits);
    m += fmt::format(
        "# TYPE philora_graph_steps_total counter\nphilora_graph_steps_total {}\n"
        "# TYPE philora_eager_steps_total counter\nphilora_eager_steps_total {}\n"
        "# TYPE philora_graphs_recorded_total counter\nphilora_graphs_recorded_total {}\n",
        s.runner.graph_steps, s.runner.eager_steps, s.runner.captures);
    res.set_content(m, "text/plain; version=0.0.4");
  });
}

// JSON bodies for unknown routes and for exceptions.
void HttpServer::add_error_handlers() {
  http_->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    json body = {{"error", fmt::format("{} {}: {}", req.method, req.path,
                                       res.status == 404 ? "no such route" : "error")},
                 {"error_type", "http"}};
    res.set_content(body.dump(), "application/json");
  });
  http_->set_exception_handler([](const httplib::Request&, httplib::Response& res,
                                  std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    res.status = 500;
    res.set_content(json({{"error", what}, {"error_type", "internal"}}).dump(), "application/json");
  });
}

}  // namespace philora::server
