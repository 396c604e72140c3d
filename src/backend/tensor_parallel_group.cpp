#include "backend/tensor_parallel_group.h"

#include "backend/cpu/cpu_backend.h"
#include "backend/loopback_communicator.h"

namespace philora {

Status tensor_parallel_available(const std::string& device, int64_t ranks) {
  if (ranks <= 1 || device == "cpu") return Status();
  if (device != "cuda") return Status::errorf("tensor parallelism on '{}': unknown device", device);
  return Status::error("tensor parallelism on cuda needs NCCL, not built (the cpu runs it with "
                       "simulated ranks: --device cpu)");
}

Expected<std::vector<std::unique_ptr<Backend>>> make_rank_backends(const Backend& main,
                                                                   int64_t n) {
  std::vector<std::unique_ptr<Backend>> peers;
  if (n <= 1) return peers;
  if (main.device() == Device::cpu) {
    for (int64_t r = 1; r < n; ++r) peers.push_back(std::make_unique<CpuBackend>(1));
    return peers;
  }
  return Status::errorf("tensor parallelism on {}: not built", device_name(main.device()));
}

Expected<std::vector<std::unique_ptr<Communicator>>> make_rank_communicators(
    const std::vector<Backend*>& backends) {
  if (backends.empty()) return Status::error("tensor parallelism: no ranks");
  const Device device = backends[0]->device();
  for (const Backend* b : backends)
    if (b->device() != device)
      return Status::errorf("tensor parallelism: ranks on {} and {}", device_name(device),
                            device_name(b->device()));
  if (device == Device::cpu) return LoopbackGroup::communicators(int64_t(backends.size()));
  return Status::errorf("tensor parallelism on {}: not built", device_name(device));
}

}  // namespace philora
