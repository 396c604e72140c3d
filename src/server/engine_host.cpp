#include "server/engine_host.h"

#include <algorithm>

namespace philora::server {

namespace {

double seconds(EngineHost::Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

EngineHost::EngineHost(engine::Engine& engine, EngineHostOptions options)
    : engine_(engine), options_(std::move(options)), thread_([this] { loop(); }) {}

EngineHost::~EngineHost() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

bool EngineHost::submit(engine::Request request, Callback callback) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (options_.max_waiting > 0 &&
        stats_.waiting + int64_t(inbox_.size()) >= options_.max_waiting) {
      ++stats_.refused;
      return false;
    }
    inbox_.push_back({std::move(request), std::move(callback), Clock::now()});
    ++stats_.requests;
  }
  wake_.notify_one();
  return true;
}

void EngineHost::abort(const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    aborts_.push_back(id);
  }
  wake_.notify_one();
}

void EngineHost::abort_all() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    abort_all_ = true;
  }
  wake_.notify_one();
}

EngineHost::Stats EngineHost::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s = stats_;
  s.waiting += int64_t(inbox_.size());
  return s;
}

// Ends every request in flight with `reason`: `message` for the client,
// `detail` (the full text, which may name server files) for the server's log.
void EngineHost::fail_all(engine::FinishReason reason, const std::string& message,
                          const std::string& detail) {
  for (auto& [id, cb] : callbacks_) {
    engine::StepOutput o;
    o.id = id;
    o.finish = reason;
    o.error = message;
    o.error_detail = detail;
    cb(o);
  }
  timing_.clear();
  unscheduled_.clear();
}

// Hands the inbox to the engine; a refused request hears so at once.
void EngineHost::admit(std::deque<Submitted>& inbox) {
  for (Submitted& s : inbox) {
    const std::string id = s.request.id;
    Status st = engine_.add_request(std::move(s.request));
    if (!st.ok()) {
      engine::StepOutput o;
      o.id = id;
      o.finish = engine::FinishReason::invalid_request;
      o.error = o.error_detail = st.message();
      s.callback(o);
      continue;
    }
    callbacks_[id] = std::move(s.callback);
    timing_[id] = Timing{s.arrival, s.arrival};
    unscheduled_.push_back(id);
  }
}

// Queue time: see unscheduled_.
void EngineHost::note_scheduled(Clock::time_point now) {
  const size_t waiting = size_t(engine_.num_waiting());
  while (unscheduled_.size() > waiting) {
    auto it = timing_.find(unscheduled_.front());
    if (it != timing_.end() && !it->second.scheduled) {
      it->second.scheduled = true;
      queue_.observe(seconds(now - it->second.arrival));
    }
    unscheduled_.pop_front();
  }
}

// One output to its callback, and its latencies to the histograms.
void EngineHost::deliver(const engine::StepOutput& o, Clock::time_point now) {
  auto it = callbacks_.find(o.id);
  if (it == callbacks_.end()) return;
  auto t = timing_.find(o.id);
  if (t != timing_.end()) {
    Timing& tm = t->second;
    if (!tm.scheduled && !o.new_tokens.empty()) {
      tm.scheduled = true;  // seen at its first token (see unscheduled_)
      queue_.observe(seconds(now - tm.arrival));
    }
    if (!o.new_tokens.empty()) {
      if (!tm.first_token)
        ttft_.observe(seconds(now - tm.arrival));
      else
        inter_token_.observe(seconds(now - tm.last_token));
      tm.first_token = true;
      tm.last_token = now;
    }
    if (o.request_finished()) {
      if (!engine::is_error(o.finish)) e2e_.observe(seconds(now - tm.arrival));
      timing_.erase(t);
    }
  }
  it->second(o);
  if (o.request_finished()) callbacks_.erase(it);  // every output of it (n, best_of) ended
}

