#include "backend/ceilings.h"

namespace philora {

Expected<DeviceCeilings> measure_ceilings(Backend& backend) {
#ifdef PHILORA_HAVE_CUDA
  if (backend.device() == Device::cuda) return measure_cuda_ceilings();
#endif
  return Status::errorf("no measured ceilings for the {} backend", backend.name());
}

}  // namespace philora
