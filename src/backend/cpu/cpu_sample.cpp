#include <stdexcept>

#include "backend/cpu/cpu_backend.h"

namespace philora {

Tensor CpuBackend::sample(const Tensor& logits, const SamplingPlan& plan) {
  (void)logits;
  (void)plan;
  throw std::logic_error("unsupported: sample: not written yet");
}

}  // namespace philora
