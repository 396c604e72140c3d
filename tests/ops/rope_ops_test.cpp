// rope_and_cache: rotary embedding of q and k in place, then k and v written
// into the paged cache at each token's KV location. HF semantics:
//   angle_i = f32(f32(position) · inv_freq[i])   (inv_freq_long when rope_long)
//   c_i = cos(angle_i) · attention_factor,  s_i = sin(angle_i) · attention_factor
//   rotate-half over the first rotary_dim dims of every q and k head:
//     x1 = x[:r/2], x2 = x[r/2:r];  x1' = x1 c − x2 s;  x2' = x2 c + x1 s
//   the other dims of each head, and all of v, pass through unchanged.
#include <fmt/format.h>

#include <cmath>

#include "ops/harness.h"
#include "ops/paged.h"

namespace philora::optest {
namespace {

struct RopeShape {
  int64_t n_heads, n_kv_heads, head_dim, rotary_dim;
  float theta;
  bool longrope;  // distinct short/long inv_freq, per-token rope_long, attention_factor ≠ 1
  int64_t page_size;
  std::vector<SeqSpec> seqs;
};

class RopeAndCache : public OpCase {
 public:
  explicit RopeAndCache(RopeShape s) : s_(std::move(s)) {}
  std::string name() const override {
    return fmt::format("rope_and_cache(H={} Hkv={} d={} rotary={} theta={:g} {} page={} seqs={})",
                       s_.n_heads, s_.n_kv_heads, s_.head_dim, s_.rotary_dim, s_.theta,
                       s_.longrope ? "longrope" : "default", s_.page_size, seqs_str(s_.seqs));
  }

  void init(Rng& rng) override {
    kv_ = PagedBatch::make(s_.seqs, s_.page_size, 2, rng);
    qkv_ = rng.bf16(kv_.tokens() * width(), -1, 1);
    const int64_t half = s_.rotary_dim / 2;
    inv_short_.clear();
    inv_long_.clear();
    for (int64_t i = 0; i < half; ++i) {  // as HF computes them, in f32
      const float power = std::pow(s_.theta, float(2 * i) / float(s_.rotary_dim));
      const float short_f = s_.longrope ? float(rng.uniform(1.0, 1.5)) : 1.0f;
      const float long_f = s_.longrope ? float(rng.uniform(1.0, 40.0)) : 1.0f;
      inv_short_.push_back(1.0f / (short_f * power));
      inv_long_.push_back(1.0f / (long_f * power));
    }
    // sqrt(1 + ln(s) / ln(orig)) for a 4k model stretched to 128k.
    attention_factor_ =
        s_.longrope ? float(std::sqrt(1.0 + std::log(32.0) / std::log(4096.0))) : 1.0f;
    rope_long_.clear();
    for (size_t s = 0; s < s_.seqs.size(); ++s)  // per sequence, mixed in the batch
      rope_long_.insert(rope_long_.end(), size_t(s_.seqs[s].q_len), s % 2 == 0 ? 1 : 0);
  }

  std::vector<Output> run(Backend& b) const override {
    Tensor qkv = upload(b, qkv_, {kv_.tokens(), width()});
    TokenPlan tokens;
    tokens.token_ids = b.upload_i32(std::vector<int32_t>(size_t(kv_.tokens()), 0));
    tokens.positions = b.upload_i32(kv_.positions);
    tokens.kv_locs = b.upload_i32(kv_.kv_locs);
    tokens.rope_long = b.upload_i32(rope_long_);
    RopeParams rope;
    rope.inv_freq_short = b.upload_f32(inv_short_);
    rope.inv_freq_long = b.upload_f32(inv_long_);
    rope.attention_factor = attention_factor_;
    rope.rotary_dim = s_.rotary_dim;
    rope.n_heads = s_.n_heads;
    rope.n_kv_heads = s_.n_kv_heads;
    rope.head_dim = s_.head_dim;
    // Every page poisoned: only this step's KV locations may be written.
    const std::vector<float> poison(size_t(pool_rows() * kv_width()), NAN);
    const std::vector<int64_t> pool_shape = {kv_.num_pages, s_.n_kv_heads, kv_.page_size,
                                             s_.head_dim};
    KvLayer kv{upload(b, poison, pool_shape), upload(b, poison, pool_shape)};
    b.rope_and_cache(qkv, tokens, rope, kv);
    return {fetch(b, "qkv", qkv), fetch(b, "k_cache", kv.k), fetch(b, "v_cache", kv.v)};
  }

