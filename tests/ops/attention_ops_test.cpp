// attention: the q part of qkv over the paged KV cache, per sequence.
//   query row t of sequence s, at position p, head h (kv head g = h / (H / Hkv)):
//     keys j of s with  max(0, p − W + 1) ≤ j ≤ p   (W = window, 0 = unlimited)
//     out[t, h] = Σ_j softmax_j(scale · q·K[j, g]) · V[j, g]
// The oracle reads each sequence's K and V from its own arrays, not from the
// pages, so the page mapping is checked too.
#include <fmt/format.h>

#include <cmath>

#include "ops/harness.h"
#include "ops/paged.h"

namespace philora::optest {
namespace {

struct AttentionShape {
  int64_t n_heads, n_kv_heads, head_dim;
  int64_t page_size;
  int64_t window;     // 0 = none
  double scale_mult;  // scale = scale_mult / sqrt(head_dim)
  std::vector<SeqSpec> seqs;
};

class Attention : public OpCase {
 public:
  explicit Attention(AttentionShape s) : s_(std::move(s)) {}
  std::string name() const override {
    return fmt::format("attention(H={} Hkv={} d={} page={} window={} scale={:g}/sqrt(d) seqs={})",
                       s_.n_heads, s_.n_kv_heads, s_.head_dim, s_.page_size, s_.window,
                       s_.scale_mult, seqs_str(s_.seqs));
  }

  void init(Rng& rng) override {
    kv_ = PagedBatch::make(s_.seqs, s_.page_size, 3, rng);
    // q random; the k and v parts of qkv are NaN: attention reads K/V from the cache only.
    qkv_.assign(size_t(kv_.tokens() * width()), NAN);
    for (int64_t t = 0; t < kv_.tokens(); ++t)
      for (int64_t i = 0; i < s_.n_heads * s_.head_dim; ++i)
        qkv_[size_t(t * width() + i)] = round_bf16(rng.uniform(-2, 2));
    k_.clear();
    v_.clear();
    for (size_t s = 0; s < s_.seqs.size(); ++s) {
      k_.push_back(rng.bf16(kv_.kv_len(s) * kv_width(), -2, 2));
      v_.push_back(rng.bf16(kv_.kv_len(s) * kv_width(), -1, 1));
    }
  }

  std::vector<Output> run(Backend& b) const override {
    // Pools: NaN wherever no token of the batch lives (spare pages, the tail
    // of each last page), so a read past a sequence's KV shows.
    std::vector<float> k_pool(size_t(kv_.num_pages * kv_.page_size * kv_width()), NAN);
    std::vector<float> v_pool = k_pool;
    for (size_t s = 0; s < s_.seqs.size(); ++s)
      for (int64_t j = 0; j < kv_.kv_len(s); ++j)
        for (int64_t i = 0; i < kv_width(); ++i) {
          const int64_t d = s_.head_dim;
          const size_t at =
              size_t(kv_offset(kv_.loc(s, j), i / d, s_.n_kv_heads, kv_.page_size, d) + i % d);
          k_pool[at] = k_[s][size_t(j * kv_width() + i)];
          v_pool[at] = v_[s][size_t(j * kv_width() + i)];
        }
    const std::vector<int64_t> pool_shape = {kv_.num_pages, s_.n_kv_heads, kv_.page_size,
                                             s_.head_dim};
    const KvLayer kv{upload(b, k_pool, pool_shape), upload(b, v_pool, pool_shape)};
    const Tensor qkv = upload(b, qkv_, {kv_.tokens(), width()});
    AttentionPlan plan;
    plan.q_indptr = b.upload_i32(kv_.q_indptr);
    plan.kv_indptr = b.upload_i32(kv_.kv_indptr);
    plan.kv_indices = b.upload_i32(kv_.kv_indices);
    plan.kv_last_page_len = b.upload_i32(kv_.kv_last_page_len);
    plan.positions = b.upload_i32(kv_.positions);
    plan.num_seqs = int64_t(s_.seqs.size());
    plan.max_q_len = kv_.max_q_len;
    plan.max_kv_len = kv_.max_kv_len;
    plan.window = s_.window;
    plan.scale = scale();
    RopeParams shape;
    shape.n_heads = s_.n_heads;
    shape.n_kv_heads = s_.n_kv_heads;
    shape.head_dim = s_.head_dim;
    shape.rotary_dim = s_.head_dim;
    return {fetch(b, "out", b.attention(qkv, kv, plan, shape))};
  }

  std::vector<Expect> reference() const override {
    const int64_t H = s_.n_heads, d = s_.head_dim, group = H / s_.n_kv_heads;
    std::vector<double> out(size_t(kv_.tokens() * H * d));
    for (size_t s = 0; s < s_.seqs.size(); ++s) {
      for (int64_t t = kv_.q_indptr[s]; t < kv_.q_indptr[s + 1]; ++t) {
        const int64_t p = s_.seqs[s].cached + (t - kv_.q_indptr[s]);
        const int64_t first = s_.window > 0 ? std::max<int64_t>(0, p - s_.window + 1) : 0;
        for (int64_t h = 0; h < H; ++h) {
          const int64_t g = h / group;
          const float* q = &qkv_[size_t(t * width() + h * d)];
          std::vector<double> score;
          for (int64_t j = first; j <= p; ++j) {
            const float* k = &k_[s][size_t(j * kv_width() + g * d)];
            double dot = 0;
            for (int64_t i = 0; i < d; ++i) dot += double(q[i]) * double(k[i]);
            score.push_back(double(scale()) * dot);
          }
          const double max = *std::max_element(score.begin(), score.end());
          double denom = 0;
          for (double& x : score) denom += (x = std::exp(x - max));
          for (int64_t j = first; j <= p; ++j) {
            const float* v = &v_[s][size_t(j * kv_width() + g * d)];
            for (int64_t i = 0; i < d; ++i)
              out[size_t(t * H * d + h * d + i)] += score[size_t(j - first)] / denom * double(v[i]);
          }
        }
      }
    }
    return {{"out", H * d, out}};
  }

