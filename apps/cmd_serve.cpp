// philora serve: the HTTP server (LoRAX + OpenAI APIs) over the continuous-
// batching engine. Without --model it serves the embedded model and its
// adapters; adapters load on demand from --adapter-dir (or --adapter
// NAME=DIR) into device slots.
#include <chrono>
#include <csignal>
#include <iostream>
#include <memory>

#include <fmt/format.h>

#include "commands.h"
#include "common.h"
#include "server/http_server.h"
#include "serving.h"

namespace philora::app {

namespace {

struct ServeOptions {
  ServingOptions serving;
  std::string host = "127.0.0.1";
  int port = 8080;
  server::HttpOptions http;
  server::RequestLimits limits;  // max_total_tokens: from the engine
  int64_t max_waiting = 1024;
  double drain_seconds = 30;
  bool access_log = true;
};

void log_line(const std::string& line) { std::cerr << (line + "\n") << std::flush; }

int run_serve(ServeOptions o) {
  // SIGINT/SIGTERM are waited for below; block them before any thread starts.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  // The listener comes first: a port in use fails at once, and /health
  // answers 503 (loading) while the model loads.
  if (o.access_log) o.http.access_log = log_line;
  server::HttpServer http(o.http);
  auto port = http.start(o.host, o.port);
  if (!port) return fail(port.status());

  auto s = open_serving(o.serving, terminal_progress());
  if (!s) return fail(s.status());
  Serving& sv = **s;
  server::EngineHost host(*sv.engine,
                          {o.max_waiting, &sv.kv->pages, sv.store.get(), sv.model_name});

  server::ServerContext ctx;
  ctx.host = &host;
  ctx.tokenizer = sv.tokenizer.get();
  if (sv.tokenizer)
    ctx.constraints = std::make_shared<structured::ConstraintCache>(
        structured::TokenVocabulary::from_tokenizer(*sv.tokenizer));
  ctx.model_name = sv.model_name;
  ctx.vocab_size = sv.model->config().vocab_size;
  ctx.model_aliases = {sv.model_dir, o.serving.model.model_dir};
  ctx.adapters = sv.named_adapters;  // and, read at each listing, those in the adapter directory
  ctx.adapter_dir = sv.adapter_dir;
  ctx.limits = o.limits;
  ctx.speculate = std::max(o.serving.model.speculate_ngram, o.serving.model.speculate_medusa);
  ctx.speculate_paths = o.serving.model.speculate_paths;
  const bool ngram = o.serving.model.speculate_ngram > 0,
             medusa = o.serving.model.speculate_medusa > 0;
  ctx.speculate_method = ngram && medusa ? "ngram+medusa"
                         : ngram         ? "ngram"
                         : medusa        ? "medusa"
                                         : "";
  ctx.limits.max_total_tokens = sv.engine->max_sequence_tokens();
  if (ctx.limits.max_input_tokens >= ctx.limits.max_total_tokens)
    return fail(
        Status::errorf("--max-input-tokens {} leaves no room to generate in a context of {} "
                       "tokens (the model's positions or the KV cache)",
                       ctx.limits.max_input_tokens, ctx.limits.max_total_tokens));
  ctx.log = [](const std::string& line) { log_line("philora: " + line); };
  if (auto chat = sv.chat_template)
    ctx.chat_template = [chat](const std::string& messages) -> Expected<std::string> {
      const auto j = nlohmann::ordered_json::parse(messages, nullptr, false);
      if (j.is_discarded() || !j.is_array()) return Status::error("'messages' must be an array");
      for (const auto& m : j)
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
          return Status::error("each message needs a string 'role'");
      return chat->render(j, /*add_generation_prompt=*/true);
    };
  http.serve(ctx);

  std::string adapters;
  for (const std::string& a : sv.adapters) adapters += (adapters.empty() ? "" : ", ") + a;
  std::cerr << fmt::format(
      "philora: ready on http://{}:{} | model {} | {} | KV cache {} tokens ({}) | adapters: "
      "{}{}{}\n",
      o.host, *port, sv.model_name, sv.device_name, sv.kv_tokens, sv.kv_rule,
      adapters.empty() ? "none" : adapters,
      sv.tokenizer ? "" : " | no tokenizer: token-id prompts only",
      sv.chat_template ? "" : " | no chat template");

  int sig = 0;
  sigwait(&set, &sig);
  // Drain (HttpServer::drain): the listener stays open, /health says
  // draining and new generation requests get a 503 (Connection: close), while
  // what runs may finish within the grace period; then what is left is
  // aborted (streams end with finish_reason abort) and the listener closes.
  const auto grace = std::chrono::milliseconds(int64_t(o.drain_seconds * 1000));
  std::cerr << fmt::format("philora: {}: draining ({} requests in flight, up to {} s)\n",
                           sig == SIGTERM ? "SIGTERM" : "SIGINT", http.in_flight(),
                           o.drain_seconds);
  if (!http.drain(grace)) {
    std::cerr << fmt::format("philora: grace period over: aborting {} requests\n",
                             http.in_flight());
    host.abort_all();
    http.drain(std::chrono::seconds(10));
  }
  http.stop();
  std::cerr << "philora: stopped\n";
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& app, int& rc) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "serve",
      "HTTP server: LoRAX and OpenAI APIs, many adapters per batch (default: the "
      "embedded model and its adapters)");
  add_serving_options(*cmd, o->serving);
  cmd->add_option("--host", o->host, "address to listen on");
  cmd->add_option("--port", o->port, "port (0 = any free port)")->check(CLI::Range(0, 65535));
  cmd->add_option(
         "--max-new-tokens", o->limits.default_max_new_tokens,
         "tokens to generate when a request gives no max (at most what the context leaves)")
      ->check(CLI::Range(1, 1 << 20));
  // Limits: beyond each, a request gets a 4xx that names it.
  cmd->add_option("--max-new-tokens-limit", o->limits.max_new_tokens,
                  "the most tokens one request may ask for (default: what the context leaves)")
      ->check(CLI::Range(1, 1 << 30));
  cmd->add_option("--max-input-tokens", o->limits.max_input_tokens,
                  "the most prompt tokens (default: the context less one)")
      ->check(CLI::Range(1, 1 << 30));
  cmd->add_option("--max-stop-sequences", o->limits.max_stop_sequences,
                  "stop strings one request may give")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--max-body-bytes", o->http.max_body_bytes,
                  "largest request body; larger ones get a 413")
      ->check(CLI::Range(size_t(1) << 10, size_t(1) << 32));
  cmd->add_option("--max-connections", o->http.max_connections,
                  "connections served at once; more get a 503")
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--max-waiting", o->max_waiting,
                  "requests waiting for the engine; more get a 429 with Retry-After (0: no limit)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  cmd->add_option("--api-key", o->http.api_key,
                  "require 'Authorization: Bearer KEY' on every route but /health")
      ->envname("PHILORA_API_KEY");
  cmd->add_option("--drain-seconds", o->drain_seconds,
                  "on SIGTERM, how long running requests may take to finish")
      ->check(CLI::Range(0.0, 86400.0));
  cmd->add_flag("!--no-access-log", o->access_log, "no JSON line per request on stderr");
  cmd->callback([o, &rc] { rc = run_serve(*o); });
}

}  // namespace philora::app
