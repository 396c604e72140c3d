// philora generate: new tokens for every request, one batch, paged-KV decode.
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "io/file.h"
#include "tokenizer/tokenizer.h"

namespace philora::app {

namespace {

struct GenerateOptions {
  ModelOptions model;
  std::string requests;
  int64_t max_new_tokens = 16;
  bool greedy = false;
  float temperature = 1.0f;
  int64_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool ignore_eos = false;
};

// The CLI's finish reasons (as before the engine named them): eos is "stop".
const char* finish_name(engine::FinishReason r) {
  return r == engine::FinishReason::eos ? "stop" : "length";
}

engine::Request default_request(const GenerateOptions& o) {
  engine::Request r;
  r.max_new_tokens = o.max_new_tokens;
  r.ignore_eos = o.ignore_eos;
  r.sampling.greedy = o.greedy || o.temperature == 0.0f;
  r.sampling.temperature = o.temperature;
  r.sampling.top_k = o.top_k;
  r.sampling.top_p = o.top_p;
  return r;
}

int run_generate(const GenerateOptions& o) {
  auto m = load_model(o.model);
  if (!m) return fail(m.status());
  std::unique_ptr<tokenizer::Tokenizer> tok;
  if (io::is_regular_file(io::join_path(o.model.model_dir, "tokenizer.json"))) {
    auto t = tokenizer::Tokenizer::from_model_dir(o.model.model_dir);
    if (!t) return fail(t.status());
    tok = std::move(*t);
  }
  auto prompt_ids = [&](const engine::Request& r,
                        const std::string& text) -> Expected<std::vector<int32_t>> {
    if (!r.prompt.empty()) return r.prompt;  // input_ids win
    if (!tok)
      return Status::errorf("request '{}': \"prompt\" needs {}/tokenizer.json; give input_ids",
                            r.id, o.model.model_dir);
    return tok->encode(text, /*add_special_tokens=*/true);
  };
  auto reqs = read_requests(o.requests, default_request(o), prompt_ids);
  if (!reqs) return fail(reqs.status());
  for (size_t i = 0; i < reqs->size(); ++i) (*reqs)[i].sampling.seed = o.seed + i;
  engine::OfflineOptions opts;
  opts.page_size = o.model.page_size;
  opts.step_graphs = !o.model.enforce_eager;
  opts.prefix_cache = o.model.prefix_cache;
  auto outs = engine::run_offline(*m->model, m->store.get(), *reqs, opts);
  if (!outs) return fail(outs.status());
  for (const engine::StepOutput& out : *outs) {
    nlohmann::json j;
    j["id"] = out.id;
    j["tokens"] = out.new_tokens;
    if (tok)
      j["text"] = tok->decode(out.new_tokens, /*skip_special_tokens=*/true);
    else
      j["text"] = nullptr;  // the model dir has no tokenizer
    j["finish_reason"] = finish_name(out.finish);
    std::cout << j.dump() << "\n";
  }
  std::cout.flush();
  return std::cout ? 0 : 1;
}

}  // namespace

void add_generate_command(CLI::App& app, int& rc) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "generate tokens for every request in one batch");
  add_model_options(*cmd, o->model);
  cmd->add_option("--requests", o->requests, "JSON lines {id, input_ids, adapter}")->required();
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "tokens to generate per request")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  cmd->add_flag("--greedy", o->greedy, "pick the most likely token at each step");
  cmd->add_option("--temperature", o->temperature, "sampling temperature (0 = greedy)")
      ->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-k", o->top_k, "sample among the k most likely tokens (0 = all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", o->top_p, "nucleus sampling mass")->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--seed", o->seed, "sampling seed (request i uses seed + i)");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "do not stop at the model's eos tokens");
  cmd->callback([o, &rc] { rc = run_generate(*o); });
}

}  // namespace philora::app
