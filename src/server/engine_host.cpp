#include "server/engine_host.h"

namespace philora::server {

EngineHost::EngineHost(engine::Engine& engine) : engine_(engine), thread_([this] { loop(); }) {}

EngineHost::~EngineHost() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void EngineHost::submit(engine::Request request, Callback callback) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    inbox_.emplace_back(std::move(request), std::move(callback));
    ++stats_.requests;
  }
  wake_.notify_one();
}

void EngineHost::abort(const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    aborts_.push_back(id);
  }
  wake_.notify_one();
}

EngineHost::Stats EngineHost::stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

// Ends every request in flight with `reason`.
void EngineHost::fail_all(engine::FinishReason reason, const std::string& message) {
  for (auto& [id, cb] : callbacks_) {
    engine::StepOutput o;
    o.id = id;
    o.finish = reason;
    o.error = o.error_detail = message;
    cb(o);
  }
}

// Hands the inbox to the engine; a refused request hears so at once.
void EngineHost::admit(std::deque<std::pair<engine::Request, Callback>>& inbox) {
  for (auto& [req, cb] : inbox) {
    const std::string id = req.id;
    Status st = engine_.add_request(std::move(req));
    if (!st.ok()) {
      engine::StepOutput o;
      o.id = id;
      o.finish = engine::FinishReason::invalid_request;
      o.error = o.error_detail = st.message();
      cb(o);
      continue;
    }
    callbacks_[id] = std::move(cb);
  }
}

void EngineHost::loop() {
  for (;;) {
    std::deque<std::pair<engine::Request, Callback>> inbox;
    std::vector<std::string> aborts;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(
          lock, [&] { return stop_ || !inbox_.empty() || !aborts_.empty() || engine_.has_work(); });
      if (stop_) break;
      inbox.swap(inbox_);
      aborts.swap(aborts_);
    }
    admit(inbox);
    for (const std::string& id : aborts) engine_.abort(id);
    std::vector<engine::StepOutput> outs;
    try {
      outs = engine_.step();
    } catch (const std::exception& e) {  // a device error: fail everything in flight
      fail_all(engine::FinishReason::device_error, std::string("engine failure: ") + e.what());
      for (const auto& [id, cb] : callbacks_) engine_.abort(id);
      callbacks_.clear();
      (void)engine_.step();  // drain the aborts
      continue;
    }
    for (const auto& o : outs) {
      auto it = callbacks_.find(o.id);
      if (it == callbacks_.end()) continue;
      it->second(o);
      if (o.finished()) callbacks_.erase(it);
    }
    std::lock_guard<std::mutex> lock(mu_);
    stats_.running = engine_.num_running();
    stats_.waiting = engine_.num_waiting();
    stats_.engine = engine_.stats();
    stats_.runner = engine_.runner_stats();
  }
  // Shutting down: whoever still waits is told.
  fail_all(engine::FinishReason::abort, "server shutting down");
}

}  // namespace philora::server
