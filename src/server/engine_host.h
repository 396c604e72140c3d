// Runs the engine on its own thread. HTTP handlers submit requests from any
// thread and receive each step's output through a callback (called on the
// engine thread; it must not block). It also keeps what /metrics reports of
// the engine: the per-request latency histograms (observed here, on the
// engine thread, as each step's outputs come out), and a snapshot of the
// engine's, the KV pages' and the adapter store's counters after each step.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "kv/page_manager.h"
#include "lora/store.h"
#include "server/metrics.h"

namespace philora::server {

struct EngineHostOptions {
  // Requests waiting for the engine (not yet running) beyond which submit()
  // refuses more; 0: no limit.
  int64_t max_waiting = 0;
  // Read after each step for /metrics (null: not reported).
  const kv::PageManager* pages = nullptr;
  const lora::AdapterStore* adapters = nullptr;
  std::string model_name;  // the model_name label of the metrics
  // Test hook: runs on the engine thread after each step, once the stats
  // are updated (a test holds the engine still with it).
  std::function<void()> after_step = {};
};

class EngineHost {
 public:
  using Callback = std::function<void(const engine::StepOutput&)>;
  using Clock = std::chrono::steady_clock;

  explicit EngineHost(engine::Engine& engine, EngineHostOptions options = {});
  ~EngineHost();  // stops the loop; requests still in flight end with FinishReason::abort
  EngineHost(const EngineHost&) = delete;
  EngineHost& operator=(const EngineHost&) = delete;

  // Queues the request, unless as many as max_waiting wait already: then it
  // returns false and the callback is never called. A request the engine
  // refuses reaches the callback as a finished output with
  // FinishReason::invalid_request (and its message in `error`).
  bool submit(engine::Request request, Callback callback);
  void abort(const std::string& id);
  // Aborts every request in flight (a drain whose grace period ran out).
  void abort_all();

  struct Stats {
    int64_t running = 0;
    int64_t waiting = 0;  // the engine's, and those submitted since its last step
    engine::EngineStats engine;
    engine::StepRunnerStats runner;
    int64_t requests = 0;  // submitted and accepted
    int64_t refused = 0;   // refused by submit() (the waiting queue was full)
    // KV pages (EngineHostOptions::pages): total, held by sequences (and the
    // step runner's pad page), free, cached (held or not), evicted from the cache.
    int64_t kv_pages = 0, kv_pages_held = 0, kv_pages_free = 0, kv_pages_cached = 0;
    int64_t kv_evictions = 0;
    // Adapters (EngineHostOptions::adapters), per tier: loads (disk -> host,
    // host -> device), evictions, resident now; pins held by running sequences.
    int64_t adapter_host_loads = 0, adapter_device_loads = 0;
    int64_t adapter_host_evictions = 0, adapter_device_evictions = 0;
    int64_t adapters_host = 0, adapters_device = 0, adapter_pins = 0;
  };
  Stats stats();

  // The engine's part of /metrics (Prometheus text).
  std::string metrics_text();

 private:
  struct Submitted {
    engine::Request request;
    Callback callback;
    Clock::time_point arrival;
  };
  // Latencies of one request, on the engine thread.
  struct Timing {
    Clock::time_point arrival;
    Clock::time_point last_token;
    bool scheduled = false;  // left the engine's waiting queue (queue time observed)
    bool first_token = false;
  };
  void loop();
  void admit(std::deque<Submitted>& inbox);
  void deliver(const engine::StepOutput& o, Clock::time_point now);
  void note_scheduled(Clock::time_point now);
  void snapshot();
  void fail_all(engine::FinishReason reason, const std::string& message,
                const std::string& detail);

  engine::Engine& engine_;
  EngineHostOptions options_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<Submitted> inbox_;
  std::vector<std::string> aborts_;
  bool abort_all_ = false;
  std::map<std::string, Callback> callbacks_;  // engine thread only
  std::map<std::string, Timing> timing_;       // engine thread only
  // Requests handed to the engine that have not left its waiting queue, in
  // arrival order (engine thread only). The engine admits waiting requests in
  // this order, after the preempted ones, so once it reports n waiting, all
  // but the last n of these have been scheduled (with preempted sequences
  // waiting too, a request is seen a step late, or at its first token).
  std::deque<std::string> unscheduled_;
  Stats stats_;
  // Per-request histograms (vLLM's): time to first token, between tokens,
  // end to end, in the waiting queue.
  Histogram ttft_{ttft_buckets()};
  Histogram inter_token_{inter_token_buckets()};
  Histogram e2e_{request_time_buckets()};
  Histogram queue_{request_time_buckets()};
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace philora::server
