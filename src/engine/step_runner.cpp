#include "engine/step_runner.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <stdexcept>

namespace philora::engine {

namespace {

constexpr int64_t kMinContextBucket = 512;
constexpr int64_t kMaxContextBucket = int64_t(1) << 17;

// A 1-d view of `n` elements of `dtype` at element offset `at` of `base`
// (every element of base is 4 bytes).
Tensor view(const Tensor& base, DType dtype, int64_t at, int64_t n) {
  Tensor t = base;
  t.data = static_cast<char*>(base.data) + at * 4;
  t.dtype = dtype;
  t.ndim = 1;
  t.shape = {n, 0, 0, 0};
  return t;
}

int64_t context_bucket(int64_t kv_len) {
  int64_t b = kMinContextBucket;
  while (b < kv_len) b *= 2;
  return b;
}

}  // namespace

SampleRow sample_row(const SamplingParams& p, std::mt19937_64& rng) {
  SampleRow r;
  if (p.greedy || p.temperature <= 0.0f) return r;
  r.temperature = p.temperature;
  r.top_k = int32_t(std::clamp<int64_t>(p.top_k, 0, INT32_MAX));
  r.top_p = p.top_p;
  r.uniform = draw_uniform(rng);  // as the host rule draws: one seed, one sequence
  return r;
}

const std::vector<int64_t>& StepRunner::batch_buckets() {
  static const std::vector<int64_t> buckets = {1,  2,  4,   8,   16,  32,  48,
                                               64, 96, 128, 160, 192, 224, 256};
  return buckets;
}

SamplingPlan stage_sampling(Backend& b, const std::vector<SampleRow>& rows) {
  std::vector<float> temperature, top_p, uniform;
  std::vector<int32_t> top_k;
  for (const SampleRow& r : rows) {
    temperature.push_back(r.temperature);
    top_k.push_back(r.top_k);
    top_p.push_back(r.top_p);
    uniform.push_back(r.uniform);
  }
  return {b.upload_f32(temperature), b.upload_i32(top_k), b.upload_f32(top_p),
          b.upload_f32(uniform)};
}

// One recorded decode step. Its inputs live in two tensors at fixed addresses:
//   ints   token_ids | positions | kv_locs | rope_long | lora_slot | top_k |
//          kv_last_page_len (B each) | q_indptr | kv_indptr (B + 1 each) |
//          kv_indices (B · pages)
//   floats temperature | top_p | uniform (B each)
struct StepRunner::Graph {
  int64_t batch = 0, pages = 0;  // pages: per sequence, at most
  Tensor ints, floats;
  model::StepInputs in;
  SamplingPlan sampling;
  Tensor ids;  // [batch] i32: the replay's tokens
  std::unique_ptr<StepGraph> graph;
  std::vector<int32_t> host_ints;
  std::vector<float> host_floats;

