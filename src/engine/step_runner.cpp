#include "engine/step_runner.h"

#include <algorithm>
#include <bit>
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

int64_t bias_entries(const std::vector<SampleRow>& rows);

// The rows per sequence a graph is recorded for: 1, 2, 3, 5, 9, 17, 33, 65
// (one more than a power of two: a sequence's last token and 2^i drafts), so
// that the adaptive draft limit meets few graphs and few new matmul shapes;
// prompt chunks take the same buckets.
int64_t rows_bucket(int64_t q) {
  int64_t b = 1;
  while (b < q) b = b == 1 ? 2 : 2 * b - 1;
  return b;
}

}  // namespace

SampleRow sample_row(const SamplingParams& p, std::mt19937_64& rng) {
  SampleRow r;
  if (p.greedy || p.temperature <= 0.0f) return r;
  r.temperature = p.temperature;
  r.top_k = int32_t(std::clamp<int64_t>(p.top_k, 0, INT32_MAX));
  r.top_p = p.top_p;
  r.min_p = p.min_p;
  r.typical_p = p.typical_p;
  r.uniform = draw_uniform(rng);  // as the host rule draws: one seed, one sequence
  return r;
}

const std::vector<int64_t>& StepRunner::batch_buckets() {
  static const std::vector<int64_t> buckets = {1,  2,  4,   8,   16,  32,  48,
                                               64, 96, 128, 160, 192, 224, 256};
  return buckets;
}

// ---- the sampler's inputs ---------------------------------------------------------

SamplingLayout SamplingLayout::make(int64_t rows, int64_t bias_capacity, int64_t ints_at,
                                    int64_t floats_at) {
  SamplingLayout l;
  l.rows = rows;
  l.bias_capacity = bias_capacity;
  int64_t i = ints_at;
  for (int64_t* at :
       {&l.top_k, &l.count_row, &l.logprobs, &l.logprob_kind, &l.target, &l.mask_row}) {
    *at = i;
    i += rows;
  }
  l.bias_indptr = i;
  l.bias_token = i + rows + 1;
  l.ints_end = l.bias_token + bias_capacity;
  int64_t f = floats_at;
  for (int64_t* at : {&l.temperature, &l.top_p, &l.min_p, &l.typical_p, &l.uniform, &l.repetition,
                      &l.frequency, &l.presence}) {
    *at = f;
    f += rows;
  }
  l.bias_value = f;
  l.floats_end = f + bias_capacity;
  return l;
}

void write_sampling(const SamplingLayout& l, const std::vector<SampleRow>& given,
                    std::vector<int32_t>& ints, std::vector<float>& floats) {
  const SampleRow padding;
  int32_t entries = 0;
  for (int64_t r = 0; r < l.rows; ++r) {
    const SampleRow& s = r < int64_t(given.size()) ? given[size_t(r)] : padding;
    const auto i = size_t(r);
    ints[size_t(l.top_k) + i] = s.top_k;
    ints[size_t(l.count_row) + i] = s.count_row;
    ints[size_t(l.logprobs) + i] = s.logprobs;
    ints[size_t(l.logprob_kind) + i] = s.logprob_kind;
    ints[size_t(l.target) + i] = s.target;
    ints[size_t(l.mask_row) + i] = s.mask;
    floats[size_t(l.temperature) + i] = s.temperature;
    floats[size_t(l.top_p) + i] = s.top_p;
    floats[size_t(l.min_p) + i] = s.min_p;
    floats[size_t(l.typical_p) + i] = s.typical_p;
    floats[size_t(l.uniform) + i] = s.uniform;
    floats[size_t(l.repetition) + i] = s.repetition_penalty;
    floats[size_t(l.frequency) + i] = s.frequency_penalty;
    floats[size_t(l.presence) + i] = s.presence_penalty;
    ints[size_t(l.bias_indptr) + i] = entries;
    if (entries + int64_t(s.bias.size()) > l.bias_capacity)
      throw std::logic_error("write_sampling: more bias entries than the layout holds");
    for (const auto& [token, value] : s.bias) {
      ints[size_t(l.bias_token + entries)] = token;
      floats[size_t(l.bias_value + entries)] = value;
      ++entries;
    }
  }
  ints[size_t(l.bias_indptr + l.rows)] = entries;
}

