#include "backend/cuda/cuda_context.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_check.h"

namespace philora::cuda {

Expected<std::shared_ptr<CudaContext>> CudaContext::create(int device) {
  auto ctx = std::make_shared<CudaContext>();
  ctx->device = device;
  try {
    PHILORA_CUDA_CHECK(cudaSetDevice(device));
    PHILORA_CUDA_CHECK(cudaGetDeviceProperties(&ctx->props, device));
    if (ctx->props.major != 9)
      return Status::errorf(
          "device 'cuda': GPU {} is {} (compute capability {}.{}); this build of philora has kernels "
          "for Hopper (sm_90a) only",
          device, ctx->props.name, ctx->props.major, ctx->props.minor);
    PHILORA_CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
    ctx->allocator = DeviceAllocator::create();
    ctx->staging = std::make_unique<PinnedStaging>(ctx->stream);
    ctx->matmul = std::make_unique<LtMatmul>(ctx->stream, ctx->allocator);
    if (const char* tune = std::getenv("PHILORA_CUBLASLT_AUTOTUNE"); tune && std::string(tune) == "0")
      ctx->matmul->set_autotune(false);
  } catch (const std::exception& e) {
    return Status::errorf("device 'cuda': {}", e.what());
  }
  return ctx;
}

DeviceGuard::DeviceGuard(int device) {
  int current = 0;
  PHILORA_CUDA_CHECK(cudaGetDevice(&current));
  if (current == device) return;
  PHILORA_CUDA_CHECK(cudaSetDevice(device));
  previous_ = current;
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

CudaContext::~CudaContext() {
  (void)cudaSetDevice(device);  // never throws here; the stream and cuBLASLt are this GPU's
  if (stream) (void)cudaStreamSynchronize(stream);
  matmul.reset();
  staging.reset();
  if (stream) (void)cudaStreamDestroy(stream);
}

}  // namespace philora::cuda
