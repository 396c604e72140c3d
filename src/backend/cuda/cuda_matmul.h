// Dense GEMMs through cuBLASLt: y (m, n) = x (m, k) · wᵀ with w (n, k), all
// row-major bf16, f32 accumulation. The matmul descriptor, the three layouts and
// the heuristic's algorithm are built once per (m, n, k, alignments) and cached.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "backend/cuda/cuda_allocator.h"

namespace philora::cuda {

class LtMatmul {
 public:
  LtMatmul(cudaStream_t stream, std::shared_ptr<DeviceAllocator> allocator);
  ~LtMatmul();
  LtMatmul(const LtMatmul&) = delete;
  LtMatmul& operator=(const LtMatmul&) = delete;

  // y = alpha · x · wᵀ + beta · y ; x (m, k), w (n, k), y (m, n), bf16 row-major.
  void run(const void* x, const void* w, void* y, int64_t m, int64_t n, int64_t k,
           float alpha = 1.0f, float beta = 0.0f);

  size_t cached_plans() const { return plans_.size(); }

 private:
  // (m, n, k, alignment of x, w, y in bytes)
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int, int>;
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  Plan& plan_for(const Key& key);

  cudaStream_t stream_;
  std::shared_ptr<DeviceAllocator> allocator_;
  cublasLtHandle_t handle_ = nullptr;
  std::shared_ptr<void> workspace_;
  size_t workspace_bytes_ = 0;
  std::map<Key, Plan> plans_;
};

}  // namespace philora::cuda