SamplingPlan sampling_views(const SamplingLayout& l, const Tensor& ints, const Tensor& floats,
                            const Tensor& counts, int64_t logprobs_width, const Tensor& mask) {
  SamplingPlan p;
  const int64_t R = l.rows;
  p.top_k = view(ints, DType::i32, l.top_k, R);
  p.count_row = view(ints, DType::i32, l.count_row, R);
  p.logprobs = view(ints, DType::i32, l.logprobs, R);
  p.logprob_kind = view(ints, DType::i32, l.logprob_kind, R);
  p.target = view(ints, DType::i32, l.target, R);
  p.bias_indptr = view(ints, DType::i32, l.bias_indptr, R + 1);
  p.bias_token = view(ints, DType::i32, l.bias_token, l.bias_capacity);
  p.temperature = view(floats, DType::f32, l.temperature, R);
  p.top_p = view(floats, DType::f32, l.top_p, R);
  p.min_p = view(floats, DType::f32, l.min_p, R);
  p.typical_p = view(floats, DType::f32, l.typical_p, R);
  p.uniform = view(floats, DType::f32, l.uniform, R);
  p.repetition_penalty = view(floats, DType::f32, l.repetition, R);
  p.frequency_penalty = view(floats, DType::f32, l.frequency, R);
  p.presence_penalty = view(floats, DType::f32, l.presence, R);
  p.bias_value = view(floats, DType::f32, l.bias_value, l.bias_capacity);
  p.counts = counts;
  p.logprobs_width = logprobs_width;
  if (!mask.empty()) {
    p.mask_row = view(ints, DType::i32, l.mask_row, R);
    p.mask = mask;
  }
  return p;
}

namespace {
int64_t bias_entries(const std::vector<SampleRow>& rows) {
  int64_t n = 0;
  for (const SampleRow& r : rows) n += int64_t(r.bias.size());
  return n;
}
}  // namespace

int64_t logprobs_width(const std::vector<SampleRow>& rows) {
  int64_t k = -1;
  for (const SampleRow& r : rows) k = std::max<int64_t>(k, r.logprobs);
  return k;
}

// A 2-d (rows, cols) view of a 1-d tensor.
static Tensor matrix(Tensor t, int64_t rows, int64_t cols) {
  t.ndim = 2;
  t.shape = {rows, cols, 0, 0};
  return t;
}

// The masks as an (M, words) i32 backend tensor (waits for them); empty when there are none.
static Tensor upload_masks(Backend& b, const StepMasks* masks) {
  if (!masks || masks->rows == 0) return Tensor();
  if (masks->wait) masks->wait();
  const std::vector<int32_t> words(masks->bits.begin(), masks->bits.end());
  return matrix(b.upload_i32(words), masks->rows, masks->words);
}

SamplingPlan stage_sampling_rows(Backend& b, const std::vector<SampleRow>& rows,
                                 const Tensor& counts, int64_t width, const StepMasks* masks) {
  const SamplingLayout l = SamplingLayout::make(int64_t(rows.size()), bias_entries(rows));
  std::vector<int32_t> ints(size_t(l.ints_end));
  std::vector<float> floats(size_t(l.floats_end));
  write_sampling(l, rows, ints, floats);
  const Tensor ints_t = b.upload_i32(ints), floats_t = b.upload_f32(floats);
  return sampling_views(l, ints_t, floats_t, counts, width, upload_masks(b, masks));
}

// ---- step graphs ---------------------------------------------------------------

