// philora score: logits of every position of every request, all in one batch.
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
};

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
  cmd->callback([o, &rc] { rc = run_score(*o); });
}

}  // namespace philora::app
