#include "server/connection_pool.h"

namespace philora::server {

namespace {
thread_local bool t_overflow = false;
}  // namespace

ConnectionPool::ConnectionPool(int max_connections) : max_(max_connections < 1 ? 1 : max_connections) {}

ConnectionPool::~ConnectionPool() { shutdown(); }

bool ConnectionPool::overflowing() { return t_overflow; }

void ConnectionPool::enqueue(std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  if (active_ < max_) {
    ++active_;
    jobs_.push_back(std::move(fn));
    if (workers_ < active_) {  // a thread for every connection given to the workers
      ++workers_;
      threads_.emplace_back([this] { work(false); });
    } else {
      cv_.notify_one();
    }
    return;
  }
  overflow_jobs_.push_back(std::move(fn));
  if (!overflow_thread_) {
    overflow_thread_ = true;
    threads_.emplace_back([this] { work(true); });
  }
  overflow_cv_.notify_one();
}

void ConnectionPool::work(bool overflow) {
  t_overflow = overflow;
  auto& jobs = overflow ? overflow_jobs_ : jobs_;
  auto& cv = overflow ? overflow_cv_ : cv_;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv.wait(lock, [&] { return !jobs.empty() || shutdown_; });
    if (jobs.empty()) return;  // shut down, nothing left
    std::function<void()> fn = std::move(jobs.front());
    jobs.pop_front();
    lock.unlock();
    fn();
    fn = nullptr;
    lock.lock();
    if (!overflow) --active_;
  }
}

void ConnectionPool::shutdown() {
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    shutdown_ = true;
    threads.swap(threads_);
  }
  cv_.notify_all();
  overflow_cv_.notify_all();
  for (std::thread& t : threads) t.join();
}

}  // namespace philora::server