// Where a graphed step's model inputs live in its i32 buffer, in elements;
// the sampler's i32 inputs follow, then the KV page indices (the only part
// whose used length varies, so that one copy of a prefix stages a step).
// A graph of batch B and Q rows per sequence has T = B · Q query rows and
// S = 2B sequences: the step's n ≤ B first, then padding sequences of at most
// Q rows that own the rows past the step's (they decode token 0 at position 0
// into the pad page; their tokens are dropped), then empty ones.
struct StepLayout {
  int64_t token_ids, positions, kv_locs, rope_long, lora_slot;  // [T] each
  int64_t row_indptr;                                           // [T + 1]: 0 .. T, LoRA's segments
  int64_t kv_last_page_len;                                     // [S]
  int64_t q_indptr, kv_indptr;                                  // [S + 1] each
  int64_t logit_rows, logit_lora_slot;                          // [R] each (gathering graphs)
  int64_t end;

  // R: the logit rows gathered, 0 when the graph takes every row's logits.
  StepLayout(int64_t T, int64_t S, int64_t R) {
    int64_t i = 0;
    for (int64_t* at : {&token_ids, &positions, &kv_locs, &rope_long, &lora_slot}) {
      *at = i;
      i += T;
    }
    row_indptr = i;
    kv_last_page_len = row_indptr + T + 1;
    q_indptr = kv_last_page_len + S;
    kv_indptr = q_indptr + S + 1;
    logit_rows = kv_indptr + S + 1;
    logit_lora_slot = logit_rows + R;
    end = logit_lora_slot + R;
  }
};

// One recorded step. Its inputs live in two tensors at fixed addresses:
//   ints   StepLayout | SamplingLayout's i32 part | kv_indices [B · (pages + 1)]
//   floats SamplingLayout's f32 part
//   mask   (T, mask_words) i32: the masked rows' masks, when the key has masks
struct StepRunner::Graph {
  int64_t batch = 0, rows = 0, pages = 0;  // rows: T; pages: per sequence, at most
  int64_t logit_rows = 0;                  // R: T, or B when it gathers
  StepLayout layout{0, 0, 0};
  SamplingLayout sampling_layout;
  int64_t kv_indices_at = 0;
  Tensor ints, floats, mask;
  model::StepInputs in;
  SamplingPlan sampling;
  SampleResult result;  // the replay's tokens and logprobs
  Tensor hidden;        // (R, hidden) the replay's final hidden states of its logit rows
  Tensor logits;        // with masks: what the forward graph leaves for the sample graph
                        // (with heads, (R · (1 + K), vocab): theirs below the step's)
  std::unique_ptr<StepGraph> graph;         // forward and sample op; with masks the forward alone
  std::unique_ptr<StepGraph> sample_graph;  // with masks: the sample op
  std::vector<int32_t> host_ints;
  std::vector<float> host_floats;
};

StepRunner::StepRunner(model::Phi3ForCausalLM& model, kv::KvCache& kv,
                       const lora::AdapterSlots* adapters, bool use_graphs)
    : model_(model), kv_(kv), adapters_(adapters), use_graphs_(use_graphs) {
  if (use_graphs_ && model_.step_graphs_supported()) {
    if (auto page = kv_.pages.allocate()) pad_page_ = *page;
  }
  if (pad_page_ < 0) use_graphs_ = false;
}

StepRunner::~StepRunner() {
  graphs_.clear();
  if (pad_page_ >= 0) kv_.pages.release(pad_page_);
}

StepResult StepRunner::run(const StepPlan& plan, const std::vector<SampleRow>& rows,
                           const Tensor& counts, const StepMasks* masks, bool want_hidden,
                           const model::MedusaHeads* heads, int64_t head_top) {
  if (!rows.empty() && rows.size() != plan.logit_rows.size())
    throw std::logic_error("StepRunner::run: no sampling row, or one per logit row");
  if (masks && masks->rows > 0 && rows.empty())
    throw std::logic_error("StepRunner::run: masks without sampling rows");
  if (heads && (rows.empty() || heads->num_heads() == 0))
    throw std::logic_error("StepRunner::run: heads without sampling rows");
  if (head_top < 0 || head_top > kMaxLogprobs)
    throw std::logic_error("StepRunner::run: head_top outside [0, kMaxLogprobs]");
  if (!heads) head_top = 0;
  if (graphable(plan, rows))
    return run_graph(plan, rows, counts, masks, want_hidden, heads, head_top);
  return run_eager(plan, rows, counts, masks, want_hidden, heads, head_top);
}

