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

int run_score(const ScoreOptions& o) {
  auto m = load_model(o.model);
  if (!m) return fail(m.status());
  auto lines = read_requests(o.requests);
  if (!lines) return fail(lines.status());
  for (const RequestLine& l : *lines)
    if (l.prompt)
      return fail(Status::errorf("request '{}': score takes input_ids, not a prompt", l.id));
  auto reqs = to_offline(*m, *lines);
  if (!reqs) return fail(reqs.status());
  engine::OfflineOptions opts;
  opts.page_size = o.model.page_size;
  auto logits = engine::score_batch(*m->model, m->slots.get(), *reqs, opts);
  if (!logits) return fail(logits.status());
  fmt::memory_buffer out;
  for (size_t i = 0; i < reqs->size(); ++i) {
    const Tensor& t = (*logits)[i];
    out.clear();
    if (o.output != "logits") {
      const std::vector<double> lp = token_logprobs(t, (*reqs)[i].input_ids);
      for (double v : lp)
        if (!std::isfinite(v))
          return fail(Status::errorf("request '{}': the model gives a non-finite log-probability",
                                     (*reqs)[i].id));
      nlohmann::json j;
      j["id"] = (*reqs)[i].id;
      if (o.output == "logprobs") {
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
      continue;
    }
    fmt::format_to(std::back_inserter(out), "{{\"id\": {}, \"logits\": [",
                   nlohmann::json((*reqs)[i].id).dump());
    for (int64_t r = 0; r < t.rows(); ++r) {
      out.push_back(r ? ',' : '[');
      if (r) out.push_back('[');
      const float* row = t.ptr<float>() + r * t.cols();
      for (int64_t c = 0; c < t.cols(); ++c) {
        if (c) out.push_back(',');
        fmt::format_to(std::back_inserter(out), "{}", row[c]);
      }
      out.push_back(']');
    }
    fmt::format_to(std::back_inserter(out), "]}}\n");
    std::fwrite(out.data(), 1, out.size(), stdout);
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
