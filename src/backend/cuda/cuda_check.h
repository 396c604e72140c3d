// Error checking for CUDA runtime and cuBLASLt calls. Ops return Tensors, so a
// failing call throws std::runtime_error naming the call, the file:line and the
// CUDA error string; the apps catch it at the top and print it (errors of the
// GPU itself are not recoverable inside one process anyway).
#pragma once

#include <cuda_runtime_api.h>
#include <cublasLt.h>

#include <stdexcept>
#include <string>

namespace philora::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error: ") + what + " failed at " + file + ":" +
                           std::to_string(line) + ": " + cudaGetErrorName(e) + " (" +
                           cudaGetErrorString(e) + ")");
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t s, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("cuBLASLt error: ") + what + " failed at " + file + ":" +
                           std::to_string(line) + ": status " + std::to_string(int(s)));
}

// A shape or type this backend has no kernel for: the op harness reports
// std::logic_error("unsupported: ...") as skipped, not failed.
[[noreturn]] inline void throw_unsupported(const std::string& what) {
  throw std::logic_error("unsupported: cuda: " + what);
}

}  // namespace philora::cuda

#define PHILORA_CUDA_CHECK(call)                                                  \
  do {                                                                            \
    cudaError_t _e = (call);                                                      \
    if (_e != cudaSuccess) ::philora::cuda::throw_cuda_error(_e, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: the launch's own error (bad configuration, no image).
#define PHILORA_CUDA_CHECK_LAUNCH() PHILORA_CUDA_CHECK(cudaGetLastError())

#define PHILORA_CUBLAS_CHECK(call)                                                  \
  do {                                                                              \
    cublasStatus_t _s = (call);                                                     \
    if (_s != CUBLAS_STATUS_SUCCESS)                                                \
      ::philora::cuda::throw_cublas_error(_s, #call, __FILE__, __LINE__);           \
  } while (0)
