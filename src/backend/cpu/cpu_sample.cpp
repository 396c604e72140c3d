// Token selection and logprobs by SamplingPlan's rule (backend.h), the plainest
// way: the processed logits in f32, then sort the candidates, cut, and walk the
// kept tokens in vocabulary order. Weights, masses and logprobs in f64.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"

namespace philora {

namespace {

[[noreturn]] void bad(const std::string& what) {
  throw std::runtime_error("cpu backend: sample: " + what);
}

void require(const Tensor& t, DType dtype, int64_t n, const char* what) {
  if (t.device != Device::cpu || t.dtype != dtype || t.numel() != n || (n > 0 && t.empty()))
    bad(std::string(what) + " must be a [" + std::to_string(n) + "] " +
        std::string(dtype_name(dtype)) + " tensor in host memory (got " + t.shape_str() + " " +
        std::string(dtype_name(t.dtype)) + " on " + device_name(t.device) + ")");
}

// One row's parameters, read from the plan.
struct RowParams {
  float temperature, top_p, min_p, typical_p, uniform;
  int32_t top_k;
  float repetition, frequency, presence;
  int32_t count_row, logprobs, logprob_kind, target;
  const int32_t* bias_token;  // [bias_count]
  const float* bias_value;    // [bias_count]
  int64_t bias_count;
  const uint32_t* mask;  // [ceil(vocab / 32)] the row's allowed tokens, null = all
};

RowParams row_params(const SamplingPlan& p, int64_t r) {
  const int32_t begin = p.bias_indptr.ptr<int32_t>()[r], end = p.bias_indptr.ptr<int32_t>()[r + 1];
  return {p.temperature.ptr<float>()[r],
          p.top_p.ptr<float>()[r],
          p.min_p.ptr<float>()[r],
          p.typical_p.ptr<float>()[r],
          p.uniform.ptr<float>()[r],
          p.top_k.ptr<int32_t>()[r],
          p.repetition_penalty.ptr<float>()[r],
          p.frequency_penalty.ptr<float>()[r],
          p.presence_penalty.ptr<float>()[r],
          p.count_row.ptr<int32_t>()[r],
          p.logprobs.ptr<int32_t>()[r],
          p.logprob_kind.ptr<int32_t>()[r],
          p.target.ptr<int32_t>()[r],
          p.bias_token.ptr<int32_t>() + begin,
          p.bias_value.ptr<float>() + begin,
          end - begin,
          nullptr};
}

// Row r's mask words, or null (SamplingPlan::mask_row / mask).
const uint32_t* row_mask(const SamplingPlan& p, int64_t r) {
  if (p.mask_row.empty()) return nullptr;
  const int32_t m = p.mask_row.ptr<int32_t>()[r];
  if (m < 0) return nullptr;
  return reinterpret_cast<const uint32_t*>(p.mask.ptr<int32_t>()) + m * p.mask.cols();
}

// Steps 2 and 3: the mask, bias and bans, then the penalties from the row's counts, in f32.
void process(std::vector<float>& x, const RowParams& p, const int32_t* counts) {
  if (p.mask)
    for (size_t t = 0; t < x.size(); ++t)
      if (((p.mask[t / 32] >> (t % 32)) & 1u) == 0) x[t] = -INFINITY;
  for (int64_t j = 0; j < p.bias_count; ++j) x[size_t(p.bias_token[j])] += p.bias_value[j];
  if (!counts) return;
  for (size_t t = 0; t < x.size(); ++t) {
    const int32_t n = counts[t] >> 1;
    const bool in_prompt = (counts[t] & 1) != 0;
    if (in_prompt || n > 0) x[t] = x[t] > 0.0f ? x[t] / p.repetition : x[t] * p.repetition;
    if (n > 0) x[t] = x[t] - (p.frequency * float(n) + p.presence);
  }
}

int64_t first_max(const std::vector<float>& x) {
  int64_t best = 0;
  for (size_t i = 1; i < x.size(); ++i)
    if (x[i] > x[size_t(best)]) best = int64_t(i);
  return best;
}

// log_softmax(x) in f64; without a finite max: 0 at the first max, -inf elsewhere.
std::vector<double> log_softmax(const std::vector<float>& x) {
  const int64_t best = first_max(x);
  std::vector<double> lp(x.size(), -INFINITY);
  const double max = x[size_t(best)];
  if (!std::isfinite(max)) {
    lp[size_t(best)] = 0.0;
    return lp;
  }
  double sum = 0;
  for (const float v : x) sum += std::exp(double(v) - max);
  const double lse = std::log(sum);
  for (size_t i = 0; i < x.size(); ++i) lp[i] = double(x[i]) - max - lse;
  return lp;
}

// HF's TypicalLogitsWarper over the kept set: with p = w / Σw and H = −Σ p log p,
// s_t = |log p_t + H| = |lw_t − Σ w lw / Σ w| (lw = log w); keeps s_t ≤ s*, the
// smallest s whose {s_t ≤ s} holds typical_p of the mass.
void typical_cut(std::vector<char>& kept, const std::vector<double>& w,
                 const std::vector<double>& lw, float typical_p) {
  double z = 0, wlw = 0;
  std::vector<int64_t> tokens;
  for (size_t t = 0; t < kept.size(); ++t)
    if (kept[t]) {
      tokens.push_back(int64_t(t));
      z += w[t];
      wlw += w[t] * lw[t];
    }
  const double mu = wlw / z;
  std::vector<double> s(kept.size(), INFINITY);
  for (const int64_t t : tokens) s[size_t(t)] = std::fabs(lw[size_t(t)] - mu);
  std::sort(tokens.begin(), tokens.end(), [&](int64_t a, int64_t b) {
    return s[size_t(a)] != s[size_t(b)] ? s[size_t(a)] < s[size_t(b)] : a < b;
  });
  const double target = double(typical_p) * z;
  double mass = 0;
  for (size_t j = 0; j < tokens.size(); ++j) {
    mass += w[size_t(tokens[j])];
    const bool group_ends =
        j + 1 == tokens.size() || s[size_t(tokens[j + 1])] != s[size_t(tokens[j])];
    if (group_ends && mass >= target) {
      const double s_star = s[size_t(tokens[j])];
      for (const int64_t t : tokens)
        if (s[size_t(t)] > s_star) kept[size_t(t)] = 0;
      return;
    }
  }
}

struct Choice {
  int32_t token = 0;
  std::vector<double> logprob;  // [vocab] the processed logprobs; empty unless asked for
};

// Step 4 for a sampled row (temperature > 0, finite max `best`).
Choice draw(const std::vector<float>& x, int64_t best, const RowParams& p, bool want_logprobs) {
  const int64_t vocab = int64_t(x.size());
  const double max = x[size_t(best)], temperature = p.temperature;
  std::vector<double> lw(static_cast<size_t>(vocab)), w(static_cast<size_t>(vocab));
  for (int64_t t = 0; t < vocab; ++t) {
    lw[size_t(t)] = (double(x[size_t(t)]) - max) / temperature;
    w[size_t(t)] = std::exp(lw[size_t(t)]);
  }
  // Candidates: finite x, in (x desc, index asc) order.
  std::vector<int64_t> order;
  for (int64_t t = 0; t < vocab; ++t)
    if (std::isfinite(x[size_t(t)])) order.push_back(t);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return x[size_t(a)] != x[size_t(b)] ? x[size_t(a)] > x[size_t(b)] : a < b;
  });
  // min_p, top_k and top_p each keep a prefix of the order.
  size_t keep = order.size();
  if (p.min_p > 0.0f)
    for (size_t j = 0; j < keep; ++j)
      if (w[size_t(order[j])] < double(p.min_p)) {
        keep = j;
        break;
      }
  if (p.top_k > 0 && size_t(p.top_k) < keep) keep = size_t(p.top_k);
  if (p.top_p < 1.0f) {
    double sum = 0;
    for (size_t j = 0; j < keep; ++j) sum += w[size_t(order[j])];
    const double target = double(p.top_p) * sum;
    double mass = 0;
    for (size_t j = 0; j < keep; ++j) {
      mass += w[size_t(order[j])];
      if (mass >= target) {
        keep = j + 1;
        break;
      }
    }
  }
  std::vector<char> kept(size_t(vocab), 0);
  for (size_t j = 0; j < keep; ++j) kept[size_t(order[j])] = 1;
  if (p.typical_p < 1.0f) typical_cut(kept, w, lw, p.typical_p);

