// The CPU backend: the executable specification. Plain, correct code in f32
// (reductions in f64), dense matmuls through BLAS, loops over a thread pool.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "core/threads.h"

namespace philora {

// Not final: tests derive from it to make one op fail (a device failure inside the forward).
class CpuBackend : public Backend {
 public:
  // replay_graphs: capture() records the body itself and a replay runs it
  // again — what a graph means, so that tests exercise the graph paths of the
  // engine on the CPU. Off by default (padding to a bucket only costs here).
  explicit CpuBackend(int num_threads = 0, bool replay_graphs = false);

  Device device() const override { return Device::cpu; }
  std::string name() const override { return "cpu"; }
  std::string description() const override;  // "cpu (N threads)"
  DType compute_dtype() const override { return DType::f32; }

  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) override;
  Tensor upload(const Tensor& host, DType dtype) override;
  Tensor to_host_f32(const Tensor& t) override;
  Tensor upload_i32(const std::vector<int32_t>& values) override;
  Tensor upload_i64(const std::vector<int64_t>& values) override;
  Tensor upload_f32(const std::vector<float>& values) override;
  void upload_into(Tensor& dst, const void* src, size_t bytes) override;
  std::vector<int32_t> download_i32(const Tensor& t) override;
  void synchronize() override {}
  Expected<MemoryInfo> memory_info() const override;  // MemAvailable / MemTotal
  Tensor random_uniform(std::initializer_list<int64_t> shape, uint64_t seed, float mean,
                        float half_width) override;

  Tensor embedding(const Tensor& ids, const Tensor& table) override;
  Tensor rms_norm(const Tensor& x, const Tensor& w, float eps) override;
  std::pair<Tensor, Tensor> add_rms_norm(const Tensor& h, const Tensor& residual, const Tensor& w,
                                         float eps) override;
  Tensor matmul(const Tensor& x, const Tensor& w) override;
  void matmul_add(const Tensor& x, const Tensor& w, Tensor& y) override;
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
  SampleResult sample(const Tensor& logits, const SamplingPlan& plan) override;
  void reset_token_counts(Tensor& counts, int64_t row, const Tensor& tokens,
                          int64_t prompt_len) override;
  bool can_capture() const override { return replay_graphs_; }
  std::unique_ptr<StepGraph> capture(const std::function<void()>& body) override;

  ThreadPool& pool() { return pool_; }

 private:
  ThreadPool pool_;
  bool replay_graphs_;
};

// Host memory: 64-byte aligned, owned by the returned tensor.
Tensor host_alloc(DType dtype, std::initializer_list<int64_t> shape);

}  // namespace philora
