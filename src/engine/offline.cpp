#include "engine/offline.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>

namespace philora::engine {

namespace {

// Pages for every request's prompt and new tokens at once, and the step
// runner's pad page.
kv::KvCache make_cache(model::Phi3ForCausalLM& m, const std::vector<Request>& reqs,
                       int64_t page_size) {
  int64_t pages = 1;
  for (const Request& r : reqs)
    pages += (int64_t(r.prompt.size()) + std::max<int64_t>(r.max_new_tokens, 0) + page_size - 1) /
             page_size;
  return m.make_kv_cache(pages, page_size);  // every rank's pools under tensor parallelism
}

}  // namespace

Expected<std::vector<StepOutput>> run_offline(model::Phi3ForCausalLM& model,
                                              lora::AdapterStore* adapters,
                                              const std::vector<Request>& requests,
                                              const OfflineOptions& options) {
  kv::KvCache kv = make_cache(model, requests, options.page_size);
  // A row of token counts for every request with penalties: none waits for one.
  const int64_t count_rows = std::count_if(
      requests.begin(), requests.end(), [](const Request& r) { return uses_counts(r.sampling); });
  EngineConfig config{std::numeric_limits<int64_t>::max(),
                      int64_t(requests.size()),
                      options.step_graphs,
                      options.prefix_cache,
                      std::max<int64_t>(count_rows, 1),
                      options.speculate_ngram,
                      options.speculate_medusa,
                      options.medusa,
                      options.speculate_paths};
  config.speculate_row_cost = options.speculate_row_cost;
  config.wait_for_adapter_loads = true;  // the same schedule however fast the disk
  Engine engine(model, kv, adapters, config, options.tokenizer);
  std::map<std::string, size_t> index;  // id -> position in `requests`
  for (size_t i = 0; i < requests.size(); ++i) {
    if (requests[i].num_candidates() > 1)
      return Status::errorf(
          "request '{}': an offline run gives one output per request (n and "
          "best_of must be 1)",
          requests[i].id);
    if (!index.emplace(requests[i].id, i).second)
      return Status::errorf("request '{}': the id is given twice", requests[i].id);
  }
  for (int64_t w = 0; w < options.warmup; ++w) {
    for (const Request& r : requests) PHILORA_RETURN_IF_ERROR(engine.add_request(r));
    while (engine.has_work())
      for (const StepOutput& o : engine.step())
        if (is_error(o.finish)) return Status::errorf("request '{}': {}", o.id, o.error_detail);
  }
  const EngineStats before = engine.stats();
  for (const Request& r : requests) PHILORA_RETURN_IF_ERROR(engine.add_request(r));
  std::vector<StepOutput> out(requests.size());
  const auto t0 = std::chrono::steady_clock::now();
  while (engine.has_work()) {
    for (StepOutput& o : engine.step()) {
      if (is_error(o.finish)) return Status::errorf("request '{}': {}", o.id, o.error_detail);
      StepOutput& r = out[index.at(o.id)];
      r.id = o.id;
      r.new_tokens.insert(r.new_tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      r.text += o.text;
      r.logprobs.insert(r.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      if (o.prompt_logprobs) r.prompt_logprobs = std::move(o.prompt_logprobs);
      r.seed = o.seed;
      r.finish = o.finish;
      r.stop_string = o.stop_string;
      if (o.finished()) r.prompt_logits = std::move(o.prompt_logits);
    }
  }
  if (options.seconds)
    *options.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (options.stats) *options.stats = engine.stats() - before;
  return out;
}

}  // namespace philora::engine
