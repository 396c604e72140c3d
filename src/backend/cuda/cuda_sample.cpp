#include <climits>
#include <stdexcept>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_context.h"
#include "backend/cuda/cuda_sample.cuh"

namespace philora {

static_assert(cuda::kMaxTopLogprobs == kMaxLogprobs);

namespace {

[[noreturn]] void bad(const std::string& what) {
  throw std::runtime_error("cuda backend: sample: " + what);
}

void require(const Tensor& t, DType dtype, int64_t n, const char* what) {
  if (t.device != Device::cuda || t.dtype != dtype || t.numel() != n || (n > 0 && t.empty()))
    bad(std::string(what) + " must be a [" + std::to_string(n) + "] " +
        std::string(dtype_name(dtype)) + " tensor on the GPU (got " + t.shape_str() + " " +
        std::string(dtype_name(t.dtype)) + " on " + device_name(t.device) + ")");
}

// A tensor of some length on the GPU (the bias lists: their length is the
// device's bias_indptr[R], which the host does not read).
void require_list(const Tensor& t, DType dtype, const char* what) {
  if (t.device != Device::cuda || t.dtype != dtype || t.ndim != 1 || (t.numel() > 0 && t.empty()))
    bad(std::string(what) + " must be a 1-d " + std::string(dtype_name(dtype)) +
        " tensor on the GPU (got " + t.shape_str() + " " + std::string(dtype_name(t.dtype)) +
        " on " + device_name(t.device) + ")");
}

}  // namespace

// Shapes and dtypes are checked here; values the host cannot see (token ids,
// count rows, each row's k) are bounded by the kernel, which skips a bias
// token outside the vocabulary, takes a count row past the table as none,
// and clamps k to the plan's width.
SampleResult CudaBackend::sample(const Tensor& logits, const SamplingPlan& plan) {
  const cuda::DeviceGuard guard(ctx_->device);
  if (logits.device != Device::cuda || logits.dtype != DType::bf16 || logits.ndim != 2 ||
      logits.cols() < 1 || logits.cols() > INT_MAX || (logits.numel() > 0 && logits.empty()))
    bad("logits must be an (R, vocab ≥ 1) bf16 tensor on the GPU (got " + logits.shape_str() + " " +
        std::string(dtype_name(logits.dtype)) + " on " + device_name(logits.device) + ")");
  const int64_t rows = logits.rows(), vocab = logits.cols();
  require(plan.temperature, DType::f32, rows, "temperature");
  require(plan.top_k, DType::i32, rows, "top_k");
  require(plan.top_p, DType::f32, rows, "top_p");
  require(plan.min_p, DType::f32, rows, "min_p");
  require(plan.typical_p, DType::f32, rows, "typical_p");
  require(plan.uniform, DType::f32, rows, "uniform");
  require(plan.repetition_penalty, DType::f32, rows, "repetition_penalty");
  require(plan.frequency_penalty, DType::f32, rows, "frequency_penalty");
  require(plan.presence_penalty, DType::f32, rows, "presence_penalty");
  require(plan.count_row, DType::i32, rows, "count_row");
  require(plan.logprobs, DType::i32, rows, "logprobs");
  require(plan.logprob_kind, DType::i32, rows, "logprob_kind");
  require(plan.target, DType::i32, rows, "target");
  require(plan.bias_indptr, DType::i32, rows + 1, "bias_indptr");
  require_list(plan.bias_token, DType::i32, "bias_token");
  require_list(plan.bias_value, DType::f32, "bias_value");
  if (plan.bias_token.numel() != plan.bias_value.numel())
    bad("bias_token and bias_value must be as long (got " + plan.bias_token.shape_str() + " and " +
        plan.bias_value.shape_str() + ")");
  if (!plan.counts.empty() &&
      (plan.counts.device != Device::cuda || plan.counts.dtype != DType::i32 ||
       plan.counts.ndim != 2 || plan.counts.cols() != vocab))
    bad("counts must be an (rows, " + std::to_string(vocab) + ") i32 tensor on the GPU (got " +
        plan.counts.shape_str() + " " + std::string(dtype_name(plan.counts.dtype)) + ")");
  const int64_t width = plan.logprobs_width;
  if (width < -1 || width > kMaxLogprobs)
    bad("logprobs_width " + std::to_string(width) + " is outside [-1, " +
        std::to_string(kMaxLogprobs) + "]");
  const bool masks = !plan.mask_row.empty();
  if (masks) {
    require(plan.mask_row, DType::i32, rows, "mask_row");
    if (plan.mask.device != Device::cuda || plan.mask.dtype != DType::i32 || plan.mask.ndim != 2 ||
        plan.mask.cols() != (vocab + 31) / 32 || (plan.mask.numel() > 0 && plan.mask.empty()))
      bad("mask must be an (M, " + std::to_string((vocab + 31) / 32) +
          ") i32 tensor on the GPU (got " + plan.mask.shape_str() + " " +
          std::string(dtype_name(plan.mask.dtype)) + " on " + device_name(plan.mask.device) + ")");
  }

  SampleResult out;
  out.tokens = device_tensor(DType::i32, {rows});
  if (width >= 0) {
    out.logprob = device_tensor(DType::f32, {rows});
    out.top_tokens = device_tensor(DType::i32, {rows, width});
    out.top_logprobs = device_tensor(DType::f32, {rows, width});
  }
  const Tensor processed = device_tensor(DType::f32, {rows, vocab});
  cuda::SampleArgs a;
  a.logits = logits.data;
  a.processed = processed.ptr<float>();
  a.rows = rows;
  a.vocab = int(vocab);
  a.temperature = plan.temperature.ptr<float>();
  a.top_k = plan.top_k.ptr<int32_t>();
  a.top_p = plan.top_p.ptr<float>();
  a.min_p = plan.min_p.ptr<float>();
  a.typical_p = plan.typical_p.ptr<float>();
  a.uniform = plan.uniform.ptr<float>();
  a.repetition = plan.repetition_penalty.ptr<float>();
  a.frequency = plan.frequency_penalty.ptr<float>();
  a.presence = plan.presence_penalty.ptr<float>();
  a.count_row = plan.count_row.ptr<int32_t>();
  a.logprobs = plan.logprobs.ptr<int32_t>();
  a.logprob_kind = plan.logprob_kind.ptr<int32_t>();
  a.target = plan.target.ptr<int32_t>();
  a.bias_indptr = plan.bias_indptr.ptr<int32_t>();
  a.bias_token = plan.bias_token.ptr<int32_t>();
  a.bias_value = plan.bias_value.ptr<float>();
  if (masks) {  // a mask row past the table (a value the host does not read) is none
    a.mask_row = plan.mask_row.ptr<int32_t>();
    a.mask = reinterpret_cast<const uint32_t*>(plan.mask.data);
    a.mask_rows = plan.mask.rows();
    a.mask_words = plan.mask.cols();
  }
  a.counts = plan.counts.empty() ? nullptr : plan.counts.ptr<int32_t>();
  a.count_rows = plan.counts.empty() ? 0 : plan.counts.rows();
  a.out = out.tokens.ptr<int32_t>();
  if (width >= 0) {
    a.logprob = out.logprob.ptr<float>();
    a.top_tokens = out.top_tokens.ptr<int32_t>();
    a.top_logprobs = out.top_logprobs.ptr<float>();
    a.width = int(width);
  }
  cuda::launch_sample(a, ctx_->stream);
  return out;
}

void CudaBackend::reset_token_counts(Tensor& counts, int64_t row, const Tensor& tokens,
                                     int64_t prompt_len) {
  const cuda::DeviceGuard guard(ctx_->device);
  if (counts.device != Device::cuda || counts.dtype != DType::i32 || counts.ndim != 2 || row < 0 ||
      row >= counts.rows() || counts.cols() > INT_MAX || tokens.device != Device::cuda ||
      tokens.dtype != DType::i32 || prompt_len < 0 || prompt_len > tokens.numel())
    throw std::runtime_error("cuda backend: reset_token_counts: row " + std::to_string(row) +
                             " of " + counts.shape_str() + " from " + tokens.shape_str() +
                             " tokens with a prompt of " + std::to_string(prompt_len));
  cuda::launch_reset_token_counts(counts.ptr<int32_t>(), int(counts.cols()), row,
                                  tokens.ptr<int32_t>(), tokens.numel(), prompt_len, ctx_->stream);
}

}  // namespace philora
