// philora serve: the HTTP server (LoRAX + OpenAI APIs) over the continuous-
// batching engine. Without --model it serves the embedded model and its
// adapters; adapters load on demand from --adapter-dir (or --adapter
// NAME=DIR) into device slots.
#include <csignal>
#include <iostream>
#include <memory>

#include <fmt/format.h>

#include "commands.h"
#include "common.h"
#include "serving.h"
#include "server/http_server.h"

namespace philora::app {

namespace {

struct ServeOptions {
  ServingOptions serving;
  std::string host = "127.0.0.1";
  int port = 8080;
  int64_t max_new_tokens = 64;
};

int run_serve(const ServeOptions& o) {
  // SIGINT/SIGTERM are waited for below; block them before any thread starts.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  auto s = open_serving(o.serving, terminal_progress());
  if (!s) return fail(s.status());
  Serving& sv = **s;
  server::EngineHost host(*sv.engine);

  server::ServerContext ctx;
  ctx.host = &host;
  ctx.tokenizer = sv.tokenizer.get();
  ctx.model_name = sv.model_name;
  ctx.model_aliases = {sv.model_dir, o.serving.model.model_dir};
  ctx.adapters = sv.adapters;
  ctx.max_positions = sv.model->config().max_position_embeddings;
  ctx.default_max_new_tokens = o.max_new_tokens;
  ctx.log = [](const std::string& line) { std::cerr << ("philora: " + line + "\n") << std::flush; };
  if (auto chat = sv.chat_template)
    ctx.chat_template = [chat](const std::string& messages) -> Expected<std::string> {
      const auto j = nlohmann::ordered_json::parse(messages, nullptr, false);
      if (j.is_discarded() || !j.is_array()) return Status::error("'messages' must be an array");
      for (const auto& m : j)
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
          return Status::error("each message needs a string 'role'");
      return chat->render(j, /*add_generation_prompt=*/true);
    };
  server::HttpServer http(ctx);
  auto port = http.start(o.host, o.port);
  if (!port) return fail(port.status());

  std::string adapters;
  for (const std::string& a : sv.adapters) adapters += (adapters.empty() ? "" : ", ") + a;
  std::cerr << fmt::format(
      "philora: ready on http://{}:{} | model {} | {} | KV cache {} tokens ({}) | adapters: {}{}{}\n",
      o.host, *port, sv.model_name, sv.device_name, sv.kv_tokens, sv.kv_rule,
      adapters.empty() ? "none" : adapters, sv.tokenizer ? "" : " | no tokenizer: token-id prompts only",
      sv.chat_template ? "" : " | no chat template");

  int sig = 0;
  sigwait(&set, &sig);
  std::cerr << "philora: shutting down\n";
  http.stop();
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& app, int& rc) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "HTTP server: LoRAX and OpenAI APIs, many adapters per batch (default: the "
               "embedded model and its adapters)");
  add_serving_options(*cmd, o->serving);
  cmd->add_option("--host", o->host, "address to listen on");
  cmd->add_option("--port", o->port, "port (0 = any free port)")->check(CLI::Range(0, 65535));
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "default when a request gives none")
      ->check(CLI::Range(1, 1 << 20));
  cmd->callback([o, &rc] { rc = run_serve(*o); });
}

}  // namespace philora::app
