// Random bf16 fill for measuring the ceilings (ceilings_cuda.cpp).
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace philora {

namespace {

// Values in [-1, 1) from a hash of (seed, i): random data, never zeros.
__global__ void fill_random_bf16(__nv_bfloat16* p, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t z = seed + (uint64_t(i) + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    p[i] = __float2bfloat16(float(int64_t(z >> 40) - (int64_t(1) << 23)) * (1.0f / float(1 << 23)));
  }
}

}  // namespace

void fill_random_bf16_async(void* p, int64_t n, uint64_t seed, cudaStream_t stream) {
  fill_random_bf16<<<1024, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(p), n, seed);
}

}  // namespace philora