  std::vector<Expect> reference() const override {
    const int64_t T = kv_.tokens(), d = s_.head_dim, half = s_.rotary_dim / 2;
    const int64_t q_size = s_.n_heads * d, kv_size = kv_width();
    Expect qkv{"qkv", width(), std::vector<double>(qkv_.begin(), qkv_.end()),
               std::vector<Role>(qkv_.size(), Role::keep)};  // pass-through unless rotated below
    Expect k{"k_cache", kv_size, std::vector<double>(size_t(pool_rows() * kv_size), NAN),
             std::vector<Role>(size_t(pool_rows() * kv_size), Role::keep)};
    Expect v = k;
    v.name = "v_cache";
    for (int64_t t = 0; t < T; ++t) {
      const std::vector<float>& inv = rope_long_[size_t(t)] ? inv_long_ : inv_short_;
      const float* x = &qkv_[size_t(t * width())];
      double* y = &qkv.want[size_t(t * width())];
      for (int64_t h = 0; h < s_.n_heads + s_.n_kv_heads; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const float angle = float(kv_.positions[size_t(t)]) * inv[size_t(i)];
          const double c = std::cos(double(angle)) * attention_factor_;
          const double s = std::sin(double(angle)) * attention_factor_;
          const int64_t i1 = h * d + i, i2 = h * d + half + i;
          y[i1] = double(x[i1]) * c - double(x[i2]) * s;
          y[i2] = double(x[i2]) * c + double(x[i1]) * s;
          qkv.role[size_t(t * width() + i1)] = Role::value;
          qkv.role[size_t(t * width() + i2)] = Role::value;
        }
      const int64_t loc = kv_.kv_locs[size_t(t)];
      for (int64_t i = 0; i < kv_size; ++i) {  // HND pages: head i / d of the location's page
        const size_t at = size_t(kv_offset(loc, i / d, s_.n_kv_heads, kv_.page_size, d) + i % d);
        k.want[at] = y[q_size + i];
        k.role[at] = Role::value;
        v.want[at] = x[q_size + kv_size + i];
        v.role[at] = Role::value;
      }
    }
    return {qkv, k, v};
  }

 private:
  int64_t width() const { return (s_.n_heads + 2 * s_.n_kv_heads) * s_.head_dim; }
  int64_t kv_width() const { return s_.n_kv_heads * s_.head_dim; }
  int64_t pool_rows() const { return kv_.num_pages * kv_.page_size; }

  RopeShape s_;
  PagedBatch kv_;
  std::vector<float> qkv_;                   // (T, (H + 2 Hkv) · d)
  std::vector<float> inv_short_, inv_long_;  // [rotary_dim / 2] f32
  float attention_factor_ = 1.0f;
  std::vector<int32_t> rope_long_;  // [T]
};

std::vector<CaseFactory> rope_cases() {
  return {
      // one prefill, group 1, last page partly full
      make_case<RopeAndCache>(RopeShape{4, 4, 64, 64, 10000.0f, false, 16, {{0, 7}}}),
      // mixed batch: prefill, chunk after a cached prefix, decodes, positions past 4k
      make_case<RopeAndCache>(RopeShape{
          8, 2, 96, 96, 10000.0f, true, 16, {{0, 19}, {5, 3}, {40, 1}, {4090, 3}, {0, 1}}}),
      // partial rotary (0.5), MQA, a long prefill
      make_case<RopeAndCache>(RopeShape{4, 1, 128, 64, 500000.0f, true, 16, {{0, 733}, {2000, 1}}}),
      // tiny head, partial rotary (0.75), one decode token
      make_case<RopeAndCache>(RopeShape{4, 2, 16, 12, 10000.0f, false, 8, {{9, 1}}}),
      // Phi-4-mini-like: GQA 3, rotary 0.75, LongRoPE
      make_case<RopeAndCache>(
          RopeShape{24, 8, 128, 96, 10000.0f, true, 16, {{0, 3}, {100, 1}, {517, 1}}}),
      // Phi-3-mini-like
      make_case<RopeAndCache>(RopeShape{32, 32, 96, 96, 10000.0f, false, 16, {{0, 19}, {12, 1}}}),
      // decode at batch 1 and 3, Phi-3-mini and Phi-4-mini-like: a token's pieces over several blocks
      make_case<RopeAndCache>(RopeShape{32, 32, 96, 96, 10000.0f, false, 16, {{511, 1}}}),
      make_case<RopeAndCache>(
          RopeShape{24, 8, 128, 96, 10000.0f, true, 16, {{4095, 1}, {7, 1}, {300, 1}}}),
  };
}

PHILORA_OP_CASES(Rope, rope_cases());

}  // namespace
}  // namespace philora::optest
