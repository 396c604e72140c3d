// Runs the engine on its own thread. HTTP handlers submit requests from any
// thread and receive each step's output through a callback (called on the
// engine thread; it must not block).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"

namespace philora::server {

class EngineHost {
 public:
  using Callback = std::function<void(const engine::StepOutput&)>;

  explicit EngineHost(engine::Engine& engine);
  ~EngineHost();  // stops the loop; requests still in flight end with FinishReason::abort
  EngineHost(const EngineHost&) = delete;
  EngineHost& operator=(const EngineHost&) = delete;

  // Queues the request; a request the engine refuses reaches the callback as a
  // finished output with FinishReason::invalid_request (and its message in `error`).
  void submit(engine::Request request, Callback callback);
  void abort(const std::string& id);

  struct Stats {
    int64_t running = 0;
    int64_t waiting = 0;
    engine::EngineStats engine;
    engine::StepRunnerStats runner;
    int64_t requests = 0;
  };
  Stats stats();

 private:
  void loop();
  void admit(std::deque<std::pair<engine::Request, Callback>>& inbox);
  void fail_all(engine::FinishReason reason, const std::string& message);

  engine::Engine& engine_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::pair<engine::Request, Callback>> inbox_;
  std::vector<std::string> aborts_;
  std::map<std::string, Callback> callbacks_;  // engine thread only
  Stats stats_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace philora::server
