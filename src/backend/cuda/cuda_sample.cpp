#include <stdexcept>

#include "backend/cuda/cuda_backend.h"

namespace philora {

Tensor CudaBackend::sample(const Tensor& logits, const SamplingPlan& plan) {
  (void)logits;
  (void)plan;
  throw std::logic_error("unsupported: sample: not written yet");
}

}  // namespace philora
