// The two ceilings of a device, measured (not taken from a datasheet): copy
// bandwidth (bytes read + written per second by a large device-to-device copy)
// and the dense bf16 matmul rate of the vendor library on random data.
#pragma once

#include <string>

#include "backend/backend.h"

namespace philora {

struct DeviceCeilings {
  std::string device_name;
  double copy_bytes_per_s = 0;    // read + write
  double matmul_flops_per_s = 0;  // 8192³ bf16, f32 accumulate
  int64_t free_bytes = 0;         // device memory free at measurement time
  int64_t total_bytes = 0;
};

// Measures the backend's device; an error for a backend with no such figures (cpu).
Expected<DeviceCeilings> measure_ceilings(Backend& backend);

#ifdef PHILORA_HAVE_CUDA
Expected<DeviceCeilings> measure_cuda_ceilings();
// Free and total device memory now.
Status cuda_memory_info(int64_t* free_bytes, int64_t* total_bytes);
#endif

}  // namespace philora
