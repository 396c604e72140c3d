#include "server/http_server.h"

#include <httplib.h>

#include <chrono>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "server/generation.h"

namespace philora::server {

using nlohmann::json;

namespace {

// A request the client got wrong: the message and the HTTP status to answer with.
struct BadRequest {
  int status;
  std::string message;
};

enum class Api { lorax, openai };

void send_error(httplib::Response& res, Api api, int status, const std::string& message,
                const std::string& type) {
  json body;
  if (api == Api::openai)
    body = {
        {"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}}}};
  else
    body = {{"error", message}, {"error_type", type}};
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Reads an optional number field of the right type, or reports it.
template <typename T>
std::optional<T> field(const json& j, const char* name, Api api) {
  if (!j.contains(name) || j[name].is_null()) return std::nullopt;
  const json& v = j[name];
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean())
      throw BadRequest{api == Api::openai ? 400 : 422, fmt::format("'{}' must be a boolean", name)};
  } else if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer())
      throw BadRequest{api == Api::openai ? 400 : 422,
                       fmt::format("'{}' must be an integer", name)};
  } else {
    if (!v.is_number())
      throw BadRequest{api == Api::openai ? 400 : 422, fmt::format("'{}' must be a number", name)};
  }
  return v.get<T>();
}

std::vector<std::string> stop_strings(const json& j, const char* name, Api api) {
  std::vector<std::string> out;
  if (!j.contains(name) || j[name].is_null()) return out;
  const json& v = j[name];
  const int status = api == Api::openai ? 400 : 422;
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

// Whether a request's model / adapter_id names the base model (empty does too).
bool is_base_model(const ServerContext& ctx, const std::string& name) {
  if (name.empty() || name == ctx.model_name) return true;
  for (const std::string& a : ctx.model_aliases)
    if (!a.empty() && name == a) return true;
  return false;
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
  ServerContext& ctx = ctx_;
  auto next_id = [this] { return fmt::format("req-{}", next_id_++); };

  // Parses the JSON body, or answers 400.
  auto parse_body = [](const httplib::Request& req, httplib::Response& res,
                       Api api) -> std::optional<json> {
    json j = json::parse(req.body, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      send_error(res, api, 400, "the request body must be a JSON object", "invalid_request_error");
      return std::nullopt;
    }
    return j;
  };

  // Token ids of a prompt given as text or as ids.
  auto prompt_ids = [&ctx](const json& p, Api api) {
    const int status = api == Api::openai ? 400 : 422;
    std::vector<int32_t> ids;
    if (p.is_string()) {
      if (!ctx.tokenizer) throw BadRequest{status, "this server has no tokenizer: give token ids"};
      ids = ctx.tokenizer->encode(p.get<std::string>(), /*add_special_tokens=*/true);
    } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
      for (const auto& v : p) {
        if (!v.is_number_integer())
          throw BadRequest{status, "a token-id prompt must hold integers only"};
        ids.push_back(v.get<int32_t>());
      }
    } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
      return std::vector<int32_t>{};  // handled by the caller (single prompt in a list)
    } else {
      throw BadRequest{status, "the prompt must be a string or an array of token ids"};
    }
    if (ids.empty()) throw BadRequest{status, "the prompt is empty"};
    return ids;
  };

  auto check_lengths = [&ctx](const GenerationParams& g, Api api) {
    const int status = api == Api::openai ? 400 : 422;
    if (g.max_new_tokens < 1) throw BadRequest{status, "max new tokens must be at least 1"};
    if (int64_t(g.prompt.size()) + g.max_new_tokens > ctx.max_positions)
      throw BadRequest{
          status,
          fmt::format("the prompt ({} tokens) plus {} new tokens exceeds the model's {} positions",
                      g.prompt.size(), g.max_new_tokens, ctx.max_positions)};
  };

  // Reads events until the end; returns the final one.
  auto run_to_end = [](Generation& gen) {
    for (;;) {
      Event e = gen.next();
      if (e.finished) return e;
    }
  };

