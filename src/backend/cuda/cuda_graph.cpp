#include "backend/cuda/cuda_backend.h"

namespace philora {

std::unique_ptr<StepGraph> CudaBackend::capture(const std::function<void()>& body) {
  (void)body;
  return nullptr;
}

}  // namespace philora