 private:
  int64_t width() const { return (s_.n_heads + 2 * s_.n_kv_heads) * s_.head_dim; }
  int64_t kv_width() const { return s_.n_kv_heads * s_.head_dim; }
  float scale() const { return float(s_.scale_mult / std::sqrt(double(s_.head_dim))); }

  AttentionShape s_;
  PagedBatch kv_;
  std::vector<float> qkv_;                 // (T, (H + 2 Hkv) · d), k and v parts NaN
  std::vector<std::vector<float>> k_, v_;  // [S] (kv_len, Hkv · d) each
};

std::vector<CaseFactory> attention_cases() {
  // 72 decode rows x 4 kv heads fill two waves of a 132-SM GPU without splitting,
  // so the decode kernel takes each row's 600 keys in one block (no merge pass).
  const std::vector<SeqSpec> full_grid(72, SeqSpec{600, 1});
  return {
      // one prefill, group 1, last page partly full
      make_case<Attention>(AttentionShape{4, 4, 64, 16, 0, 1.0, {{0, 7}}}),
      // mixed batch, GQA 4: prefill, chunks after cached prefixes, decodes, a full last page
      make_case<Attention>(AttentionShape{
          8, 2, 96, 16, 0, 1.0, {{0, 19}, {5, 3}, {40, 1}, {0, 1}, {31, 2}, {47, 1}}}),
      // MQA decode (group 8); scale not 1/sqrt(d)
      make_case<Attention>(
          AttentionShape{8, 1, 128, 16, 0, 0.7, {{17, 1}, {100, 1}, {3, 1}, {64, 1}}}),
      // sliding window shorter than the sequences, tiny head, pages of 8
      make_case<Attention>(AttentionShape{4, 2, 16, 8, 5, 1.0, {{0, 19}, {10, 7}, {30, 1}}}),
      // a long prefill, MQA (group 4)
      make_case<Attention>(AttentionShape{4, 1, 128, 16, 0, 1.0, {{0, 733}}}),
      // window over cached prefixes, GQA 4, chunked prefill and decodes
      make_case<Attention>(
          AttentionShape{16, 4, 128, 16, 100, 1.0, {{300, 33}, {0, 1}, {150, 1}, {90, 3}}}),
      // long decodes (split-KV territory) next to a chunk, pages of 32
      make_case<Attention>(AttentionShape{12, 3, 96, 32, 0, 1.0, {{250, 3}, {1000, 1}, {2047, 1}}}),
      // Phi-3-mini-like: 32 heads, group 1, window 2047
      make_case<Attention>(AttentionShape{32, 32, 96, 16, 2047, 1.0, {{0, 3}, {12, 1}, {0, 19}}}),
      // decode-only batches (the decode kernel alone), one per head dim and GQA group
      // it specialises: pages partly full, a first token, contexts split over blocks
      make_case<Attention>(AttentionShape{8, 8, 64, 16, 0, 1.0, {{5, 1}, {16, 1}, {0, 1}, {33, 1}}}),
      make_case<Attention>(AttentionShape{32, 32, 96, 16, 0, 1.0, {{1023, 1}, {511, 1}, {64, 1}, {2000, 1}}}),
      make_case<Attention>(AttentionShape{8, 4, 96, 16, 0, 0.8, {{700, 1}, {15, 1}, {1, 1}}}),
      make_case<Attention>(AttentionShape{24, 8, 128, 16, 0, 1.0, {{130, 1}, {31, 1}, {1000, 1}}}),
      make_case<Attention>(AttentionShape{16, 4, 128, 32, 300, 1.0, {{1200, 1}, {5, 1}, {299, 1}}}),
      make_case<Attention>(AttentionShape{12, 4, 64, 8, 0, 1.0, {{77, 1}, {8, 1}}}),
      make_case<Attention>(AttentionShape{8, 2, 96, 16, 0, 1.0, {{300, 1}, {2, 1}}}),
      make_case<Attention>(AttentionShape{4, 4, 64, 16, 0, 1.0, full_grid}),
      // prefills past one query block (128 rows on CUDA) and one key tile (64): several blocks
      // per sequence, a partial last block, chunks after cached prefixes that start mid-tile,
      // windows that start mid-tile, per head dim the prefill kernel specialises
      make_case<Attention>(AttentionShape{8, 2, 96, 16, 0, 1.0, {{0, 300}, {100, 170}, {0, 129}}}),
      make_case<Attention>(AttentionShape{4, 4, 64, 16, 50, 1.0, {{0, 260}, {37, 150}}}),
      make_case<Attention>(AttentionShape{8, 2, 128, 32, 70, 0.9, {{0, 200}, {65, 64}}}),
  };
}

PHILORA_OP_CASES(Attention, attention_cases());

}  // namespace
}  // namespace philora::optest
