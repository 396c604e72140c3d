// What one CudaBackend owns on its device: the stream every op is queued on,
// the caching allocator, the pinned staging buffers for small uploads and the
// cuBLASLt state. Kernels receive raw pointers and this stream; they own nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>

#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/cuda_matmul.h"
#include "core/status.h"

namespace philora::cuda {

struct CudaContext {
  int device = 0;
  cudaDeviceProp props{};
  cudaStream_t stream = nullptr;
  std::shared_ptr<DeviceAllocator> allocator;
  std::unique_ptr<PinnedStaging> staging;
  std::unique_ptr<LtMatmul> matmul;

  static Expected<std::shared_ptr<CudaContext>> create(int device);
  ~CudaContext();
  CudaContext() = default;
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;
};

// Makes `device` this thread's current GPU for a scope and restores the one
// before. Every CudaBackend entry point holds one, so that one thread may
// drive the backends of several GPUs (tensor parallelism: the engine's thread
// loads every rank's weights, adapters and KV pools) and a rank's thread
// finds its own GPU.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;  // -1: unchanged
};

}  // namespace philora::cuda
