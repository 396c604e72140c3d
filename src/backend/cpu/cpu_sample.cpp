// Token selection by SamplingPlan's rule (backend.h), the plainest way: sort the
// candidates, cut, then walk the kept tokens in vocabulary order. Weights and
// masses in f64.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"

namespace philora {

namespace {

void require(const Tensor& t, DType dtype, int64_t n, const char* what) {
  if (t.device != Device::cpu || t.dtype != dtype || t.numel() != n || (n > 0 && t.empty()))
    throw std::runtime_error(
        std::string("cpu backend: sample: ") + what + " must be a [" + std::to_string(n) + "] " +
        std::string(dtype_name(dtype)) + " tensor in host memory (got " + t.shape_str() + " " +
        std::string(dtype_name(t.dtype)) + " on " + device_name(t.device) + ")");
}

// One row: row [vocab]. NaN logits count as -inf. A row whose maximum is not
// finite (all -inf, or a +inf) is chosen greedily: its weights would be NaN.
int32_t select_token(const float* row, int64_t vocab, float temperature, int32_t top_k, float top_p,
                     float uniform) {
  std::vector<float> logits(row, row + vocab);
  for (float& x : logits)
    if (std::isnan(x)) x = -INFINITY;
  int64_t best = 0;  // the first index of the maximum
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  if (!(temperature > 0.0f) || !std::isfinite(logits[best])) return int32_t(best);

  // Candidates in (logit desc, index asc) order, cut to top_k.
  std::vector<int32_t> order(size_t(vocab), 0);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
  const int64_t k = top_k <= 0 || top_k >= vocab ? vocab : top_k;

  // w_i = exp((logit_i - max) / T); cut to the shortest prefix whose mass reaches top_p · Σw.
  std::vector<double> w(size_t(vocab), 0.0);
  double sum = 0;
  for (int64_t j = 0; j < k; ++j) {
    const int32_t i = order[size_t(j)];
    w[size_t(i)] = std::exp((double(logits[i]) - double(logits[best])) / double(temperature));
    sum += w[size_t(i)];
  }
  int64_t keep = k;
  if (top_p < 1.0f) {
    const double target = double(top_p) * sum;
    double mass = 0;
    for (int64_t j = 0; j < k; ++j) {
      mass += w[size_t(order[size_t(j)])];
      if (mass >= target) {
        keep = j + 1;
        break;
      }
    }
  }
  std::vector<bool> kept(size_t(vocab), false);
  for (int64_t j = 0; j < keep; ++j) kept[size_t(order[size_t(j)])] = true;

  // The kept tokens in vocabulary order: the first whose running sum exceeds u · Σ_kept w.
  double total = 0;
  for (int64_t i = 0; i < vocab; ++i)
    if (kept[size_t(i)]) total += w[size_t(i)];
  const double threshold = double(uniform) * total;
  double running = 0;
  int64_t last = best;
  for (int64_t i = 0; i < vocab; ++i) {
    if (!kept[size_t(i)]) continue;
    running += w[size_t(i)];
    last = i;
    if (running > threshold) return int32_t(i);
  }
  return int32_t(last);  // rounding left none: the last kept token
}

}  // namespace

Tensor CpuBackend::sample(const Tensor& logits, const SamplingPlan& plan) {
  if (logits.device != Device::cpu || logits.dtype != DType::f32 || logits.ndim != 2 ||
      logits.cols() < 1 || (logits.numel() > 0 && logits.empty()))
    throw std::runtime_error(
        "cpu backend: sample: logits must be an (R, vocab ≥ 1) f32 tensor in "
        "host memory (got " +
        logits.shape_str() + " " + std::string(dtype_name(logits.dtype)) + " on " +
        device_name(logits.device) + ")");
  const int64_t rows = logits.rows(), vocab = logits.cols();
  require(plan.temperature, DType::f32, rows, "temperature");
  require(plan.top_k, DType::i32, rows, "top_k");
  require(plan.top_p, DType::f32, rows, "top_p");
  require(plan.uniform, DType::f32, rows, "uniform");
  Tensor out = host_alloc(DType::i32, {rows});
  pool_.parallel_for(rows, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      out.ptr<int32_t>()[r] = select_token(
          logits.ptr<float>() + r * vocab, vocab, plan.temperature.ptr<float>()[r],
          plan.top_k.ptr<int32_t>()[r], plan.top_p.ptr<float>()[r], plan.uniform.ptr<float>()[r]);
  });
  return out;
}

}  // namespace philora
