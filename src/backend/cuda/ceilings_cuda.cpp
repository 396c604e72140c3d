// Measures copy bandwidth and the cuBLASLt bf16 rate (METHOD.md: measure the
// two ceilings once, on random data, with events, median of several runs).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <vector>

#include "backend/ceilings.h"
#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/cuda_matmul.h"

namespace philora {

void fill_random_bf16_async(void* p, int64_t n, uint64_t seed, cudaStream_t stream);  // ceilings.cu

namespace {

#define CEIL_CHECK(call)                                                               \
  do {                                                                                 \
    cudaError_t _e = (call);                                                           \
    if (_e != cudaSuccess)                                                             \
      return Status::errorf("{} failed: {}", #call, cudaGetErrorString(_e));           \
  } while (0)

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

Status cuda_memory_info(int64_t* free_bytes, int64_t* total_bytes) {
  size_t f = 0, t = 0;
  CEIL_CHECK(cudaMemGetInfo(&f, &t));
  *free_bytes = int64_t(f);
  *total_bytes = int64_t(t);
  return Status();
}

Expected<DeviceCeilings> measure_cuda_ceilings() {
  DeviceCeilings c;
  int dev = 0;
  CEIL_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  CEIL_CHECK(cudaGetDeviceProperties(&prop, dev));
  c.device_name = prop.name;
  cudaStream_t stream;
  CEIL_CHECK(cudaStreamCreate(&stream));
  cudaEvent_t t0, t1;
  CEIL_CHECK(cudaEventCreate(&t0));
  CEIL_CHECK(cudaEventCreate(&t1));

  // Copy: 2 GiB device to device, several times; bytes = read + write.
  {
    const size_t bytes = size_t(2) << 30;
    void *a = nullptr, *b = nullptr;
    CEIL_CHECK(cudaMalloc(&a, bytes));
    CEIL_CHECK(cudaMalloc(&b, bytes));
    fill_random_bf16_async(a, int64_t(bytes / 2), 1, stream);
    CEIL_CHECK(cudaGetLastError());
    std::vector<double> rates;
    for (int i = 0; i < 8; ++i) {
      CEIL_CHECK(cudaEventRecord(t0, stream));
      CEIL_CHECK(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice, stream));
      CEIL_CHECK(cudaEventRecord(t1, stream));
      CEIL_CHECK(cudaEventSynchronize(t1));
      float ms = 0;
      CEIL_CHECK(cudaEventElapsedTime(&ms, t0, t1));
      if (i > 0) rates.push_back(2.0 * double(bytes) / (double(ms) * 1e-3));
    }
    c.copy_bytes_per_s = median(rates);
    CEIL_CHECK(cudaFree(a));
    CEIL_CHECK(cudaFree(b));
  }

  // Matmul: 8192³ bf16 through cuBLASLt, random operands.
  try {
    const int64_t n = 8192;
    auto alloc = cuda::DeviceAllocator::create();
    {
      cuda::LtMatmul mm(stream, alloc);
      auto x = alloc->allocate(size_t(n * n * 2)), w = alloc->allocate(size_t(n * n * 2)),
           y = alloc->allocate(size_t(n * n * 2));
      fill_random_bf16_async(x.get(), n * n, 2, stream);
      fill_random_bf16_async(w.get(), n * n, 3, stream);
      CEIL_CHECK(cudaGetLastError());
      std::vector<double> rates;
      for (int i = 0; i < 11; ++i) {
        CEIL_CHECK(cudaEventRecord(t0, stream));
        mm.run(x.get(), w.get(), y.get(), n, n, n);
        CEIL_CHECK(cudaEventRecord(t1, stream));
        CEIL_CHECK(cudaEventSynchronize(t1));
        float ms = 0;
        CEIL_CHECK(cudaEventElapsedTime(&ms, t0, t1));
        if (i > 0) rates.push_back(2.0 * double(n) * double(n) * double(n) / (double(ms) * 1e-3));
      }
      c.matmul_flops_per_s = median(rates);
    }
    alloc->release_cached();
  } catch (const std::exception& e) {
    return Status::errorf("measuring the cuBLASLt rate: {}", e.what());
  }
  CEIL_CHECK(cudaEventDestroy(t0));
  CEIL_CHECK(cudaEventDestroy(t1));
  CEIL_CHECK(cudaStreamDestroy(stream));
  PHILORA_RETURN_IF_ERROR(cuda_memory_info(&c.free_bytes, &c.total_bytes));
  return c;
}

}  // namespace philora
