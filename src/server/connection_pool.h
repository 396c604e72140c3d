// The HTTP server's connection threads: at most `max_connections`
// connections are served at once, each on its own thread (started as needed,
// then kept). A connection that finds them all busy is handed to one
// overflow thread, on which overflowing() is true: its requests for
// generation are answered 503 at once, so a flood of connections costs one
// thread, not one each.
#pragma once

#include <httplib.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace philora::server {

class ConnectionPool : public httplib::TaskQueue {
 public:
  explicit ConnectionPool(int max_connections);
  ~ConnectionPool() override;
  void enqueue(std::function<void()> fn) override;
  // Serves what is queued, then joins every thread.
  void shutdown() override;
  // Whether the calling thread serves a connection over the limit.
  static bool overflowing();

 private:
  void work(bool overflow);

  const int max_;
  std::mutex mu_;
  std::condition_variable cv_;           // jobs_ or shutdown_
  std::condition_variable overflow_cv_;  // overflow_jobs_ or shutdown_
  std::deque<std::function<void()>> jobs_;
  std::deque<std::function<void()>> overflow_jobs_;
  std::vector<std::thread> threads_;  // the workers, then (once needed) the overflow thread
  int active_ = 0;  // connections given to workers: queued or being served
  int workers_ = 0;  // worker threads started (never fewer than active_)
  bool overflow_thread_ = false;
  bool shutdown_ = false;
};

}  // namespace philora::server