void EngineHost::snapshot() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.running = engine_.num_running();
  stats_.waiting = engine_.num_waiting();
  stats_.engine = engine_.stats();
  stats_.runner = engine_.runner_stats();
  if (const kv::PageManager* p = options_.pages) {
    stats_.kv_pages = p->num_pages();
    stats_.kv_pages_held = p->num_held();
    stats_.kv_pages_free = p->num_free();
    stats_.kv_pages_cached = p->num_cached();
    stats_.kv_evictions = p->num_evictions();
  }
  if (const lora::AdapterStore* a = options_.adapters) {
    stats_.adapter_host_loads = a->loads_from_disk();
    stats_.adapter_device_loads = a->uploads_to_device();
    stats_.adapter_host_evictions = a->host_evictions();
    stats_.adapter_device_evictions = a->device_evictions();
    stats_.adapters_host = a->host_count();
    stats_.adapters_device = a->resident_count();
    stats_.adapter_pins = a->pins();
  }
}

void EngineHost::loop() {
  snapshot();
  for (;;) {
    std::deque<Submitted> inbox;
    std::vector<std::string> aborts;
    bool abort_all = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] {
        return stop_ || abort_all_ || !inbox_.empty() || !aborts_.empty() || engine_.has_work();
      });
      if (stop_) break;
      inbox.swap(inbox_);
      aborts.swap(aborts_);
      std::swap(abort_all, abort_all_);
    }
    admit(inbox);
    if (abort_all)
      for (const auto& [id, cb] : callbacks_) aborts.push_back(id);
    for (const std::string& id : aborts) engine_.abort(id);
    std::vector<engine::StepOutput> outs;
    try {
      outs = engine_.step();
    } catch (const std::exception& e) {  // a device error: fail everything in flight
      fail_all(engine::FinishReason::device_error, "internal error",
               std::string("engine failure: ") + e.what());
      for (const auto& [id, cb] : callbacks_) engine_.abort(id);
      callbacks_.clear();
      (void)engine_.step();  // drain the aborts
      snapshot();
      continue;
    }
    const Clock::time_point now = Clock::now();
    for (const auto& o : outs)  // ended while waiting (aborted): no longer in the queue
      if (o.request_finished()) {
        auto t = timing_.find(o.id);
        if (t != timing_.end() && !t->second.scheduled)
          unscheduled_.erase(std::remove(unscheduled_.begin(), unscheduled_.end(), o.id),
                             unscheduled_.end());
      }
    note_scheduled(now);
    snapshot();  // first: a client that has its answer and reads /metrics finds the step counted
    for (const auto& o : outs) deliver(o, now);
    if (options_.after_step) options_.after_step();
  }
  // Shutting down: whoever still waits is told.
  fail_all(engine::FinishReason::abort, "server shutting down", "server shutting down");
}

