#include "backend/tensor_parallel_group.h"

#include "backend/cpu/cpu_backend.h"
#include "backend/loopback_communicator.h"
#include "backend/staged_communicator.h"
#ifdef PHILORA_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/nccl_communicator.h"
#endif

namespace philora {

Status tensor_parallel_available(const std::string& device, int64_t ranks, bool simulate) {
  if (ranks <= 1 || device == "cpu") return Status();
  if (device != "cuda") return Status::errorf("tensor parallelism on '{}': unknown device", device);
#ifdef PHILORA_HAVE_CUDA
  if (simulate) {
    if (cuda_device_count() < 1) return Status::error("tensor parallelism on cuda: no GPU visible");
    return Status();
  }
  PHILORA_RETURN_IF_ERROR(nccl_available());
  const int gpus = cuda_device_count();
  if (gpus < ranks)
    return Status::errorf(
        "tensor parallelism over {} ranks on cuda: one GPU a rank, {} visible (--simulate-ranks "
        "runs them all on one GPU, to check results, slowly)",
        ranks, gpus);
  return Status();
#else
  return Status::error(
      "tensor parallelism on cuda: this build of philora has no CUDA backend (nvcc was not found "
      "at build time)");
#endif
}

Expected<std::vector<std::unique_ptr<Backend>>> make_rank_backends(const Backend& main, int64_t n,
                                                                   bool simulate) {
  std::vector<std::unique_ptr<Backend>> peers;
  if (n <= 1) return peers;
  if (main.device() == Device::cpu) {
    for (int64_t r = 1; r < n; ++r) peers.push_back(std::make_unique<CpuBackend>(1));
    return peers;
  }
#ifdef PHILORA_HAVE_CUDA
  if (main.device() == Device::cuda) {
    PHILORA_RETURN_IF_ERROR(tensor_parallel_available("cuda", n, simulate));
    const int main_gpu = dynamic_cast<const CudaBackend&>(main).gpu();
    for (int64_t r = 1; r < n; ++r) {
      auto b = make_cuda_backend(simulate ? main_gpu : int(r));
      if (!b) return Status::errorf("tensor parallelism: rank {}: {}", r, b.status().message());
      peers.push_back(std::move(*b));
    }
    return peers;
  }
#endif
  return Status::errorf("tensor parallelism on {}: not built", device_name(main.device()));
}

Expected<std::vector<std::unique_ptr<Communicator>>> make_rank_communicators(
    const std::vector<Backend*>& backends, bool simulate) {
  if (backends.empty()) return Status::error("tensor parallelism: no ranks");
  const Device device = backends[0]->device();
  for (const Backend* b : backends)
    if (b->device() != device)
      return Status::errorf("tensor parallelism: ranks on {} and {}", device_name(device),
                            device_name(b->device()));
  if (simulate) return staged_communicators(backends);
  if (device == Device::cpu) return LoopbackGroup::communicators(int64_t(backends.size()));
#ifdef PHILORA_HAVE_CUDA
  if (device == Device::cuda) {
    std::vector<CudaBackend*> gpus;
    for (Backend* b : backends) {
      auto* gpu = dynamic_cast<CudaBackend*>(b);
      if (!gpu) return Status::error("tensor parallelism on cuda: a rank's backend is not CUDA's");
      gpus.push_back(gpu);
    }
    return nccl_communicators(gpus);
  }
#endif
  return Status::errorf("tensor parallelism on {}: not built", device_name(device));
}

}  // namespace philora
