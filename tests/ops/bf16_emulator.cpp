#include "ops/bf16_emulator.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "backend/cpu/cpu_backend.h"

namespace philora::optest {
namespace {

// Rounds an f32 tensor's elements to bf16 in place: what bf16 storage keeps.
void round_to_bf16(const Tensor& t) {
  float* p = t.ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = bf16_to_f32(f32_to_bf16(p[i]));
}

Tensor rounded(Tensor t) {
  round_to_bf16(t);
  return t;
}

class Bf16Emulator final : public Backend {
 public:
  Device device() const override { return Device::cpu; }
  std::string name() const override { return "cpu-bf16"; }
  DType compute_dtype() const override { return DType::bf16; }

  // Storage is f32 holding bf16 values, so the cpu ops can read it.
  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) override {
    return cpu_.alloc(dtype == DType::bf16 || dtype == DType::f16 ? DType::f32 : dtype, shape);
  }
  Tensor upload(const Tensor& host, DType dtype) override {
    if (dtype != DType::bf16 && dtype != DType::f16) return cpu_.upload(host, dtype);
    // A copy (the cpu backend would borrow f32 host memory), then rounded.
    Tensor out = host_alloc(DType::f32, {host.numel()});
    to_f32(host.data, host.dtype, out.ptr<float>(), size_t(host.numel()));
    out.ndim = host.ndim;
    out.shape = host.shape;
    return rounded(out);
  }
  Tensor to_host_f32(const Tensor& t) override { return cpu_.to_host_f32(t); }
  Tensor upload_i32(const std::vector<int32_t>& v) override { return cpu_.upload_i32(v); }
  Tensor upload_i64(const std::vector<int64_t>& v) override { return cpu_.upload_i64(v); }
  Tensor upload_f32(const std::vector<float>& v) override { return cpu_.upload_f32(v); }
  void upload_into(Tensor& dst, const void* src, size_t bytes) override {
    cpu_.upload_into(dst, src, bytes);
  }
  std::vector<int32_t> download_i32(const Tensor& t) override { return cpu_.download_i32(t); }
  SampleResult sample(const Tensor& logits, const SamplingPlan& plan) override {
    return cpu_.sample(logits, plan);
  }
  void reset_token_counts(Tensor& counts, int64_t row, const Tensor& tokens,
                          int64_t prompt_len) override {
    cpu_.reset_token_counts(counts, row, tokens, prompt_len);
  }
  void synchronize() override {}
  Expected<MemoryInfo> memory_info() const override { return cpu_.memory_info(); }
  Tensor random_uniform(std::initializer_list<int64_t> shape, uint64_t seed, float mean,
                        float half_width) override {
    return rounded(cpu_.random_uniform(shape, seed, mean, half_width));
  }

  Tensor embedding(const Tensor& ids, const Tensor& table) override {
    return rounded(cpu_.embedding(ids, table));
  }
  Tensor rms_norm(const Tensor& x, const Tensor& w, float eps) override {
    return rounded(cpu_.rms_norm(x, w, eps));
  }
  std::pair<Tensor, Tensor> add_rms_norm(const Tensor& h, const Tensor& residual, const Tensor& w,
                                         float eps) override {
    auto [y, sum] = cpu_.add_rms_norm(h, residual, w, eps);
    return {rounded(y), rounded(sum)};
  }
  Tensor matmul(const Tensor& x, const Tensor& w) override { return rounded(cpu_.matmul(x, w)); }
  void matmul_add(const Tensor& x, const Tensor& w, Tensor& y) override {
    cpu_.matmul_add(x, w, y);
    round_to_bf16(y);
  }
  void rope_and_cache(Tensor& qkv, const TokenPlan& tokens, const RopeParams& rope,
                      KvLayer& kv) override {
    cpu_.rope_and_cache(qkv, tokens, rope, kv);
    round_to_bf16(qkv);
    round_to_bf16(kv.k);
    round_to_bf16(kv.v);
  }
  Tensor attention(const Tensor& qkv, const KvLayer& kv, const AttentionPlan& plan,
                   const RopeParams& shape) override {
    if (shape.head_dim < 64)
      throw std::logic_error("unsupported: attention with head_dim " +
                             std::to_string(shape.head_dim) +
                             " (the emulated kernel set starts at 64)");
    return rounded(cpu_.attention(qkv, kv, plan, shape));
  }
  Tensor silu_mul(const Tensor& gate_up) override { return rounded(cpu_.silu_mul(gate_up)); }
  Tensor gather_rows(const Tensor& x, const Tensor& rows) override {
    return rounded(cpu_.gather_rows(x, rows));
  }
  Tensor bias_silu_residual(const Tensor& h, const Tensor& bias, const Tensor& x) override {
    return rounded(cpu_.bias_silu_residual(h, bias, x));
  }
  Tensor argmax_rows(const Tensor& x) override { return cpu_.argmax_rows(x); }
  // xa is f32 by contract: not rounded.
  Tensor lora_shrink(const Tensor& x, const LoraModuleTable& m, const LoraBatch& batch) override {
    return cpu_.lora_shrink(x, m, batch);
  }
  void lora_expand(const Tensor& xa, const LoraModuleTable& m, const LoraBatch& batch, Tensor& y,
                   int64_t col_offset) override {
    cpu_.lora_expand(xa, m, batch, y, col_offset);
    round_to_bf16(y);
  }
  Tensor lora_delta(const Tensor& xa, const LoraModuleTable& m, const LoraBatch& batch) override {
    return rounded(cpu_.lora_delta(xa, m, batch));
  }
  Tensor lora_shrink_columns(const Tensor& x, const LoraModuleTable& m, const LoraBatch& batch) override {
    return rounded(cpu_.lora_shrink_columns(x, m, batch));
  }
  void write_columns(Tensor& dst, int64_t col, const Tensor& src, int64_t count = 0) override {
    cpu_.write_columns(dst, col, src, count);
  }

 private:
  CpuBackend cpu_;
};

}  // namespace

std::unique_ptr<Backend> make_bf16_emulator() { return std::make_unique<Bf16Emulator>(); }

}  // namespace philora::optest