std::string EngineHost::metrics_text() {
  const Stats s = stats();
  const Labels model = {{"model_name", options_.model_name}};
  std::string m;
  auto gauge = [&](const char* name, const char* help, double v, const Labels& l) {
    metric_header(m, name, "gauge", help);
    sample(m, name, l, v);
  };
  auto counter = [&](const char* name, const char* help, double v, const Labels& l) {
    metric_header(m, name, "counter", help);
    sample(m, name, l, v);
  };
  gauge("vllm:num_requests_running", "Sequences running in the engine.", double(s.running), model);
  gauge("vllm:num_requests_waiting", "Requests waiting for the engine.", double(s.waiting), model);
  counter("vllm:num_preemptions_total", "Sequences preempted (KV pages ran out).",
          double(s.engine.preemptions), model);
  counter("vllm:prompt_tokens_total", "Prompt tokens computed (prefix-cache hits are not).",
          double(s.engine.prompt_tokens), model);
  counter("vllm:generation_tokens_total", "Tokens generated.", double(s.engine.generated_tokens),
          model);
  // In tokens, as vLLM's: the hit rate is hits / queries.
  counter("vllm:prefix_cache_queries_total",
          "Tokens of the sequences looked up in the prefix cache at admission.",
          double(s.engine.prefix_cache_queries), model);
  counter("vllm:prefix_cache_hits_total", "Of those, tokens found in cached KV pages.",
          double(s.engine.prefix_cache_hits), model);
  // Speculative decoding (vLLM's spec_decode_num_draft_tokens / _accepted_tokens).
  counter("vllm:spec_decode_num_draft_tokens_total", "Drafted tokens verified (--speculate).",
          double(s.engine.spec_draft_tokens), model);
  counter("vllm:spec_decode_num_accepted_tokens_total", "Of those, tokens accepted.",
          double(s.engine.spec_accepted_tokens), model);
  counter("philora_spec_decode_alternative_chains_total",
          "Alternative draft chains verified (--speculate-paths; their drafts count in the "
          "drafted tokens).",
          double(s.engine.spec_alt_chains), model);
  counter("philora_spec_decode_alternative_tokens_total",
          "Tokens that alternative chains kept beyond the first chain's.",
          double(s.engine.spec_alt_tokens), model);
  if (options_.pages) {
    gauge("vllm:kv_cache_usage_perc", "Share of the KV pages held by sequences (0 to 1).",
          s.kv_pages ? double(s.kv_pages_held) / double(s.kv_pages) : 0.0, model);
    gauge("philora_kv_pages_total", "KV pages in the pool.", double(s.kv_pages), model);
    gauge("philora_kv_pages_used", "KV pages held by sequences (and the step runner's pad page).",
          double(s.kv_pages_held), model);
    gauge("philora_kv_pages_free", "KV pages holding nothing.", double(s.kv_pages_free), model);
    gauge("philora_kv_pages_cached", "KV pages in the prefix cache (held or not).",
          double(s.kv_pages_cached), model);
    counter("philora_prefix_cache_evictions_total", "Cached KV pages reused for other tokens.",
            double(s.kv_evictions), model);
  }
  if (options_.adapters) {
    auto per_tier = [&](const char* name, const char* type, const char* help, double host,
                        double device) {
      metric_header(m, name, type, help);
      sample(m, name, {{"model_name", options_.model_name}, {"tier", "host"}}, host);
      sample(m, name, {{"model_name", options_.model_name}, {"tier", "device"}}, device);
    };
    per_tier("philora_adapter_loads_total", "counter",
             "Adapters loaded into a tier (host: parsed from disk; device: copied into a slot).",
             double(s.adapter_host_loads), double(s.adapter_device_loads));
    per_tier("philora_adapter_evictions_total", "counter",
             "Adapters dropped from a tier to make room for another.",
             double(s.adapter_host_evictions), double(s.adapter_device_evictions));
    per_tier("philora_adapters_resident", "gauge", "Adapters held in a tier now.",
             double(s.adapters_host), double(s.adapters_device));
    gauge("philora_adapter_pins", "Adapter slot pins held by running sequences.",
          double(s.adapter_pins), model);
  }
  metric_header(m, "vllm:time_to_first_token_seconds", "histogram",
                "Time from arrival to the first generated token.");
  ttft_.render(m, "vllm:time_to_first_token_seconds", model);
  metric_header(m, "vllm:inter_token_latency_seconds", "histogram",
                "Time between a request's successive steps that yield tokens.");
  inter_token_.render(m, "vllm:inter_token_latency_seconds", model);
  metric_header(m, "vllm:e2e_request_latency_seconds", "histogram",
                "Time from arrival to the end of a request that ran.");
  e2e_.render(m, "vllm:e2e_request_latency_seconds", model);
  metric_header(m, "vllm:request_queue_time_seconds", "histogram",
                "Time from arrival until the request left the waiting queue.");
  queue_.render(m, "vllm:request_queue_time_seconds", model);
  counter("philora_steps_total", "Engine steps.", double(s.engine.steps), {});
  counter("philora_graph_steps_total", "Steps replayed from a recorded graph.",
          double(s.runner.graph_steps), {});
  counter("philora_eager_steps_total", "Steps run op by op.", double(s.runner.eager_steps), {});
  counter("philora_graphs_recorded_total", "Step graphs recorded.", double(s.runner.captures), {});
  return m;
}

}  // namespace philora::server
