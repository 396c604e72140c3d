// Device memory for the CUDA backend.
//
// DeviceAllocator is a caching allocator: a block freed by its last Tensor goes
// back to a free list keyed by its size class and is handed out again, so a
// steady-state forward step calls cudaMalloc zero times. All work runs on the
// backend's one stream, so a block freed on the host while kernels that use it
// are still queued can be reused by the next op: that op is queued behind them.
//
// Graph pool: while a step graph is being recorded (and during its warm-up
// run), blocks come from and go back to a second set of free lists that only
// graphs use. A graph bakes in the addresses it was recorded with; since no op
// outside graphs can ever be handed those blocks, a replay cannot overwrite
// live tensors. Graphs share the pool: they replay one at a time on the one
// stream, and each finishes with its temporaries before the next starts.
//
// PinnedStaging copies small host arrays (plans, LoRA tables) to the device
// through pinned buffers, so cudaMemcpyAsync does not wait for the stream.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace philora::cuda {

class DeviceAllocator : public std::enable_shared_from_this<DeviceAllocator> {
 public:
  static std::shared_ptr<DeviceAllocator> create() {
    return std::shared_ptr<DeviceAllocator>(new DeviceAllocator());
  }
  ~DeviceAllocator();
  DeviceAllocator(const DeviceAllocator&) = delete;
  DeviceAllocator& operator=(const DeviceAllocator&) = delete;

  // A block of at least `bytes` (256-byte aligned, never null); the returned
  // owner gives it back to the cache when its last copy goes.
  std::shared_ptr<void> allocate(size_t bytes);
  // cudaFree every cached (unused) block of the ordinary pool.
  void release_cached();
  // While on, allocate() serves from the graph pool (see above).
  void set_graph_pool(bool on);

  struct Stats {
    size_t bytes_in_use = 0;   // held by live tensors
    size_t bytes_cached = 0;   // in the free lists
    size_t cuda_mallocs = 0;   // cudaMalloc calls so far
    size_t graph_pool_bytes = 0;  // held by the graph pool, in use or cached
  };
  Stats stats() const;

  // The size class a request of `bytes` is served from.
  static size_t size_class(size_t bytes);

 private:
  DeviceAllocator() = default;
  using FreeLists = std::map<size_t, std::vector<void*>>;  // size class -> cached blocks
  void give_back(void* p, size_t cls, bool graph);

  mutable std::mutex mu_;
  FreeLists free_;
  FreeLists graph_free_;
  bool graph_pool_ = false;
  Stats stats_;
};

class PinnedStaging {
 public:
  explicit PinnedStaging(cudaStream_t stream) : stream_(stream) {}
  ~PinnedStaging();
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;

  // Queues a copy of `n` host bytes to `dst` on the stream. `src` may be
  // reused as soon as this returns.
  void copy_to_device(void* dst, const void* src, size_t n);
  // Queues a copy of `n` bytes of page-locked host memory straight to `dst`;
  // `keep` (what owns `src`) is held until the copy is done.
  void copy_pinned(void* dst, const void* src, size_t n, std::shared_ptr<void> keep);

 private:
  static constexpr size_t kChunkBytes = size_t(1) << 20;
  struct Chunk {
    char* host = nullptr;       // pinned, kChunkBytes
    cudaEvent_t done = nullptr;  // recorded after the chunk's last queued copy
    bool recorded = false;
  };
  void next_chunk();
  void reap();  // drops the copies from pinned sources that are done

  struct InFlight {
    cudaEvent_t done = nullptr;
    std::shared_ptr<void> keep;
  };
  std::deque<InFlight> in_flight_;
  cudaStream_t stream_;
  std::vector<Chunk> chunks_;
  size_t current_ = 0;
  size_t offset_ = kChunkBytes;  // forces a chunk on first use
  std::mutex mu_;
};

}  // namespace philora::cuda
