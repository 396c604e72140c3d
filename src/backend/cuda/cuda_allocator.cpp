#include "backend/cuda/cuda_allocator.h"

#include <cstring>
#include <string>

#include "backend/cuda/cuda_check.h"

namespace philora::cuda {

size_t DeviceAllocator::size_class(size_t bytes) {
  constexpr size_t kMiB = size_t(1) << 20;
  if (bytes <= 512) return 512;
  if (bytes <= kMiB) {  // powers of two
    size_t c = 512;
    while (c < bytes) c <<= 1;
    return c;
  }
  if (bytes < 16 * kMiB) {  // eight steps per power of two
    size_t p = kMiB;
    while (p * 2 < bytes) p <<= 1;
    const size_t step = p / 8;
    return (bytes + step - 1) / step * step;
  }
  return (bytes + 2 * kMiB - 1) / (2 * kMiB) * (2 * kMiB);  // large: 2 MiB granules
}

DeviceAllocator::~DeviceAllocator() {
  for (FreeLists* lists : {&free_, &graph_free_})
    for (auto& [cls, blocks] : *lists)
      for (void* p : blocks) (void)cudaFree(p);  // errors at teardown are moot
}

std::shared_ptr<void> DeviceAllocator::allocate(size_t bytes) {
  const size_t cls = size_class(bytes);
  void* p = nullptr;
  size_t got = cls;
  bool graph = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    graph = graph_pool_;
    FreeLists& lists = graph ? graph_free_ : free_;
    // Small classes match exactly; a large request may take a cached block of up
    // to 1.25x its size rather than grow the pool.
    auto it = lists.lower_bound(cls);
    if (it != lists.end() && !it->second.empty() && (it->first == cls || (cls >= (size_t(16) << 20) && it->first <= cls + cls / 4))) {
      p = it->second.back();
      got = it->first;
      it->second.pop_back();
      if (it->second.empty()) lists.erase(it);
      stats_.bytes_cached -= got;
      stats_.bytes_in_use += got;
    }
  }
  if (!p) {
    cudaError_t e = cudaMalloc(&p, cls);
    if (e == cudaErrorMemoryAllocation && !graph) {
      (void)cudaGetLastError();
      release_cached();
      e = cudaMalloc(&p, cls);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      const Stats s = stats();
      throw std::runtime_error("CUDA error: cudaMalloc of " + std::to_string(cls) + " bytes failed (" +
                               cudaGetErrorString(e) + "); " + std::to_string(s.bytes_in_use >> 20) +
                               " MiB in use by tensors");
    }
    std::lock_guard<std::mutex> lock(mu_);
    stats_.bytes_in_use += cls;
    stats_.cuda_mallocs += 1;
    if (graph) stats_.graph_pool_bytes += cls;
  }
  auto self = shared_from_this();
  return std::shared_ptr<void>(p, [self, got, graph](void* q) { self->give_back(q, got, graph); });
}

void DeviceAllocator::set_graph_pool(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  graph_pool_ = on;
}

void DeviceAllocator::give_back(void* p, size_t cls, bool graph) {
  std::lock_guard<std::mutex> lock(mu_);
  (graph ? graph_free_ : free_)[cls].push_back(p);
  stats_.bytes_in_use -= cls;
  stats_.bytes_cached += cls;
}

void DeviceAllocator::release_cached() {
  std::map<size_t, std::vector<void*>> blocks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    blocks.swap(free_);
    for (auto& [cls, list] : blocks) stats_.bytes_cached -= cls * list.size();
  }
  for (auto& [cls, list] : blocks)
    for (void* p : list) PHILORA_CUDA_CHECK(cudaFree(p));
}

DeviceAllocator::Stats DeviceAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

// ---- pinned staging ---------------------------------------------------------

PinnedStaging::~PinnedStaging() {
  for (InFlight& f : in_flight_) {
    (void)cudaEventSynchronize(f.done);
    (void)cudaEventDestroy(f.done);
  }
  for (Chunk& c : chunks_) {
    if (c.done) {
      (void)cudaEventSynchronize(c.done);
      (void)cudaEventDestroy(c.done);
    }
    if (c.host) (void)cudaFreeHost(c.host);
  }
}

void PinnedStaging::next_chunk() {
  if (!chunks_.empty()) {
    Chunk& cur = chunks_[current_];
    PHILORA_CUDA_CHECK(cudaEventRecord(cur.done, stream_));
    cur.recorded = true;
  }
  // Reuse the next chunk of the ring once its copies are done; else grow.
  const size_t n = chunks_.size();
  for (size_t i = 1; i <= n; ++i) {
    const size_t k = (current_ + i) % n;
    Chunk& c = chunks_[k];
    if (k == current_ && n > 0) break;
    const cudaError_t q = c.recorded ? cudaEventQuery(c.done) : cudaSuccess;
    if (q == cudaSuccess) {
      current_ = k;
      offset_ = 0;
      c.recorded = false;
      return;
    }
    if (q != cudaErrorNotReady) PHILORA_CUDA_CHECK(q);
  }
  if (n >= 64) {  // bound the pinned memory: wait for the oldest chunk
    const size_t k = (current_ + 1) % n;
    PHILORA_CUDA_CHECK(cudaEventSynchronize(chunks_[k].done));
    chunks_[k].recorded = false;
    current_ = k;
    offset_ = 0;
    return;
  }
  Chunk c;
  PHILORA_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&c.host), kChunkBytes));
  PHILORA_CUDA_CHECK(cudaEventCreateWithFlags(&c.done, cudaEventDisableTiming));
  chunks_.insert(chunks_.begin() + std::ptrdiff_t(n == 0 ? 0 : current_ + 1), c);
  current_ = n == 0 ? 0 : current_ + 1;
  offset_ = 0;
}

void PinnedStaging::copy_to_device(void* dst, const void* src, size_t n) {
  if (n == 0) return;
  if (n > kChunkBytes / 4) {  // large and rare (weights): a pageable copy
    PHILORA_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, stream_));
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  const size_t aligned = (n + 255) / 256 * 256;
  if (offset_ + aligned > kChunkBytes) next_chunk();
  char* staged = chunks_[current_].host + offset_;
  std::memcpy(staged, src, n);
  PHILORA_CUDA_CHECK(cudaMemcpyAsync(dst, staged, n, cudaMemcpyHostToDevice, stream_));
  offset_ += aligned;
}

void PinnedStaging::reap() {
  while (!in_flight_.empty()) {
    const cudaError_t q = cudaEventQuery(in_flight_.front().done);
    if (q == cudaErrorNotReady) return;
    PHILORA_CUDA_CHECK(q);
    PHILORA_CUDA_CHECK(cudaEventDestroy(in_flight_.front().done));
    in_flight_.pop_front();
  }
}

void PinnedStaging::copy_pinned(void* dst, const void* src, size_t n, std::shared_ptr<void> keep) {
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  reap();
  InFlight f;
  PHILORA_CUDA_CHECK(cudaEventCreateWithFlags(&f.done, cudaEventDisableTiming));
  const cudaError_t copied = cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, stream_);
  const cudaError_t recorded = copied == cudaSuccess ? cudaEventRecord(f.done, stream_) : copied;
  if (recorded != cudaSuccess) {  // nothing may still read `src` once `keep` goes
    (void)cudaStreamSynchronize(stream_);
    (void)cudaEventDestroy(f.done);
    PHILORA_CUDA_CHECK(recorded);
  }
  f.keep = std::move(keep);
  in_flight_.push_back(std::move(f));
}

}  // namespace philora::cuda
