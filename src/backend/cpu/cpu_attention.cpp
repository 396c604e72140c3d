// RoPE + paged KV write, and paged attention: the reference semantics.
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"

namespace philora {

// Rotate-half RoPE on the first rotary_dim dims of one head vector:
//   x1 = x[:r/2], x2 = x[r/2:r];  x1' = x1 c - x2 s;  x2' = x2 c + x1 s.
static void rotate(float* x, const float* cos, const float* sin, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i] + a * sin[i];
  }
}

void CpuBackend::rope_and_cache(Tensor& qkv, const TokenPlan& tokens, const RopeParams& rope,
                                KvLayer& kv) {
  const int64_t n = qkv.rows(), d = rope.head_dim, half = rope.rotary_dim / 2;
  const int64_t q_size = rope.n_heads * d, kv_size = rope.n_kv_heads * d, width = qkv.cols();
  pool_.parallel_for(n, [&](int64_t b, int64_t e) {
    std::vector<float> cos(static_cast<size_t>(half)), sin(static_cast<size_t>(half));
    for (int64_t t = b; t < e; ++t) {
      const float pos = float(tokens.positions.ptr<int32_t>()[t]);
      const bool long_rope = tokens.rope_long.ptr<int32_t>()[t] != 0;
      const float* inv = (long_rope ? rope.inv_freq_long : rope.inv_freq_short).ptr<float>();
      for (int64_t i = 0; i < half; ++i) {
        const float angle = pos * inv[i];  // f32 product, as HF computes it
        cos[size_t(i)] = float(std::cos(double(angle))) * rope.attention_factor;
        sin[size_t(i)] = float(std::sin(double(angle))) * rope.attention_factor;
      }
      float* row = qkv.ptr<float>() + t * width;
      for (int64_t h = 0; h < rope.n_heads + rope.n_kv_heads; ++h)
        rotate(row + h * d, cos.data(), sin.data(), half);
      const int64_t loc = tokens.kv_locs.ptr<int32_t>()[t];
      for (int64_t h = 0; h < rope.n_kv_heads; ++h) {
        const int64_t at = kv_offset(loc, h, rope.n_kv_heads, kv.page_size(), d);
        std::copy_n(row + q_size + h * d, d, kv.k.ptr<float>() + at);
        std::copy_n(row + q_size + kv_size + h * d, d, kv.v.ptr<float>() + at);
      }
    }
  });
}

Tensor CpuBackend::attention(const Tensor& qkv, const KvLayer& kv, const AttentionPlan& plan,
                             const RopeParams& shape) {
  const int64_t n = qkv.rows(), d = shape.head_dim, H = shape.n_heads, Hkv = shape.n_kv_heads;
  const int64_t group = H / Hkv, width = qkv.cols(), page = kv.page_size();
  Tensor out = host_alloc(DType::f32, {n, H * d});
  const auto* q_indptr = plan.q_indptr.ptr<int32_t>();
  const auto* kv_indptr = plan.kv_indptr.ptr<int32_t>();
  const auto* kv_indices = plan.kv_indices.ptr<int32_t>();
  const auto* last_len = plan.kv_last_page_len.ptr<int32_t>();
  const auto* positions = plan.positions.ptr<int32_t>();

  // Which sequence each query row belongs to.
  std::vector<int32_t> seq_of(static_cast<size_t>(n));
  for (int64_t s = 0; s < plan.num_seqs; ++s)
    for (int32_t t = q_indptr[s]; t < q_indptr[s + 1]; ++t) seq_of[size_t(t)] = int32_t(s);

  pool_.parallel_for(n * H, [&](int64_t b, int64_t e) {
    std::vector<float> scores;
    std::vector<double> acc(static_cast<size_t>(d));
    for (int64_t item = b; item < e; ++item) {
      const int64_t t = item / H, h = item % H, kvh = h / group;
      const int64_t s = seq_of[size_t(t)];
      const int64_t pages = kv_indptr[s + 1] - kv_indptr[s];
      const int64_t kv_len = pages == 0 ? 0 : (pages - 1) * page + last_len[s];
      const int64_t p = positions[t];
      const int64_t hi = std::min<int64_t>(p, kv_len - 1);
      const int64_t lo = plan.window > 0 ? std::max<int64_t>(0, p - plan.window + 1) : 0;
      const float* q = qkv.ptr<float>() + t * width + h * d;
      auto key_row = [&](const Tensor& pool, int64_t j) {
        const int64_t page_id = kv_indices[kv_indptr[s] + j / page];
        return pool.ptr<float>() + kv_offset(page_id * page + j % page, kvh, Hkv, page, d);
      };
      scores.assign(size_t(std::max<int64_t>(0, hi - lo + 1)), 0.0f);
      double max_score = -INFINITY;
      for (int64_t j = lo; j <= hi; ++j) {
        const float* k = key_row(kv.k, j);
        double dot = 0;
        for (int64_t i = 0; i < d; ++i) dot += double(q[i]) * double(k[i]);
        scores[size_t(j - lo)] = float(dot * plan.scale);
        max_score = std::max(max_score, double(scores[size_t(j - lo)]));
      }
      double denom = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = lo; j <= hi; ++j) {
        const double w = std::exp(double(scores[size_t(j - lo)]) - max_score);
        denom += w;
        const float* v = key_row(kv.v, j);
        for (int64_t i = 0; i < d; ++i) acc[size_t(i)] += w * double(v[i]);
      }
      float* o = out.ptr<float>() + t * H * d + h * d;
      for (int64_t i = 0; i < d; ++i) o[i] = denom > 0 ? float(acc[size_t(i)] / denom) : 0.0f;
    }
  });
  return out;
}

}  // namespace philora
