// The CUDA backend: the ops of backend.h on an NVIDIA GPU (built for Hopper,
// sm_90a). bf16 storage, f32 accumulation. One stream per backend; all ops are
// queued on it and only to_host_f32 / synchronize wait for it.
//
// Errors: a failing CUDA or cuBLASLt call inside an op throws std::runtime_error
// naming the call and the CUDA error string (ops return Tensors, not Status);
// make_cuda_backend itself returns errors as values.
#pragma once

#include <memory>

#include "backend/backend.h"

namespace philora {

namespace cuda {
struct CudaContext;
struct RowPrologue;
}

// Number of usable CUDA devices; 0 (never an error) without a driver or GPU.
int cuda_device_count();

// The backend on GPU `device` (0: the first visible), or an error saying why
// there is none.
Expected<std::unique_ptr<Backend>> make_cuda_backend(int device = 0);

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(std::shared_ptr<cuda::CudaContext> ctx);
  ~CudaBackend() override;

  Device device() const override { return Device::cuda; }
  std::string name() const override { return "cuda"; }
  std::string description() const override;
  DType compute_dtype() const override { return DType::bf16; }

  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) override;
  Tensor upload(const Tensor& host, DType dtype) override;
  Tensor pinned_host(DType dtype, int64_t n) override;
  void write_columns_batch(const std::vector<ColumnWrite>& writes) override;
  Tensor to_host_f32(const Tensor& t) override;
  Tensor upload_i32(const std::vector<int32_t>& values) override;
  Tensor upload_i64(const std::vector<int64_t>& values) override;
  Tensor upload_f32(const std::vector<float>& values) override;
  void upload_into(Tensor& dst, const void* src, size_t bytes) override;
  std::vector<int32_t> download_i32(const Tensor& t) override;
  void synchronize() override;
  Tensor random_uniform(std::initializer_list<int64_t> shape, uint64_t seed, float mean,
                        float half_width) override;

  Tensor embedding(const Tensor& ids, const Tensor& table) override;
  Tensor rms_norm(const Tensor& x, const Tensor& w, float eps) override;
  std::pair<Tensor, Tensor> add_rms_norm(const Tensor& h, const Tensor& residual, const Tensor& w,
                                         float eps) override;
  Tensor matmul(const Tensor& x, const Tensor& w) override;
  void matmul_add(const Tensor& x, const Tensor& w, Tensor& y) override;
  // rms_norm and silu_mul inside the GEMV (m ≤ 4, where it takes the shape)
  Tensor fused_matmul(const Tensor& src, const Prologue& p, const Tensor& w) override;
  void fused_matmul_add(const Tensor& src, const Prologue& p, const Tensor& w, Tensor& y) override;
  void write_columns(Tensor& dst, int64_t col, const Tensor& src, int64_t count = 0) override;
  void rope_and_cache(Tensor& qkv, const TokenPlan& tokens, const RopeParams& rope,
                      KvLayer& kv) override;
  Tensor attention(const Tensor& qkv, const KvLayer& kv, const AttentionPlan& plan,
                   const RopeParams& shape) override;
  Tensor silu_mul(const Tensor& gate_up) override;
  Tensor gather_rows(const Tensor& x, const Tensor& rows) override;
  Tensor bias_silu_residual(const Tensor& h, const Tensor& bias, const Tensor& x) override;
  Tensor argmax_rows(const Tensor& x) override;
  Tensor lora_shrink(const Tensor& x, const LoraModuleTable& m, const LoraBatch& batch) override;
  void lora_expand(const Tensor& xa, const LoraModuleTable& m, const LoraBatch& batch, Tensor& y,
                   int64_t col_offset) override;
  Tensor lora_delta(const Tensor& xa, const LoraModuleTable& m, const LoraBatch& batch) override;
  Tensor lora_shrink_columns(const Tensor& x, const LoraModuleTable& m, const LoraBatch& batch) override;
  bool lora_columns_supported(int64_t in_features) const override;
  SampleResult sample(const Tensor& logits, const SamplingPlan& plan) override;
  void reset_token_counts(Tensor& counts, int64_t row, const Tensor& tokens,
                          int64_t prompt_len) override;
  void release_cached_memory() override;
  Expected<MemoryInfo> memory_info() const override;  // cudaMemGetInfo (cached blocks count as used)
  bool can_capture() const override { return true; }
  std::unique_ptr<StepGraph> capture(const std::function<void()>& body) override;

  cuda::CudaContext& context() { return *ctx_; }
  int gpu() const;  // the device index this backend runs on

 private:
  Tensor device_tensor(DType dtype, std::initializer_list<int64_t> shape);
  Tensor upload_raw(const void* src, DType dtype, int64_t n);
  // y (+)= p(src) · wᵀ in the GEMV; false (nothing launched) where it does not take it.
  bool gemv_with_prologue(const Tensor& src, const Prologue& p, const Tensor& w, Tensor& y, bool accumulate);

  std::shared_ptr<cuda::CudaContext> ctx_;
};

}  // namespace philora