  int64_t kv_indices_at() const { return 9 * batch + 2; }
};

StepRunner::StepRunner(model::Phi3ForCausalLM& model, kv::KvCache& kv,
                       const lora::AdapterSlots* adapters, bool use_graphs)
    : model_(model), kv_(kv), adapters_(adapters), use_graphs_(use_graphs) {
  if (use_graphs_ && model_.backend().can_capture()) {
    if (auto page = kv_.pages.allocate()) pad_page_ = *page;
  }
  if (pad_page_ < 0) use_graphs_ = false;
}

StepRunner::~StepRunner() {
  graphs_.clear();
  if (pad_page_ >= 0) kv_.pages.release(pad_page_);
}

StepResult StepRunner::run(const StepPlan& plan, const std::vector<SampleRow>& rows) {
  if (!rows.empty() && rows.size() != plan.logit_rows.size())
    throw std::logic_error("StepRunner::run: no sampling row, or one per logit row");
  if (graphable(plan, rows)) return {run_graph(plan, rows), Tensor()};
  return run_eager(plan, rows);
}

using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

StepResult StepRunner::run_eager(const StepPlan& plan, const std::vector<SampleRow>& rows) {
  const auto t0 = Clock::now();
  Backend& b = model_.backend();
  model::StepInputs in = stage(b, plan, model_.config(), adapters_);
  Tensor logits = model_.forward(in, kv_, adapters_);
  ++stats_.eager_steps;
  Tensor ids;
  if (!rows.empty()) ids = b.sample(logits, stage_sampling(b, rows));
  stats_.host_seconds += seconds_since(t0);
  StepResult r;
  if (plan.host_logits) r.logits = b.to_host_f32(logits);
  if (!rows.empty()) r.tokens = b.download_i32(ids);
  return r;
}

bool StepRunner::graphable(const StepPlan& plan, const std::vector<SampleRow>& rows) const {
  const size_t n = plan.kv_last_page_len.size();
  if (!use_graphs_ || n == 0 || int64_t(n) > batch_buckets().back()) return false;
  if (plan.host_logits || rows.size() != n) return false;
  if (plan.max_q_len != 1 || plan.token_ids.size() != n || plan.logit_rows.size() != n)
    return false;
  if (plan.max_kv_len > kMaxContextBucket) return false;
  for (size_t i = 0; i < n; ++i)
    if (plan.logit_rows[i] != int32_t(i)) return false;
  return true;
}

std::unique_ptr<StepRunner::Graph> StepRunner::record(const Key& key, bool lora) {
  Backend& b = model_.backend();
  const model::Phi3Config& c = model_.config();
  auto g = std::make_unique<Graph>();
  const int64_t B = std::get<0>(key), context = std::get<1>(key);
  g->batch = B;
  g->pages = (context + kv_.page_size - 1) / kv_.page_size;
  g->host_ints.assign(size_t(g->kv_indices_at() + B * g->pages), 0);
  g->host_floats.assign(size_t(3 * B), 0.0f);
  g->ints = b.upload_i32(g->host_ints);
  g->floats = b.upload_f32(g->host_floats);

  model::StepInputs& in = g->in;
  in.tokens.token_ids = view(g->ints, DType::i32, 0, B);
  in.tokens.positions = view(g->ints, DType::i32, B, B);
  in.tokens.kv_locs = view(g->ints, DType::i32, 2 * B, B);
  in.tokens.rope_long = view(g->ints, DType::i32, 3 * B, B);
  AttentionPlan& a = in.attention;
  a.kv_last_page_len = view(g->ints, DType::i32, 6 * B, B);
  a.q_indptr = view(g->ints, DType::i32, 7 * B, B + 1);
  a.kv_indptr = view(g->ints, DType::i32, 8 * B + 1, B + 1);
  a.kv_indices = view(g->ints, DType::i32, g->kv_indices_at(), B * g->pages);
  a.positions = in.tokens.positions;
  a.num_seqs = B;
  a.max_q_len = 1;
  a.max_kv_len = context;
  a.window = c.sliding_window.value_or(0);
  a.scale = float(1.0 / std::sqrt(double(c.head_dim)));
  if (lora) {
    in.lora.active = true;
    // One segment per row (their bounds are q_indptr's 0..B): the contract's
    // two forms, and kernels that stay per token, as decode wants.
    in.lora.token_slot = view(g->ints, DType::i32, 4 * B, B);
    in.lora.seg_slot = in.lora.token_slot;
    in.lora.seg_indptr = a.q_indptr;
    in.lora.num_segments = B;
    in.lora.max_rank = adapters_->max_rank();
    in.lora_logits = in.lora;
    in.lora.lora_columns = std::get<4>(key);  // lm_head has none
  }
  in.all_rows = true;
  g->sampling.top_k = view(g->ints, DType::i32, 5 * B, B);
  g->sampling.temperature = view(g->floats, DType::f32, 0, B);
  g->sampling.top_p = view(g->floats, DType::f32, B, B);
  g->sampling.uniform = view(g->floats, DType::f32, 2 * B, B);

  // Record with every row padding (the warm-up run then only writes the pad page).
  Graph& gr = *g;
  auto fill_padding = [&] {
    std::vector<int32_t>& v = gr.host_ints;
    for (int64_t i = 0; i < B; ++i) {
      v[size_t(2 * B + i)] = pad_page_ * int32_t(kv_.page_size);
      v[size_t(4 * B + i)] = -1;
      v[size_t(6 * B + i)] = 1;
      v[size_t(7 * B + i)] = int32_t(i);
      v[size_t(8 * B + 1 + i)] = int32_t(i);
      v[size_t(gr.kv_indices_at() + i)] = pad_page_;
    }
    v[size_t(8 * B)] = int32_t(B);
    v[size_t(9 * B + 1)] = int32_t(B);
  };
  fill_padding();
  b.upload_into(g->ints, g->host_ints.data(), g->host_ints.size() * 4);
  b.upload_into(g->floats, g->host_floats.data(), g->host_floats.size() * 4);
  // The body may be kept and rerun (a backend's replay): it captures by value.
  const lora::AdapterSlots* adapters = lora ? adapters_ : nullptr;
  g->graph = b.capture([this, graph = g.get(), adapters, backend = &b] {
    Tensor logits = model_.forward(graph->in, kv_, adapters);
    graph->ids = backend->sample(logits, graph->sampling);
  });
  if (!g->graph) return nullptr;
  ++stats_.captures;
  return g;
}

std::vector<int32_t> StepRunner::run_graph(const StepPlan& plan,
                                           const std::vector<SampleRow>& rows) {
  const int64_t n = int64_t(plan.kv_last_page_len.size());
  const int64_t B = *std::lower_bound(batch_buckets().begin(), batch_buckets().end(), n);
  const bool lora = adapters_ && std::any_of(plan.lora_slot.begin(), plan.lora_slot.end(),
                                             [](int32_t s) { return s >= 0; });
  const Key key{B, context_bucket(plan.max_kv_len), lora ? adapters_->layout_version() : 0,
                lora ? adapters_->max_rank() : -1,
                lora ? step_lora_columns(adapters_, plan.lora_slot) : 0};
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    if (lora)  // graphs of an older adapter layout can never replay again
      std::erase_if(graphs_, [&](const auto& entry) {
        const bool with_lora = std::get<3>(entry.first) >= 0;
        return with_lora && std::get<2>(entry.first) != adapters_->layout_version();
      });
    std::unique_ptr<Graph> g = record(key, lora);
    if (!g) {
      use_graphs_ = false;
      return run_eager(plan, rows).tokens;
    }
    it = graphs_.emplace(key, std::move(g)).first;
  }
  Graph& g = *it->second;
  const auto t0 = Clock::now();