// The step's logits (T, vocab) and below them the heads' (T · K, vocab), in
// one tensor: two copies, the first row of a (1 + K, T · vocab) view and the
// K rows after it (one sample op then picks the step's tokens and the drafts).
Tensor StepRunner::with_heads(const Tensor& logits, const Tensor& hidden,
                              const model::MedusaHeads& heads) {
  Backend& b = model_.backend();
  const Tensor drafts = heads.step_logits(b, hidden, model_.lm_head());  // (T · K, vocab)
  const int64_t T = logits.rows(), V = logits.cols(), K = heads.num_heads();
  Tensor all = b.alloc(logits.dtype, {(1 + K) * T, V});
  Tensor first = all.reshape({1, T * V});
  b.write_columns(first, 0, logits.reshape({1, T * V}));
  Tensor rest = all.reshape({K, T * V});
  rest.data = static_cast<char*>(all.data) + size_t(T * V) * dtype_size(all.dtype);
  b.write_columns(rest, 0, drafts.reshape({K, T * V}));
  return all;
}

using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The first `rows` rows of a sample op's results, on the host, and with heads
// the drafts of those rows, from sample row drafts_at on.
StepResult StepRunner::fetch(const SampleResult& sampled, int64_t rows, int64_t width,
                             int64_t drafts_at, int64_t heads, int64_t head_top) {
  Backend& b = model_.backend();
  StepResult r;
  r.tokens = b.download_i32(sampled.tokens);
  ++stats_.downloads;
  if (heads > 0)
    r.drafts.assign(r.tokens.begin() + drafts_at, r.tokens.begin() + drafts_at + rows * heads);
  r.tokens.resize(size_t(rows));
  r.logprobs_width = width;
  if (width < 0 && head_top <= 0) return r;
  stats_.downloads += 3;
  const Tensor lp = b.to_host_f32(sampled.logprob);
  const int64_t k = sampled.top_tokens.cols();  // the op's width (a graph's may be larger)
  const std::vector<int32_t> ids = b.download_i32(sampled.top_tokens);
  const Tensor top = b.to_host_f32(sampled.top_logprobs);
  if (width >= 0) {
    r.logprob.assign(lp.ptr<float>(), lp.ptr<float>() + rows);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < width; ++j) {
        r.top_tokens.push_back(ids[size_t(i * k + j)]);
        r.top_logprobs.push_back(top.ptr<float>()[i * k + j]);
      }
  }
  for (int64_t i = drafts_at; head_top > 0 && i < drafts_at + rows * heads; ++i)
    for (int64_t j = 0; j < head_top; ++j) {
      r.draft_top.push_back(ids[size_t(i * k + j)]);
      r.draft_top_logprob.push_back(top.ptr<float>()[i * k + j]);
    }
  return r;
}

StepResult StepRunner::run_eager(const StepPlan& plan, const std::vector<SampleRow>& rows,
                                 const Tensor& counts, const StepMasks* masks, bool want_hidden,
                                 const model::MedusaHeads* heads, int64_t head_top) {
  const auto t0 = Clock::now();
  Backend& b = model_.backend();
  model::StepInputs in = stage(b, plan, model_.config(), adapters_);
  Tensor hidden;
  Tensor logits = model_.forward(in, kv_, adapters_ ? &adapters_->tables() : nullptr,
                                 want_hidden || heads ? &hidden : nullptr);
  ++stats_.eager_steps;
  SampleResult sampled;
  const int64_t width = logprobs_width(rows), R = int64_t(rows.size());
  const int64_t K = heads ? heads->num_heads() : 0;
  // The forward is queued (a GPU runs it meanwhile): now the masks are waited for.
  if (heads) {  // the heads' rows after the step's: greedy, asking for their top lists or nothing
    std::vector<SampleRow> all = rows;
    all.resize(size_t(R * (1 + K)));
    for (int64_t i = R; head_top > 0 && i < R * (1 + K); ++i)
      all[size_t(i)].logprobs = int32_t(head_top);
    sampled = b.sample(with_heads(logits, hidden, *heads),
                       stage_sampling_rows(b, all, counts, std::max(width, head_top), masks));
    ++stats_.heads_steps;
  } else if (!rows.empty()) {
    sampled = b.sample(logits, stage_sampling_rows(b, rows, counts, width, masks));
  }
  stats_.host_seconds += seconds_since(t0);
  StepResult r;
  if (!rows.empty()) r = fetch(sampled, R, width, R, K, head_top);
  if (plan.host_logits) {
    r.logits = b.to_host_f32(logits);
    ++stats_.downloads;
  }
  if (want_hidden) r.hidden = hidden;
  return r;
}

