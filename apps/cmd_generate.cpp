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

int run_generate(const GenerateOptions& o) {
  auto m = load_model(o.model);
  if (!m) return fail(m.status());
  auto lines = read_requests(o.requests);
  if (!lines) return fail(lines.status());
  std::unique_ptr<tokenizer::Tokenizer> tok;
  if (io::is_regular_file(io::join_path(o.model.model_dir, "tokenizer.json"))) {
    auto t = tokenizer::Tokenizer::from_model_dir(o.model.model_dir);
    if (!t) return fail(t.status());
    tok = std::move(*t);
  }
  for (RequestLine& l : *lines) {
    if (!l.prompt || !l.input_ids.empty()) continue;
    if (!tok)
      return fail(Status::errorf("request '{}': \"prompt\" needs {}/tokenizer.json; give input_ids",
                                 l.id, o.model.model_dir));
    l.input_ids = tok->encode(*l.prompt, /*add_special_tokens=*/true);
  }
  auto reqs = to_offline(*m, *lines);
  if (!reqs) return fail(reqs.status());
  for (size_t i = 0; i < reqs->size(); ++i) {
    engine::OfflineRequest& r = (*reqs)[i];
    r.max_new_tokens = (*lines)[i].max_new_tokens.value_or(o.max_new_tokens);
    r.ignore_eos = r.ignore_eos || o.ignore_eos;
    r.sampling.greedy = o.greedy || o.temperature == 0.0f;
    r.sampling.temperature = o.temperature;
    r.sampling.top_k = o.top_k;
    r.sampling.top_p = o.top_p;
    r.sampling.seed = o.seed + i;
  }
  engine::OfflineOptions opts;
  opts.page_size = o.model.page_size;
  opts.stop_ids = m->model->config().eos_token_ids;
  opts.step_graphs = !o.model.enforce_eager;
  auto gens = engine::generate_batch(*m->model, m->slots.get(), *reqs, opts);
  if (!gens) return fail(gens.status());
  for (size_t i = 0; i < reqs->size(); ++i) {
    nlohmann::json j;
    j["id"] = (*reqs)[i].id;
    j["tokens"] = (*gens)[i].tokens;
    if (tok)
      j["text"] = tok->decode((*gens)[i].tokens, /*skip_special_tokens=*/true);
    else
      j["text"] = nullptr;  // the model dir has no tokenizer
    j["finish_reason"] = (*gens)[i].finish_reason;
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
