// A tensor-parallel group of N ranks inside one process: rank r is a thread
// holding communicator(r). Tensors live in host memory (the CPU backend). An
// exchange is a barrier-separated protocol: each rank posts its tensor, all
// wait, each reads every rank's tensor in rank order (so the sum is the same
// on every rank and from run to run), all wait again before a posted tensor
// may change. abort() (a rank failed) makes every waiting and later call
// throw, so that no rank waits forever for a rank that is gone.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "backend/communicator.h"

namespace philora {

class LoopbackGroup : public std::enable_shared_from_this<LoopbackGroup> {
 public:
  static std::shared_ptr<LoopbackGroup> make(int64_t world_size);
  // Rank r's end of the group (each rank's thread calls only its own).
  std::unique_ptr<Communicator> communicator(int64_t rank);
  int64_t world_size() const { return world_; }
  void abort();
  // Clears an abort: only when no rank is inside a collective.
  void reset();
  // Every rank's communicator for a group of `world_size` ranks, rank order.
  static std::vector<std::unique_ptr<Communicator>> communicators(int64_t world_size);

  // Used by the communicators: rank `rank` posts `x`; returns every rank's post.
  const std::vector<const Tensor*>& post_and_wait(int64_t rank, const Tensor* x);
  void wait();  // a plain barrier

 private:
  explicit LoopbackGroup(int64_t world_size);

  int64_t world_;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t arrived_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
  std::vector<const Tensor*> posts_;  // [world]
};

}  // namespace philora