// Whether every row of the step is a logit row (0 .. T - 1 in order).
static bool every_row_logits(const StepPlan& plan) {
  const size_t t = plan.token_ids.size();
  if (plan.logit_rows.size() != t) return false;
  for (size_t i = 0; i < t; ++i)
    if (plan.logit_rows[i] != int32_t(i)) return false;
  return true;
}

bool StepRunner::graphable(const StepPlan& plan, const std::vector<SampleRow>& rows) const {
  const size_t n = plan.kv_last_page_len.size();
  if (!use_graphs_ || n == 0 || int64_t(n) > batch_buckets().back()) return false;
  // Logits stay on the device, and each one asked for is sampled.
  if (plan.host_logits || rows.size() != plan.logit_rows.size()) return false;
  if (plan.max_q_len < 1 || plan.max_q_len > kMaxGraphRowsPerSequence) return false;
  const int64_t batch = graph_batch(int64_t(n));
  if (batch * rows_bucket(plan.max_q_len) > kMaxGraphRows) return false;
  if (plan.max_kv_len > kMaxContextBucket) return false;
  // Every row's logits, or (gathered) at most one row per sequence.
  return every_row_logits(plan) || int64_t(plan.logit_rows.size()) <= batch;
}

int64_t StepRunner::graph_batch(int64_t n) {
  return *std::lower_bound(batch_buckets().begin(), batch_buckets().end(), n);
}

