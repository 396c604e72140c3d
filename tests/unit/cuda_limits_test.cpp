// The shapes the CUDA kernels take, asked on the host (no GPU needed): a model
// whose sizes a kernel refuses must be turned away at load, not in a step.
#include <gtest/gtest.h>

#if PHILORA_HAVE_CUDA
#include "backend/cuda/cuda_lora.cuh"

namespace philora {
namespace {

TEST(CudaLimits, LoraColumnsShrinkTakesEveryPhi3Size) {
  // hidden 3072 (mini, 4-mini), 5120 (medium, 4); intermediate 8192, 17920.
  for (int64_t in : {3072, 5120, 8192, 17920, 32768}) EXPECT_TRUE(cuda::lora_shrink_columns_supported(in)) << in;
  for (int64_t in : {0, 37, 3076, 32776, 65536}) EXPECT_FALSE(cuda::lora_shrink_columns_supported(in)) << in;
}

}  // namespace
}  // namespace philora
#endif