  // The kept tokens in vocabulary order: the first whose running sum exceeds u · Σ_kept w.
  double total = 0;
  for (int64_t t = 0; t < vocab; ++t)
    if (kept[size_t(t)]) total += w[size_t(t)];
  const double threshold = double(p.uniform) * total;
  Choice c;
  c.token = int32_t(best);
  double running = 0;
  for (int64_t t = 0; t < vocab; ++t) {
    if (!kept[size_t(t)]) continue;
    running += w[size_t(t)];
    c.token = int32_t(t);
    if (running > threshold) break;
  }
  if (want_logprobs) {
    const double log_total = std::log(total);
    c.logprob.assign(size_t(vocab), -INFINITY);
    for (int64_t t = 0; t < vocab; ++t)
      if (kept[size_t(t)]) c.logprob[size_t(t)] = lw[size_t(t)] - log_total;
  }
  return c;
}

struct RowOut {
  int32_t* token;
  float* logprob;       // null without logprobs
  int32_t* top_tokens;  // [width]
  float* top_logprobs;  // [width]
};

void sample_row(const float* logits, int64_t vocab, const RowParams& p, int32_t* counts,
                const RowOut& out) {
  std::vector<float> x(logits, logits + vocab);
  for (float& v : x)
    if (std::isnan(v)) v = -INFINITY;
  const bool want = p.logprobs >= 0;
  std::vector<double> raw;
  if (want && p.logprob_kind == 0) raw = log_softmax(x);
  process(x, p, counts);
  const int64_t best = first_max(x);
  Choice c;
  if (p.temperature > 0.0f && std::isfinite(x[size_t(best)])) {
    c = draw(x, best, p, want && p.logprob_kind != 0);
  } else {
    c.token = int32_t(best);
    if (want && p.logprob_kind != 0) c.logprob = log_softmax(x);
  }
  *out.token = c.token;
  if (counts) counts[c.token] += 2;
  if (!want) return;
  const std::vector<double>& lp = p.logprob_kind == 0 ? raw : c.logprob;
  *out.logprob = float(lp[size_t(p.target >= 0 ? p.target : c.token)]);
  // The k highest logprobs, ties in ascending index.
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  const auto k = size_t(std::min<int64_t>(p.logprobs, vocab));
  std::partial_sort(order.begin(), order.begin() + int64_t(k), order.end(),
                    [&](int32_t a, int32_t b) {
                      return lp[size_t(a)] != lp[size_t(b)] ? lp[size_t(a)] > lp[size_t(b)] : a < b;
                    });
  for (size_t j = 0; j < k; ++j) {
    out.top_tokens[j] = order[j];
    out.top_logprobs[j] = float(lp[size_t(order[j])]);
  }
}

}  // namespace

