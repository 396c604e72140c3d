#include <climits>
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_context.h"
#include "backend/cuda/cuda_sample.cuh"

namespace philora {

namespace {

void require(const Tensor& t, DType dtype, int64_t n, const char* what) {
  if (t.device != Device::cuda || t.dtype != dtype || t.numel() != n || (n > 0 && t.empty()))
    throw std::runtime_error(
        std::string("cuda backend: sample: ") + what + " must be a [" + std::to_string(n) + "] " +
        std::string(dtype_name(dtype)) + " tensor on the GPU (got " + t.shape_str() + " " +
        std::string(dtype_name(t.dtype)) + " on " + device_name(t.device) + ")");
}

}  // namespace

Tensor CudaBackend::sample(const Tensor& logits, const SamplingPlan& plan) {
  if (logits.device != Device::cuda || logits.dtype != DType::bf16 || logits.ndim != 2 ||
      logits.cols() < 1 || logits.cols() > INT_MAX || (logits.numel() > 0 && logits.empty()))
    throw std::runtime_error(
        "cuda backend: sample: logits must be an (R, vocab ≥ 1) bf16 tensor "
        "on the GPU (got " +
        logits.shape_str() + " " + std::string(dtype_name(logits.dtype)) + " on " +
        device_name(logits.device) + ")");
  const int64_t rows = logits.rows();
  require(plan.temperature, DType::f32, rows, "temperature");
  require(plan.top_k, DType::i32, rows, "top_k");
  require(plan.top_p, DType::f32, rows, "top_p");
  require(plan.uniform, DType::f32, rows, "uniform");
  Tensor out = device_tensor(DType::i32, {rows});
  cuda::SampleArgs a;
  a.logits = logits.data;
  a.rows = rows;
  a.vocab = int(logits.cols());
  a.temperature = plan.temperature.ptr<float>();
  a.top_k = plan.top_k.ptr<int32_t>();
  a.top_p = plan.top_p.ptr<float>();
  a.uniform = plan.uniform.ptr<float>();
  a.out = out.ptr<int32_t>();
  cuda::launch_sample(a, ctx_->stream);
  return out;
}

}  // namespace philora