  // The step's inputs, padded to the bucket: padding rows decode token 0 at
  // position 0 into the pad page, greedily, and their tokens are dropped.
  std::vector<int32_t>& v = g.host_ints;
  const int32_t pad_loc = pad_page_ * int32_t(kv_.page_size);
  for (int64_t i = 0; i < B; ++i) {
    const bool real = i < n;
    const size_t k = size_t(i);
    v[size_t(0 * B) + k] = real ? plan.token_ids[k] : 0;
    v[size_t(1 * B) + k] = real ? plan.positions[k] : 0;
    v[size_t(2 * B) + k] = real ? plan.kv_locs[k] : pad_loc;
    v[size_t(3 * B) + k] = real ? plan.rope_long[k] : 0;
    v[size_t(4 * B) + k] = real ? plan.lora_slot[k] : -1;
    v[size_t(5 * B) + k] = real ? rows[k].top_k : 0;
    v[size_t(6 * B) + k] = real ? plan.kv_last_page_len[k] : 1;
    v[size_t(7 * B) + k] = int32_t(i);
  }
  v[size_t(8 * B)] = int32_t(B);
  const int32_t real_pages = plan.kv_indptr[size_t(n)];
  for (int64_t i = 0; i <= B; ++i)
    v[size_t(8 * B + 1 + i)] = i <= n ? plan.kv_indptr[size_t(i)] : real_pages + int32_t(i - n);
  std::copy(plan.kv_indices.begin(), plan.kv_indices.end(), v.begin() + g.kv_indices_at());
  std::fill_n(v.begin() + g.kv_indices_at() + real_pages, B - n, pad_page_);
  std::vector<float>& f = g.host_floats;
  for (int64_t i = 0; i < B; ++i) {
    const bool real = i < n;
    f[size_t(i)] = real ? rows[size_t(i)].temperature : 0.0f;
    f[size_t(B + i)] = real ? rows[size_t(i)].top_p : 1.0f;
    f[size_t(2 * B + i)] = real ? rows[size_t(i)].uniform : 0.0f;
  }
  Backend& b = model_.backend();
  const size_t used = size_t(g.kv_indices_at() + real_pages + (B - n));
  b.upload_into(g.ints, v.data(), used * 4);
  b.upload_into(g.floats, f.data(), f.size() * 4);
  g.graph->replay();
  ++stats_.graph_steps;
  stats_.host_seconds += seconds_since(t0);
  std::vector<int32_t> ids = b.download_i32(g.ids);
  ids.resize(size_t(n));
  return ids;
}

}  // namespace philora::engine