SampleResult CpuBackend::sample(const Tensor& logits, const SamplingPlan& plan) {
  if (logits.device != Device::cpu || logits.dtype != DType::f32 || logits.ndim != 2 ||
      logits.cols() < 1 || (logits.numel() > 0 && logits.empty()))
    bad("logits must be an (R, vocab ≥ 1) f32 tensor in host memory (got " + logits.shape_str() +
        " " + std::string(dtype_name(logits.dtype)) + " on " + device_name(logits.device) + ")");
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
  const int32_t* indptr = plan.bias_indptr.ptr<int32_t>();
  const int64_t entries = indptr[rows];
  // The lists may hold more than the rows use (a graph's fixed buffers).
  if (plan.bias_token.numel() < entries || plan.bias_value.numel() < entries)
    bad("bias_token and bias_value must hold the bias_indptr[R] = " + std::to_string(entries) +
        " entries (got " + plan.bias_token.shape_str() + " and " + plan.bias_value.shape_str() +
        ")");
  require(plan.bias_token, DType::i32, plan.bias_token.numel(), "bias_token");
  require(plan.bias_value, DType::f32, plan.bias_value.numel(), "bias_value");
  if (!plan.counts.empty() &&
      (plan.counts.device != Device::cpu || plan.counts.dtype != DType::i32 ||
       plan.counts.ndim != 2 || plan.counts.cols() != vocab))
    bad("counts must be an (rows, " + std::to_string(vocab) + ") i32 tensor in host memory (got " +
        plan.counts.shape_str() + " " + std::string(dtype_name(plan.counts.dtype)) + ")");
  const int64_t width = plan.logprobs_width;
  if (width < -1 || width > kMaxLogprobs)
    bad("logprobs_width " + std::to_string(width) + " is outside [-1, " +
        std::to_string(kMaxLogprobs) + "]");
  const bool masks = !plan.mask_row.empty();
  if (masks) {
    require(plan.mask_row, DType::i32, rows, "mask_row");
    if (plan.mask.device != Device::cpu || plan.mask.dtype != DType::i32 || plan.mask.ndim != 2 ||
        plan.mask.cols() != (vocab + 31) / 32 || (plan.mask.numel() > 0 && plan.mask.empty()))
      bad("mask must be an (M, " + std::to_string((vocab + 31) / 32) +
          ") i32 tensor in host memory (got " + plan.mask.shape_str() + " " +
          std::string(dtype_name(plan.mask.dtype)) + ")");
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t m = plan.mask_row.ptr<int32_t>()[r];
      if (m < -1 || m >= plan.mask.rows())
        bad("mask row " + std::to_string(m) + " of mask " + plan.mask.shape_str());
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const RowParams p = row_params(plan, r);
    if (indptr[r] < 0 || indptr[r] > indptr[r + 1]) bad("bias_indptr must not decrease");
    for (int64_t j = 0; j < p.bias_count; ++j)
      if (p.bias_token[j] < 0 || p.bias_token[j] >= vocab)
        bad("bias token " + std::to_string(p.bias_token[j]) + " is outside the vocabulary");
    if (p.logprobs > width)
      bad("row " + std::to_string(r) + " asks for " + std::to_string(p.logprobs) +
          " logprobs, the plan's width is " + std::to_string(width));
    if (p.target < -1 || p.target >= vocab)
      bad("target " + std::to_string(p.target) + " is outside the vocabulary");
    if (p.count_row >= 0 && (plan.counts.empty() || p.count_row >= plan.counts.rows()))
      bad("count row " + std::to_string(p.count_row) + " of counts " + plan.counts.shape_str() +
          " for a vocabulary of " + std::to_string(vocab));
  }
  SampleResult out;
  out.tokens = host_alloc(DType::i32, {rows});
  if (width >= 0) {
    out.logprob = host_alloc(DType::f32, {rows});
    out.top_tokens = host_alloc(DType::i32, {rows, width});
    out.top_logprobs = host_alloc(DType::f32, {rows, width});
    std::fill_n(out.logprob.ptr<float>(), rows, NAN);
    std::fill_n(out.top_tokens.ptr<int32_t>(), rows * width, -1);
    std::fill_n(out.top_logprobs.ptr<float>(), rows * width, NAN);
  }
  pool_.parallel_for(rows, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      RowParams p = row_params(plan, r);
      p.mask = row_mask(plan, r);
      int32_t* counts =
          p.count_row >= 0 ? plan.counts.ptr<int32_t>() + p.count_row * vocab : nullptr;
      const RowOut o{out.tokens.ptr<int32_t>() + r,
                     width >= 0 ? out.logprob.ptr<float>() + r : nullptr,
                     width >= 0 ? out.top_tokens.ptr<int32_t>() + r * width : nullptr,
                     width >= 0 ? out.top_logprobs.ptr<float>() + r * width : nullptr};
      sample_row(logits.ptr<float>() + r * vocab, vocab, p, counts, o);
    }
  });
  return out;
}