std::unique_ptr<StepRunner::Graph> StepRunner::record(const GraphKey& key, const Tensor& counts) {
  Backend& b = model_.backend();
  const model::Phi3Config& c = model_.config();
  auto g = std::make_unique<Graph>();
  const int64_t B = key.batch, Q = key.rows_per_sequence, T = B * Q, S = 2 * B;
  const int64_t R = key.gather ? B : T;
  const int64_t context = key.context;
  const bool lora = key.lora_rank >= 0;
  g->batch = B;
  g->rows = T;
  g->logit_rows = R;
  g->pages = (context + kv_.page_size - 1) / kv_.page_size;
  g->layout = StepLayout(T, S, key.gather ? R : 0);
  // The sampler's rows: the step's R, then with heads their R · K (greedy).
  const int64_t K = key.heads ? key.heads->num_heads() : 0;
  g->sampling_layout = SamplingLayout::make(R * (1 + K), key.bias_capacity, g->layout.end, 0);
  g->kv_indices_at = g->sampling_layout.ints_end;
  g->host_ints.assign(size_t(g->kv_indices_at + B * (g->pages + 1)), 0);
  g->host_floats.assign(size_t(g->sampling_layout.floats_end), 0.0f);
  g->ints = b.upload_i32(g->host_ints);
  g->floats = b.upload_f32(g->host_floats);
  if (key.mask_words > 0)  // every row -1 (write_sampling's padding) until a step sets them
    g->mask = matrix(b.upload_i32(std::vector<int32_t>(size_t(R * key.mask_words), 0)), R,
                     key.mask_words);

  const StepLayout& d = g->layout;
  model::StepInputs& in = g->in;
  in.tokens.token_ids = view(g->ints, DType::i32, d.token_ids, T);
  in.tokens.positions = view(g->ints, DType::i32, d.positions, T);
  in.tokens.kv_locs = view(g->ints, DType::i32, d.kv_locs, T);
  in.tokens.rope_long = view(g->ints, DType::i32, d.rope_long, T);
  AttentionPlan& a = in.attention;
  a.kv_last_page_len = view(g->ints, DType::i32, d.kv_last_page_len, S);
  a.q_indptr = view(g->ints, DType::i32, d.q_indptr, S + 1);
  a.kv_indptr = view(g->ints, DType::i32, d.kv_indptr, S + 1);
  a.kv_indices = view(g->ints, DType::i32, g->kv_indices_at, B * (g->pages + 1));
  a.positions = in.tokens.positions;
  a.num_seqs = S;
  a.max_q_len = Q;
  a.max_kv_len = context;
  a.window = c.sliding_window.value_or(0);
  a.scale = float(1.0 / std::sqrt(double(c.head_dim)));
  if (lora) {
    in.lora.active = true;
    // One segment per row: the contract's two forms, and kernels that stay
    // per token, as decode wants.
    in.lora.token_slot = view(g->ints, DType::i32, d.lora_slot, T);
    in.lora.seg_slot = in.lora.token_slot;
    in.lora.seg_indptr = view(g->ints, DType::i32, d.row_indptr, T + 1);
    in.lora.num_segments = T;
    in.lora.max_rank = adapters_->max_rank();
    in.lora_logits = in.lora;
    if (key.gather) {  // lm_head's LoRA: one segment per gathered row
      in.lora_logits.token_slot = view(g->ints, DType::i32, d.logit_lora_slot, R);
      in.lora_logits.seg_slot = in.lora_logits.token_slot;
      in.lora_logits.seg_indptr = view(g->ints, DType::i32, d.row_indptr, R + 1);
      in.lora_logits.num_segments = R;
    }
    in.lora.lora_columns = key.lora_columns;  // lm_head has none
  }
  in.all_rows = !key.gather;
  if (key.gather) in.logit_rows = view(g->ints, DType::i32, d.logit_rows, R);
  g->sampling =
      sampling_views(g->sampling_layout, g->ints, g->floats, counts, key.logprobs_width, g->mask);

  // Record with every row padding (the warm-up run then only writes the pad page).
  Graph& gr = *g;
  std::vector<int32_t>& v = gr.host_ints;
  for (int64_t r = 0; r < T; ++r) {
    v[size_t(d.kv_locs + r)] = pad_page_ * int32_t(kv_.page_size);
    v[size_t(d.lora_slot + r)] = -1;
  }
  for (int64_t r = 0; r <= T; ++r) v[size_t(d.row_indptr + r)] = int32_t(r);
  if (key.gather) gather_padding(gr, 0);
  fill_padding(gr, 0, 0, 0);
  write_sampling(gr.sampling_layout, {}, gr.host_ints, gr.host_floats);
  b.upload_into(g->ints, g->host_ints.data(), g->host_ints.size() * 4);
  b.upload_into(g->floats, g->host_floats.data(), g->host_floats.size() * 4);
  // The body may be kept and rerun (a backend's replay): it captures by value.
  const lora::AdapterSlots* adapters = lora ? adapters_ : nullptr;
  const model::MedusaHeads* heads = key.heads;
  if (key.mask_words > 0) {
    // Two graphs: the forward, then the sample op, so that the masks (filled on host threads)
    // are waited for while the forward runs, not before it starts.
    g->graph = b.capture([this, graph = g.get(), adapters, heads] {
      graph->logits =
          model_.forward(graph->in, kv_, adapters ? &adapters->tables() : nullptr, &graph->hidden);
      if (heads) graph->logits = with_heads(graph->logits, graph->hidden, *heads);
    });
    if (g->graph)
      g->sample_graph = b.capture([graph = g.get(), backend = &b] {
        graph->result = backend->sample(graph->logits, graph->sampling);
      });
    if (!g->sample_graph) return nullptr;
  } else {
    g->graph = b.capture([this, graph = g.get(), adapters, heads, backend = &b] {
      Tensor logits =
          model_.forward(graph->in, kv_, adapters ? &adapters->tables() : nullptr, &graph->hidden);
      if (heads) logits = with_heads(logits, graph->hidden, *heads);
      graph->result = backend->sample(logits, graph->sampling);
    });
  }
  if (!g->graph) return nullptr;
  ++stats_.captures;
  return g;
}

