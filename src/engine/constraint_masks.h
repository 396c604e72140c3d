// Structured output in the engine: the allowed-token bitmasks of a step's
// constrained rows, filled on host threads while the step is planned, staged
// and (on an eager step of an asynchronous backend) its forward runs; the
// step runner waits for them just before it stages the sample op
// (StepRunner::run, docs/STRUCTURED.md says what overlaps).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/threads.h"

namespace philora::engine {

// The masks of one step: SampleRow::mask indexes them.
struct StepMasks {
  int64_t rows = 0;            // M
  int64_t words = 0;           // per mask: ceil(vocab / 32), vocab the logits' width
  std::vector<uint32_t> bits;  // [M * words]: bit t % 32 of word t / 32 set = t allowed
  std::function<void()> wait;  // returns once `bits` is filled (may be called again)
};

// Runs fn(i) for i in [0, n) on a thread pool, from a thread of its own, so
// that the caller goes on meanwhile. One job at a time; threads start at the
// first job.
class MaskFiller {
 public:
  explicit MaskFiller(int threads = 0);  // 0: the hardware's
  ~MaskFiller();
  MaskFiller(const MaskFiller&) = delete;
  MaskFiller& operator=(const MaskFiller&) = delete;

  void start(int64_t n, std::function<void(int64_t)> fn);
  void wait();  // until the job started last is done (at once when none is running)

 private:
  void loop();

  int threads_;
  std::unique_ptr<ThreadPool> pool_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::function<void(int64_t)> job_;
  int64_t n_ = 0;
  bool pending_ = false;  // a job is queued or running
  bool stop_ = false;
};

}  // namespace philora::engine