void CpuBackend::reset_token_counts(Tensor& counts, int64_t row, const Tensor& tokens,
                                    int64_t prompt_len) {
  if (counts.device != Device::cpu || counts.dtype != DType::i32 || counts.ndim != 2 || row < 0 ||
      row >= counts.rows() || tokens.device != Device::cpu || tokens.dtype != DType::i32 ||
      prompt_len < 0 || prompt_len > tokens.numel())
    throw std::runtime_error("cpu backend: reset_token_counts: row " + std::to_string(row) +
                             " of " + counts.shape_str() + " from " + tokens.shape_str() +
                             " tokens with a prompt of " + std::to_string(prompt_len));
  const int64_t vocab = counts.cols();
  int32_t* c = counts.ptr<int32_t>() + row * vocab;
  std::fill_n(c, vocab, 0);
  for (int64_t i = 0; i < tokens.numel(); ++i) {
    const int32_t t = tokens.ptr<int32_t>()[i];
    if (t < 0 || t >= vocab)
      throw std::runtime_error("cpu backend: reset_token_counts: token " + std::to_string(t) +
                               " is outside the vocabulary of " + std::to_string(vocab));
    if (i < prompt_len)
      c[t] |= 1;
    else
      c[t] += 2;
  }
}

}  // namespace philora