// The gathered logit rows past the step's `given`: row 0, no adapter (their
// tokens are dropped).
void StepRunner::gather_padding(Graph& g, int64_t given) {
  std::vector<int32_t>& v = g.host_ints;
  for (int64_t j = given; j < g.logit_rows; ++j) {
    v[size_t(g.layout.logit_rows + j)] = 0;
    v[size_t(g.layout.logit_lora_slot + j)] = -1;
  }
}

// The sequences past the step's n (with its t rows and `pages` KV pages):
// padding sequences of at most Q rows each own rows t .. T - 1, and the pad
// page; the rest are empty. Returns the pages of the whole list.
int32_t StepRunner::fill_padding(Graph& g, int64_t n, int64_t t, int32_t pages) {
  const StepLayout& d = g.layout;
  std::vector<int32_t>& v = g.host_ints;
  const int64_t S = 2 * g.batch, Q = g.rows / g.batch;
  int64_t row = t;
  for (int64_t s = n; s < S; ++s) {
    v[size_t(d.q_indptr + s)] = int32_t(row);
    v[size_t(d.kv_indptr + s)] = pages;
    v[size_t(d.kv_last_page_len + s)] = 1;
    if (row < g.rows) {
      row = std::min(g.rows, row + Q);
      v[size_t(g.kv_indices_at + pages++)] = pad_page_;
    }
  }
  v[size_t(d.q_indptr + S)] = int32_t(g.rows);
  v[size_t(d.kv_indptr + S)] = pages;
  return pages;
}

