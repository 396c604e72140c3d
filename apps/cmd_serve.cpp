// philora serve: the HTTP server (LoRAX + OpenAI APIs) over the continuous-
// batching engine. Adapters load on demand from --adapter-dir (or --adapter
// NAME=DIR) into device slots.
#include <csignal>
#include <iostream>
#include <memory>

#include <fmt/format.h>

#include "commands.h"
#include "common.h"
#include "engine/engine.h"
#include "io/file.h"
#include "lora/store.h"
#include "model/config.h"
#include "model/weights.h"
#include "server/http_server.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace philora::app {

namespace {

struct ServeOptions {
  ModelOptions model;
  std::string adapter_dir;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string tokenizer;
  int64_t kv_tokens = 16384;
  int64_t max_batched_tokens = 2048;
  int64_t max_running = 256;
  int adapter_slots = 16;
  int64_t max_new_tokens = 64;
};

int run_serve(const ServeOptions& o) {
  auto backend = make_backend(o.model.device);
  if (!backend) return fail(backend.status());
  Backend& b = **backend;
  auto config = model::load_config(o.model.model_dir);
  if (!config) return fail(config.status());
  auto tensors = io::TensorSet::open_model_dir(o.model.model_dir);
  if (!tensors) return fail(tensors.status());
  auto weights = model::load_weights(*tensors, *config, b);
  if (!weights) return fail(weights.status());
  model::Phi3ForCausalLM m(*config, std::move(*weights), b);

  std::unique_ptr<tokenizer::Tokenizer> tok;
  if (!o.tokenizer.empty()) {
    auto t = tokenizer::Tokenizer::from_file(o.tokenizer);
    if (!t) return fail(t.status());
    tok = std::move(*t);
  } else if (io::is_regular_file(io::join_path(o.model.model_dir, "tokenizer.json"))) {
    auto t = tokenizer::Tokenizer::from_model_dir(o.model.model_dir);
    if (!t) return fail(t.status());
    tok = std::move(*t);
  }

  lora::AdapterSlots slots(b, *config, o.adapter_slots);
  if (!o.adapter_dir.empty() || !o.model.adapters.empty())  // else no adapter can ever load
    attach_lora_columns(m, slots, o.model.lora_columns);
  lora::AdapterStore store(*config, slots, {o.adapter_dir, 64});
  for (const std::string& spec : o.model.adapters) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      return fail(Status::errorf("--adapter '{}': expected NAME=DIR", spec));
    // Load once now so that a bad adapter fails at start, not at the first request.
    auto a = lora::load_adapter(spec.substr(0, eq), spec.substr(eq + 1), *config);
    if (!a) return fail(a.status());
    store.register_dir(spec.substr(0, eq), spec.substr(eq + 1));
  }
  const int64_t pages = (o.kv_tokens + o.model.page_size - 1) / o.model.page_size;
  kv::KvCache kv(b, config->num_hidden_layers, pages, o.model.page_size,
                 config->num_key_value_heads, config->head_dim);
  engine::Engine eng(m, kv, &store, {o.max_batched_tokens, o.max_running, !o.model.enforce_eager});
  server::EngineHost host(eng);

  server::ServerContext ctx;
  ctx.host = &host;
  ctx.tokenizer = tok.get();
  ctx.model_name = o.model.model_dir;
  ctx.max_positions = config->max_position_embeddings;
  ctx.default_max_new_tokens = o.max_new_tokens;
  // The model's own chat template (tokenizer_config.json or chat_template.jinja), when it has one.
  std::shared_ptr<tokenizer::ChatTemplate> chat;
  if (io::is_regular_file(io::join_path(o.model.model_dir, "tokenizer_config.json")) ||
      io::is_regular_file(io::join_path(o.model.model_dir, "chat_template.jinja"))) {
    auto t = tokenizer::ChatTemplate::from_model_dir(o.model.model_dir);
    if (t.ok()) {
      chat = std::make_shared<tokenizer::ChatTemplate>(std::move(*t));
    } else {
      std::cerr << "philora: no chat endpoint: " << t.status().message() << "\n";
    }
  }
  if (chat)
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
  std::cerr << fmt::format(
      "philora: serving {} on http://{}:{} ({}, {} KV tokens, {} adapter slots{})\n",
      o.model.model_dir, o.host, *port, b.name(), pages * o.model.page_size, o.adapter_slots,
      tok ? "" : ", no tokenizer: token-id prompts only");
  // Serve until SIGINT/SIGTERM.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  int sig = 0;
  sigwait(&set, &sig);
  std::cerr << "philora: shutting down\n";
  http.stop();
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& app, int& rc) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd =
      app.add_subcommand("serve", "HTTP server: LoRAX and OpenAI APIs, many adapters per batch");
  add_model_options(*cmd, o->model);
  cmd->add_option("--adapter-dir", o->adapter_dir,
                  "directory of PEFT adapters, loaded by name on demand");
  cmd->add_option("--host", o->host, "address to listen on");
  cmd->add_option("--port", o->port, "port (0 = any free port)")->check(CLI::Range(0, 65535));
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: the model dir's)");
  cmd->add_option("--kv-tokens", o->kv_tokens, "KV cache size in tokens")
      ->check(CLI::Range(int64_t(16), int64_t(1) << 26));
  cmd->add_option("--max-batched-tokens", o->max_batched_tokens, "token budget of one step")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("--max-running", o->max_running, "sequences in flight")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--adapter-slots", o->adapter_slots, "adapters resident on the device at once")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "default when a request gives none")
      ->check(CLI::Range(1, 1 << 20));
  cmd->callback([o, &rc] { rc = run_serve(*o); });
}

}  // namespace philora::app
