// philora score: logits of every position of every request, all in one batch;
// or, with --output logprobs / loss, the log-probability the model gives each
// input token after the first (token i given tokens 0..i-1) and their mean
// negative log-likelihood. Nothing is prepended: a BOS, if wanted, is the
// request's first id, and the first id itself is never scored.
#include <cmath>
#include <cstdio>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"

namespace philora::app {

namespace {

struct ScoreOptions {
  ModelOptions model;
  std::string requests;
  std::string output = "logits";  // logits | logprobs | loss
};

// log p(ids[i] | ids[..i]) for i = 1..n-1, from the logits of rows 0..n-2 (f64 log-softmax).
std::vector<double> token_logprobs(const Tensor& logits, const std::vector<int32_t>& ids) {
  std::vector<double> out;
  const int64_t vocab = logits.cols();
  for (size_t i = 1; i < ids.size(); ++i) {
    const float* row = logits.ptr<float>() + int64_t(i - 1) * vocab;
    double mx = -INFINITY;
    for (int64_t c = 0; c < vocab; ++c) mx = std::max(mx, double(row[c]));
    double sum = 0;
    for (int64_t c = 0; c < vocab; ++c) sum += std::exp(double(row[c]) - mx);
    out.push_back(double(row[ids[i]]) - mx - std::log(sum));
  }
  return out;
}

// One output line: the logprobs of the request's tokens, or their count, sum and mean of -log p.
Status write_logprobs(const engine::Request& r, const Tensor& logits, bool loss) {
  const std::vector<double> lp = token_logprobs(logits, r.prompt);
  for (double v : lp)
    if (!std::isfinite(v))
      return Status::errorf("request '{}': the model gives a non-finite log-probability", r.id);
  nlohmann::json j;
  j["id"] = r.id;
  if (!loss) {
    j["logprobs"] = lp;
  } else {
    double nll = 0;
    for (double v : lp) nll -= v;
    j["tokens"] = lp.size();  // tokens scored: all but the first
    j["nll"] = nll;           // sum of -log p, natural log
    j["loss"] = lp.empty() ? nlohmann::json() : nlohmann::json(nll / double(lp.size()));
  }
  const std::string line = j.dump() + "\n";
  std::fwrite(line.data(), 1, line.size(), stdout);
  return Status();
}

// One output line: every position's logits.
void write_logits(const engine::Request& r, const Tensor& t) {
  fmt::memory_buffer out;
  fmt::format_to(std::back_inserter(out), "{{\"id\": {}, \"logits\": [",
                 nlohmann::json(r.id).dump());
  for (int64_t row = 0; row < t.rows(); ++row) {
    out.push_back(row ? ',' : '[');
    if (row) out.push_back('[');
    const float* v = t.ptr<float>() + row * t.cols();
    for (int64_t c = 0; c < t.cols(); ++c) {
      if (c) out.push_back(',');
      fmt::format_to(std::back_inserter(out), "{}", v[c]);
    }
    out.push_back(']');
  }
  fmt::format_to(std::back_inserter(out), "]}}\n");
  std::fwrite(out.data(), 1, out.size(), stdout);
}

int run_score(const ScoreOptions& o) {
  auto m = load_model(o.model);
  if (!m) return fail(m.status());
  engine::Request defaults;
  defaults.prompt_logits = true;
  auto reqs = read_requests(o.requests, defaults, [](const engine::Request& r, const std::string&) {
    return Expected<std::vector<int32_t>>(
        Status::errorf("request '{}': score takes input_ids, not a prompt", r.id));
  });
  if (!reqs) return fail(reqs.status());
  for (engine::Request& r : *reqs) r.max_new_tokens = 0;  // the prompt alone, whatever it says
  engine::OfflineOptions opts;
  opts.page_size = o.model.page_size;
  opts.prefix_cache = o.model.prefix_cache;
  auto outs = engine::run_offline(*m->model, m->store.get(), *reqs, opts);
  if (!outs) return fail(outs.status());
  for (size_t i = 0; i < reqs->size(); ++i) {
    const Tensor& t = (*outs)[i].prompt_logits;  // (prompt_len, vocab)
    if (o.output == "logits") {
      write_logits((*reqs)[i], t);
    } else if (Status s = write_logprobs((*reqs)[i], t, o.output == "loss"); !s.ok()) {
      return fail(s);
    }
  }
  return std::fflush(stdout) == 0 ? 0 : 1;
}

}  // namespace

void add_score_command(CLI::App& app, int& rc) {
  auto o = std::make_shared<ScoreOptions>();
  CLI::App* cmd =
      app.add_subcommand("score", "logits of every position, all requests in one batch");
  add_model_options(*cmd, o->model);
  cmd->add_option("--requests", o->requests, "JSON lines {id, input_ids, adapter}")->required();
  cmd->add_option("--output", o->output,
                  "logits: every position's logits; logprobs: log p of each input token after "
                  "the first; loss: their count, sum and mean of -log p")
      ->check(CLI::IsMember({"logits", "logprobs", "loss"}));
  cmd->callback([o, &rc] { rc = run_score(*o); });
}

}  // namespace philora::app