StepResult StepRunner::run_graph(const StepPlan& plan, const std::vector<SampleRow>& rows,
                                 const Tensor& counts, const StepMasks* masks, bool want_hidden,
                                 const model::MedusaHeads* heads, int64_t head_top) {
  const int64_t n = int64_t(plan.kv_last_page_len.size()), t = int64_t(plan.token_ids.size());
  GraphKey key;
  key.batch = graph_batch(n);
  key.rows_per_sequence = rows_bucket(plan.max_q_len);
  key.gather = !every_row_logits(plan);
  key.context = context_bucket(plan.max_kv_len);
  const bool lora = adapters_ && std::any_of(plan.lora_slot.begin(), plan.lora_slot.end(),
                                             [](int32_t s) { return s >= 0; });
  if (lora) {
    key.lora_version = adapters_->layout_version();
    key.lora_rank = adapters_->max_rank();
    // The columns' one-matmul form where the graph's rows are few enough for it.
    if (key.batch * key.rows_per_sequence <= lora::kColumnsMaxTokens)
      key.lora_columns = step_lora_columns(adapters_, plan.lora_slot);
  }
  const int64_t entries = bias_entries(rows);
  key.bias_capacity =
      entries == 0 ? 0 : int64_t(std::bit_ceil(uint64_t(std::max<int64_t>(entries, 64))));
  const int64_t width = logprobs_width(rows);
  key.logprobs_width = width < 0 && head_top <= 0 ? -1 : kMaxLogprobs;
  const bool uses_counts =
      std::any_of(rows.begin(), rows.end(), [](const SampleRow& r) { return r.count_row >= 0; });
  key.counts = uses_counts ? counts.data : nullptr;
  key.mask_words = masks && masks->rows > 0 ? masks->words : 0;
  key.heads = heads;
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    if (lora)  // graphs of an older adapter layout can never replay again
      std::erase_if(graphs_, [&](const auto& entry) {
        return entry.first.lora_rank >= 0 &&
               entry.first.lora_version != adapters_->layout_version();
      });
    std::unique_ptr<Graph> g = record(key, uses_counts ? counts : Tensor());
    if (!g) {
      use_graphs_ = false;
      return run_eager(plan, rows, counts, masks, want_hidden, heads, head_top);
    }
    it = graphs_.emplace(key, std::move(g)).first;
  }
  Graph& g = *it->second;
  const int64_t T = g.rows;
  const auto t0 = Clock::now();

  // The step's inputs, padded to the graph's rows and sequences (StepLayout).
  const StepLayout& d = g.layout;
  std::vector<int32_t>& v = g.host_ints;
  const int32_t pad_loc = pad_page_ * int32_t(kv_.page_size);
  for (int64_t r = 0; r < T; ++r) {
    const bool real = r < t;
    const size_t k = size_t(r);
    v[size_t(d.token_ids) + k] = real ? plan.token_ids[k] : 0;
    v[size_t(d.positions) + k] = real ? plan.positions[k] : 0;
    v[size_t(d.kv_locs) + k] = real ? plan.kv_locs[k] : pad_loc;
    v[size_t(d.rope_long) + k] = real ? plan.rope_long[k] : 0;
    v[size_t(d.lora_slot) + k] = real ? plan.lora_slot[k] : -1;
  }
  std::copy_n(plan.kv_last_page_len.begin(), n, v.begin() + d.kv_last_page_len);
  std::copy_n(plan.q_indptr.begin(), n, v.begin() + d.q_indptr);
  std::copy_n(plan.kv_indptr.begin(), n, v.begin() + d.kv_indptr);
  std::copy(plan.kv_indices.begin(), plan.kv_indices.end(), v.begin() + g.kv_indices_at);
  if (key.gather) {
    std::copy(plan.logit_rows.begin(), plan.logit_rows.end(), v.begin() + d.logit_rows);
    std::copy(plan.logit_lora_slot.begin(), plan.logit_lora_slot.end(),
              v.begin() + d.logit_lora_slot);
    gather_padding(g, int64_t(plan.logit_rows.size()));
  }
  const int32_t pages = fill_padding(g, n, t, plan.kv_indptr[size_t(n)]);
  if (head_top > 0) {  // the heads' rows (after the graph's R) ask for their top lists
    std::vector<SampleRow> all = rows;
    all.resize(size_t(g.logit_rows * (1 + heads->num_heads())));
    for (size_t i = size_t(g.logit_rows); i < all.size(); ++i) all[i].logprobs = int32_t(head_top);
    write_sampling(g.sampling_layout, all, g.host_ints, g.host_floats);
  } else {
    write_sampling(g.sampling_layout, rows, g.host_ints, g.host_floats);
  }
  Backend& b = model_.backend();
  const size_t used = size_t(g.kv_indices_at + pages);
  b.upload_into(g.ints, v.data(), used * 4);
  b.upload_into(g.floats, g.host_floats.data(), g.host_floats.size() * 4);
  g.graph->replay();
  if (g.sample_graph) {  // the forward is queued: now the masks, then the sample op
    if (masks->wait) masks->wait();
    b.upload_into(g.mask, masks->bits.data(), size_t(masks->rows * masks->words) * 4);
    g.sample_graph->replay();
  }
  ++stats_.graph_steps;
  if (key.gather)
    ++stats_.graph_gather_steps;
  else if (key.rows_per_sequence > 1)
    ++stats_.graph_verify_steps;
  if (heads) ++stats_.heads_steps;
  stats_.host_seconds += seconds_since(t0);
  // The heads' rows follow the graph's R (its padding rows' included).
  StepResult r;
  if (!rows.empty())
    r = fetch(g.result, int64_t(rows.size()), width, g.logit_rows, heads ? heads->num_heads() : 0,
              head_top);
  if (want_hidden) r.hidden = g.hidden;  // valid until this graph replays again
  return r;
}

}  // namespace philora::engine