  // An error the engine reported: the request was refused (4xx), the adapter
  // could not be loaded (400), or the device failed (500).
  auto engine_error = [](httplib::Response& res, Api api, const Event& e) {
    if (e.finish_reason == "invalid")
      return send_error(res, api, api == Api::openai ? 400 : 422, e.error, "validation");
    const bool adapter = e.error.find("adapter") != std::string::npos;
    send_error(res, api, adapter ? 400 : 500, e.error,
               adapter ? "adapter_error" : "generation_error");
  };

  // ---- health and info ----------------------------------------------------
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
    m += fmt::format(
        "# TYPE philora_graph_steps_total counter\nphilora_graph_steps_total {}\n"
        "# TYPE philora_eager_steps_total counter\nphilora_eager_steps_total {}\n"
        "# TYPE philora_graphs_recorded_total counter\nphilora_graphs_recorded_total {}\n",
        s.runner.graph_steps, s.runner.eager_steps, s.runner.captures);
    res.set_content(m, "text/plain; version=0.0.4");
  });

  // ---- LoRAX: /generate and /generate_stream ----------------------------
  auto lorax_params = [&ctx, prompt_ids, check_lengths](const json& j) {
    const Api api = Api::lorax;
    if (!j.contains("inputs")) throw BadRequest{422, "missing 'inputs'"};
    GenerationParams g;
    g.prompt = prompt_ids(j["inputs"], api);
    const json params = j.value("parameters", json::object());
    if (!params.is_object()) throw BadRequest{422, "'parameters' must be an object"};
    if (params.contains("adapter_id") && !params["adapter_id"].is_null()) {
      if (!params["adapter_id"].is_string()) throw BadRequest{422, "'adapter_id' must be a string"};
      const std::string a = params["adapter_id"].get<std::string>();
      if (!is_base_model(ctx, a)) g.adapter = a;
    }
    g.max_new_tokens =
        field<int64_t>(params, "max_new_tokens", api).value_or(ctx.default_max_new_tokens);
    const auto temperature = field<double>(params, "temperature", api);
    const auto top_k = field<int64_t>(params, "top_k", api);
    const auto top_p = field<double>(params, "top_p", api);
    const bool do_sample = field<bool>(params, "do_sample", api).value_or(false);
    if (temperature && *temperature <= 0)
      throw BadRequest{422, "'temperature' must be strictly positive"};
    if (top_k && *top_k <= 0) throw BadRequest{422, "'top_k' must be strictly positive"};
    if (top_p && (*top_p <= 0 || *top_p > 1)) throw BadRequest{422, "'top_p' must be in (0, 1]"};
    g.sampling.greedy =
        !(do_sample || (temperature && *temperature != 1.0) || top_k || (top_p && *top_p < 1.0));
    g.sampling.temperature = float(temperature.value_or(1.0));
    g.sampling.top_k = top_k.value_or(0);
    g.sampling.top_p = float(top_p.value_or(1.0));
    g.sampling.seed = uint64_t(field<int64_t>(params, "seed", api).value_or(0));
    g.stop = stop_strings(params, "stop", api);
    g.ignore_eos = field<bool>(params, "ignore_eos_token", api).value_or(false);
    check_lengths(g, api);
    return std::make_pair(g, field<bool>(params, "details", api).value_or(false));
  };

  http_->Post("/generate", [=, &ctx](const httplib::Request& req, httplib::Response& res) {
    auto j = parse_body(req, res, Api::lorax);
    if (!j) return;
    try {
      auto [g, details] = lorax_params(*j);
      Generation gen(*ctx.host, ctx.tokenizer, next_id(), std::move(g));
      const Event last = run_to_end(gen);
      if (last.finish_reason == "error" || last.finish_reason == "invalid")
        return engine_error(res, Api::lorax, last);
      json out = {{"generated_text", gen.text()}};
      if (details)
        out["details"] = {{"finish_reason", last.finish_reason},
                          {"generated_tokens", gen.tokens().size()},
                          {"prompt_tokens", gen.prompt_tokens()},
                          {"seed", nullptr},
                          {"prefill", json::array()},
                          {"tokens", gen.tokens()}};
      res.set_content(out.dump(), "application/json");
    } catch (const BadRequest& e) {
      send_error(res, Api::lorax, e.status, e.message, "validation");
    }
  });

  http_->Post("/generate_stream", [=, &ctx](const httplib::Request& req, httplib::Response& res) {
    auto j = parse_body(req, res, Api::lorax);
    if (!j) return;
    try {
      auto [g, details] = lorax_params(*j);
      (void)details;
      auto gen = std::make_shared<Generation>(*ctx.host, ctx.tokenizer, next_id(), std::move(g));
      res.set_chunked_content_provider("text/event-stream", [gen](size_t, httplib::DataSink& sink) {
        const Event e = gen->next();
        json ev;
        if (e.finish_reason == "error" || e.finish_reason == "invalid") {
          ev = {{"error", e.error}, {"error_type", "generation"}};
        } else {
          ev = {{"token",
                 {{"id", e.token}, {"text", e.text}, {"logprob", nullptr}, {"special", e.special}}},
                {"generated_text", nullptr},
                {"details", nullptr}};
          if (e.finished) {
            ev["generated_text"] = gen->text();
            ev["details"] = {{"finish_reason", e.finish_reason},
                             {"generated_tokens", gen->tokens().size()},
                             {"prompt_tokens", gen->prompt_tokens()},
                             {"seed", nullptr}};
          }
        }
        const std::string chunk = "data:" + ev.dump() + "\n\n";
        if (!sink.write(chunk.data(), chunk.size()))
          return false;  // client gone: ~Generation aborts
        if (e.finished) sink.done();
        return true;
      });
    } catch (const BadRequest& e) {
      send_error(res, Api::lorax, e.status, e.message, "validation");
    }
  });

  // ---- OpenAI: /v1/completions and /v1/chat/completions -----------------
  auto openai_params = [&ctx, check_lengths](const json& j, std::vector<int32_t> prompt) {
    const Api api = Api::openai;
    GenerationParams g;
    g.prompt = std::move(prompt);
    if (j.contains("model") && j["model"].is_string()) {
      const std::string m = j["model"].get<std::string>();
      if (!is_base_model(ctx, m)) g.adapter = m;  // LoRAX: the model names the adapter
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
    g.max_new_tokens = max_tokens.value_or(ctx.default_max_new_tokens);
    const double temperature = field<double>(j, "temperature", api).value_or(1.0);
    const double top_p = field<double>(j, "top_p", api).value_or(1.0);
    if (temperature < 0 || temperature > 2)
      throw BadRequest{400, "'temperature' must be in [0, 2]"};
    if (top_p <= 0 || top_p > 1) throw BadRequest{400, "'top_p' must be in (0, 1]"};
    g.sampling.greedy = temperature == 0.0;
    g.sampling.temperature = float(temperature);
    g.sampling.top_p = float(top_p);
    g.sampling.top_k = field<int64_t>(j, "top_k", api).value_or(0);
    g.sampling.seed = uint64_t(field<int64_t>(j, "seed", api).value_or(0));
    g.stop = stop_strings(j, "stop", api);
    g.ignore_eos = field<bool>(j, "ignore_eos", api).value_or(false);  // vLLM's extension
    check_lengths(g, api);
    return g;
  };

  auto openai_finish = [](const std::string& r) {
    return r == "length" ? "length" : (r == "abort" ? "abort" : "stop");
  };

  auto openai_run = [=, &ctx](const httplib::Request& req, httplib::Response& res, bool chat) {
    auto j = parse_body(req, res, Api::openai);
    if (!j) return;
    try {
      std::vector<int32_t> prompt;
      if (chat) {
        if (!j->contains("messages") || !(*j)["messages"].is_array() || (*j)["messages"].empty())
          throw BadRequest{400, "'messages' must be a non-empty array"};
        if (!ctx.chat_template) throw BadRequest{400, "this model has no chat template"};
        if (!ctx.tokenizer) throw BadRequest{400, "this server has no tokenizer"};
        auto text = ctx.chat_template((*j)["messages"].dump());
        if (!text.ok()) throw BadRequest{400, text.status().message()};
        prompt = ctx.tokenizer->encode(*text, /*add_special_tokens=*/false);
      } else {
        if (!j->contains("prompt")) throw BadRequest{400, "missing 'prompt'"};
        json p = (*j)["prompt"];
        if (p.is_array() && p.size() == 1 && p[0].is_string()) p = p[0];
        prompt = prompt_ids(p, Api::openai);
      }
      GenerationParams g = openai_params(*j, std::move(prompt));
      const std::string model = j->value("model", ctx.model_name);
      const std::string id = (chat ? "chatcmpl-" : "cmpl-") + next_id();
      const int64_t created = now_seconds();
      const bool stream = field<bool>(*j, "stream", Api::openai).value_or(false);
      auto gen = std::make_shared<Generation>(*ctx.host, ctx.tokenizer, id, std::move(g));
      if (!stream) {
        const Event last = run_to_end(*gen);
        if (last.finish_reason == "error" || last.finish_reason == "invalid")
          return engine_error(res, Api::openai, last);
        json choice = {{"index", 0},
                       {"finish_reason", openai_finish(last.finish_reason)},
                       {"logprobs", nullptr}};
        if (chat)
          choice["message"] = {{"role", "assistant"}, {"content", gen->text()}};
        else
          choice["text"] = gen->text();
        const int64_t n = int64_t(gen->tokens().size());
        json out = {{"id", id},
                    {"object", chat ? "chat.completion" : "text_completion"},
                    {"created", created},
                    {"model", model},
                    {"choices", json::array({choice})},
                    {"usage",
                     {{"prompt_tokens", gen->prompt_tokens()},
                      {"completion_tokens", n},
                      {"total_tokens", gen->prompt_tokens() + n}}}};
        res.set_content(out.dump(), "application/json");
        return;
      }
      auto first = std::make_shared<bool>(true);
      res.set_chunked_content_provider("text/event-stream", [=](size_t, httplib::DataSink& sink) {
        const Event e = gen->next();
        json choice = {{"index", 0}, {"finish_reason", nullptr}, {"logprobs", nullptr}};
        if (e.finished) choice["finish_reason"] = openai_finish(e.finish_reason);
        if (chat) {
          json delta = {{"content", e.text}};
          if (*first) delta["role"] = "assistant";
          choice["delta"] = delta;
        } else {
          choice["text"] = e.text;
        }
        *first = false;
        json ev = {{"id", id},
                   {"object", chat ? "chat.completion.chunk" : "text_completion"},
                   {"created", created},
                   {"model", model},
                   {"choices", json::array({choice})}};
        if (e.finish_reason == "error" || e.finish_reason == "invalid")
          ev = {{"error", {{"message", e.error}, {"type", "generation_error"}}}};
        std::string chunk = "data: " + ev.dump() + "\n\n";
        if (e.finished) chunk += "data: [DONE]\n\n";
        if (!sink.write(chunk.data(), chunk.size())) return false;
        if (e.finished) sink.done();
        return true;
      });
    } catch (const BadRequest& e) {
      send_error(res, Api::openai, e.status, e.message, "invalid_request_error");
    }
  };
  http_->Post("/v1/completions", [=](const httplib::Request& req, httplib::Response& res) {
    openai_run(req, res, false);
  });
  http_->Post("/v1/chat/completions", [=](const httplib::Request& req, httplib::Response& res) {
    openai_run(req, res, true);
  });

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
