#include "engine/constraint_masks.h"

#include <algorithm>

namespace philora::engine {

MaskFiller::MaskFiller(int threads) : threads_(threads) {}

MaskFiller::~MaskFiller() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void MaskFiller::start(int64_t n, std::function<void(int64_t)> fn) {
  wait();
  if (!thread_.joinable()) {
    const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
    pool_ = std::make_unique<ThreadPool>(threads_ > 0 ? threads_ : hw);
    thread_ = std::thread([this] { loop(); });
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = std::move(fn);
    n_ = n;
    pending_ = true;
  }
  cv_.notify_all();
}

void MaskFiller::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return !pending_; });
}

void MaskFiller::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stop_ || pending_; });
    if (stop_) return;
    const std::function<void(int64_t)> job = std::move(job_);
    const int64_t n = n_;
    lock.unlock();
    // One index per chunk when there are few: a sequence's mask is the unit of work.
    pool_->parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) job(i);
    });
    lock.lock();
    pending_ = false;
    cv_.notify_all();
  }
}

}  // namespace philora::engine
