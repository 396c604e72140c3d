// Runs one step on the backend — the forward, then token selection — so that
// only token ids (and the logprobs asked for) come back to the host.
//
// Small steps replay a step graph where the backend can record one (CUDA):
// the step's inputs — the model's and the sampler's — are copied into two
// tensors at fixed addresses (one copy each), the graph replays every kernel
// of the forward and the sampler in one launch, and the ids come back. Two
// kinds of step fit one:
//   - steps that sample every row they compute: decode steps (one token per
//     sequence) and speculative verification (a sequence's last token and its
//     k drafts, k + 1 rows);
//   - steps with at most one logit row per sequence (its last): prompt chunks,
//     alone or beside decoding sequences — the graph gathers the step's logit
//     rows (at most B) before lm_head, as an eager step does (GraphKey::gather).
// A graph is recorded on first use per GraphKey: a batch bucket of sequences,
// a bucket of Q rows per sequence (1, 2, 3, 5, 9, 17, 33, 65 ≥ the step's
// most), padded up to B · Q rows with rows that write a reserved KV page,
// sample greedily and whose tokens are dropped; the context bucket fixes the
// decode attention's split. Larger steps run op by op; both stage the
// sampler's inputs through the same function (stage_sampling_rows) into the
// same named layout.
//
// A step may carry Medusa heads (speculative decoding): the heads then run on
// the final hidden state of every logit row inside the step — inside its graph
// when it replays one — and their logits (R · K rows) join the step's own in
// one sample op as greedy rows, so the step's tokens and the heads' drafts come
// back in one download.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "engine/constraint_masks.h"
#include "engine/plan.h"
#include "engine/sampler.h"
#include "kv/kv_cache.h"
#include "lora/slots.h"
#include "model/medusa.h"
#include "model/phi3.h"

namespace philora::engine {

// How one logit row picks its token and which logprobs it reports
// (SamplingPlan's rule in backend.h). The default is a greedy row that asks
// for nothing (a padding row, or a prompt row whose token is dropped).
struct SampleRow {
  float temperature = 0.0f;  // ≤ 0: greedy
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float typical_p = 1.0f;
  float uniform = 0.0f;  // the row's draw in [0, 1)
  float repetition_penalty = 1.0f;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  int32_t count_row = -1;    // the sequence's row of token counts, -1 = none
  int32_t logprobs = -1;     // -1 none, else the top k (0 .. kMaxLogprobs)
  int32_t logprob_kind = 0;  // 0 raw, 1 processed
  int32_t target = -1;       // the token whose logprob is reported; -1 = the chosen one
  int32_t mask = -1;         // the row's allowed-token mask in the step's StepMasks; -1 = none
  std::vector<std::pair<int32_t, float>> bias;  // (token, added value), tokens distinct; -inf bans
};

// A request's row this step: greedy rows draw nothing; the others draw their
// uniform from the request's generator, so a seed fixes the whole sequence.
// Penalties, count row, bias and logprobs are the caller's to fill in.
SampleRow sample_row(const SamplingParams& params, std::mt19937_64& rng);

// Where the sampler's inputs of `rows` rows live in two flat arrays (i32 and
// f32), in elements from the start of each, so that one upload each stages
// them: an eager step uploads them on their own, a step graph keeps them
// after its model inputs in its fixed buffers.
struct SamplingLayout {
  int64_t rows = 0;
  int64_t bias_capacity = 0;  // entries of the sparse bias list that fit
  // i32: [rows] each, then bias_indptr [rows + 1], bias_token [bias_capacity]
  int64_t top_k = 0, count_row = 0, logprobs = 0, logprob_kind = 0, target = 0, mask_row = 0;
  int64_t bias_indptr = 0, bias_token = 0, ints_end = 0;
  // f32: [rows] each, then bias_value [bias_capacity]
  int64_t temperature = 0, top_p = 0, min_p = 0, typical_p = 0, uniform = 0;
  int64_t repetition = 0, frequency = 0, presence = 0, bias_value = 0, floats_end = 0;

  // The layout starting at ints_at / floats_at.
  static SamplingLayout make(int64_t rows, int64_t bias_capacity, int64_t ints_at = 0,
                             int64_t floats_at = 0);
};

// Writes `given` into the layout's places of ints / floats, padding rows past
// them up to layout.rows with default (greedy, no-op) rows. The bias entries
// must fit bias_capacity.
void write_sampling(const SamplingLayout& layout, const std::vector<SampleRow>& given,
                    std::vector<int32_t>& ints, std::vector<float>& floats);

// The SamplingPlan over backend tensors `ints` / `floats` laid out as `layout`;
// `mask` (M, words) i32 holds the rows' masks (empty: no row has one).
SamplingPlan sampling_views(const SamplingLayout& layout, const Tensor& ints, const Tensor& floats,
                            const Tensor& counts, int64_t logprobs_width,
                            const Tensor& mask = Tensor());

// The sampling inputs of `rows` on the backend (an eager step: two uploads,
// and a third of the masks, waited for here, when `masks` has any).
SamplingPlan stage_sampling_rows(Backend& backend, const std::vector<SampleRow>& rows,
                                 const Tensor& counts, int64_t logprobs_width,
                                 const StepMasks* masks = nullptr);

// The largest `logprobs` of the rows (-1 when none asks).
int64_t logprobs_width(const std::vector<SampleRow>& rows);

// What a step gives back: token ids, the logprobs asked for, and the logits
// when the plan asks for them.
struct StepResult {
  std::vector<int32_t> tokens;  // [R] one per logit row (its SampleRow's pick); empty without rows
  // With logprobs (logprobs_width ≥ 0): the rows' targets' logprobs and the top lists.
  int64_t logprobs_width = -1;      // K
  std::vector<float> logprob;       // [R]
  std::vector<int32_t> top_tokens;  // [R · K] row r's at r · K
  std::vector<float> top_logprobs;  // [R · K]
  Tensor logits;                    // (R, vocab) f32 on the host when plan.host_logits, else empty
  // (R, hidden) the logit rows' final hidden states, on the backend, when
  // run() was asked for them (Medusa heads read them), else empty.
  Tensor hidden;
  // With heads (run's `heads`, K of them): every head's greedy token on every
  // logit row, MedusaHeads::draft's order (row r's head i at r · K + i).
  std::vector<int32_t> drafts;  // [R · K], else empty
  // With run's head_top = N > 0: every head's N likeliest tokens on every
  // logit row, likeliest first, and their raw logprobs (row r's head i's
  // at (r · K + i) · N); else empty.
  std::vector<int32_t> draft_top;        // [R · K · N]
  std::vector<float> draft_top_logprob;  // [R · K · N]
};

struct StepRunnerStats {
  int64_t eager_steps = 0;
  int64_t graph_steps = 0;
  int64_t graph_verify_steps = 0;  // of graph_steps, those verifying drafts (rows per sequence > 1)
  int64_t graph_gather_steps = 0;  // of graph_steps, those gathering logit rows (prompt chunks)
  int64_t captures = 0;
  int64_t heads_steps = 0;  // steps that ran Medusa heads inside (eager or graph)
  // Waits for the device's results (download_i32 / to_host_f32 calls), summed
  // over steps: one a step that samples and asks for no logprobs nor host
  // logits, heads or not (logprobs: three more; host logits: one more).
  int64_t downloads = 0;
  // Host time spent in run() before it waits for the step's ids (staging,
  // launching or replaying), summed over steps; recording graphs excluded.
  double host_seconds = 0;
};

class StepRunner {
 public:
  // `use_graphs` false: every step runs op by op.
  StepRunner(model::Phi3ForCausalLM& model, kv::KvCache& kv, const lora::AdapterSlots* adapters,
             bool use_graphs = true);
  ~StepRunner();
  StepRunner(const StepRunner&) = delete;
  StepRunner& operator=(const StepRunner&) = delete;

  // Runs the plan. `rows` is empty (no token wanted) or one per logit row:
  // the tokens come back in the order of plan.logit_rows, row r chosen by
  // rows[r]. `counts` is the table the rows' count rows index (may be empty
  // when no row has one); the step updates it. `masks` (may be null) holds
  // the masks the rows' SampleRow::mask index; run waits for them (StepMasks::wait)
  // as late as it can: after the forward is launched (an eager step, or the
  // forward graph of a step with masks, whose sample op is a second graph). `want_hidden`: the
  // result also holds the logit rows' hidden states (after a graph's replay,
  // the graph's own tensor: read it before the next step). `heads` (may be
  // null; needs `rows`): the result also holds their drafts on every logit row
  // (StepResult::drafts), from the same sample op and download as the tokens;
  // with `head_top` N > 0 also each head's N likeliest tokens and their
  // logprobs (StepResult::draft_top; tree speculation), three downloads more
  // unless the rows ask for logprobs anyway.
  StepResult run(const StepPlan& plan, const std::vector<SampleRow>& rows,
                 const Tensor& counts = Tensor(), const StepMasks* masks = nullptr,
                 bool want_hidden = false, const model::MedusaHeads* heads = nullptr,
                 int64_t head_top = 0);

  const StepRunnerStats& stats() const { return stats_; }
  // KV pages the runner holds for itself (the pad page).
  int64_t reserved_pages() const { return pad_page_ >= 0 ? 1 : 0; }
  // The batch sizes graphs are recorded for (a decode step of n sequences
  // replays the graph of the smallest bucket ≥ n).
  static const std::vector<int64_t>& batch_buckets();
  // The most rows per sequence (1 + drafts, or a prompt chunk) a graph is
  // recorded for, and the most rows (bucket · rows per sequence) of one graph.
  static constexpr int64_t kMaxGraphRowsPerSequence = 65;
  static constexpr int64_t kMaxGraphRows = 512;

 private:
  // What a recorded graph is specialised for.
  struct GraphKey {
    int64_t batch = 0;              // bucket
    int64_t rows_per_sequence = 1;  // Q bucket: 1 decode, ≥ k + 1 verifying k drafts, ≥ a chunk
    // Logits of the step's logit rows gathered (at most one per sequence: B),
    // not of every row (T): a step with prompt chunks.
    bool gather = false;
    int64_t context = 0;           // bucket of the longest sequence (the attention's split)
    uint64_t lora_version = 0;     // AdapterSlots::layout_version(), 0 without LoRA
    int64_t lora_rank = -1;        // max rank, -1 without LoRA
    int64_t lora_columns = 0;      // LoRA columns the step reads
    int64_t bias_capacity = 0;     // entries of the sparse bias list its buffers hold
    int64_t logprobs_width = -1;   // -1 or kMaxLogprobs
    const void* counts = nullptr;  // the count table its sampler updates (or none)
    int64_t mask_words = 0;        // words of its (batch, mask_words) mask buffer, 0 = none
    const model::MedusaHeads* heads = nullptr;  // the Medusa heads it runs (fixed tensors), or none
    auto operator<=>(const GraphKey&) const = default;
  };
  struct Graph;
  StepResult run_eager(const StepPlan& plan, const std::vector<SampleRow>& rows,
                       const Tensor& counts, const StepMasks* masks, bool want_hidden,
                       const model::MedusaHeads* heads, int64_t head_top);
  bool graphable(const StepPlan& plan, const std::vector<SampleRow>& rows) const;
  static int64_t graph_batch(int64_t sequences);  // the bucket of a step of that many
  StepResult run_graph(const StepPlan& plan, const std::vector<SampleRow>& rows,
                       const Tensor& counts, const StepMasks* masks, bool want_hidden,
                       const model::MedusaHeads* heads, int64_t head_top);
  std::unique_ptr<Graph> record(const GraphKey& key, const Tensor& counts);
  int32_t fill_padding(Graph& g, int64_t n, int64_t t, int32_t pages);
  void gather_padding(Graph& g, int64_t given);
  // The step's `rows` tokens (and logprobs); with `heads` rows of drafts
  // (K each) at sample row drafts_at on, and their top `head_top` lists.
  StepResult fetch(const SampleResult& sampled, int64_t rows, int64_t logprobs_width,
                   int64_t drafts_at = 0, int64_t heads = 0, int64_t head_top = 0);
  // The sample op's logits of a step with heads: the step's (R, vocab), then
  // the heads' (R · K, vocab) on its hidden states (R, hidden).
  Tensor with_heads(const Tensor& logits, const Tensor& hidden, const model::MedusaHeads& heads);

  model::Phi3ForCausalLM& model_;
  kv::KvCache& kv_;
  const lora::AdapterSlots* adapters_;
  bool use_graphs_;
  int32_t pad_page_ = -1;  // KV page the padding rows write
  std::map<GraphKey, std::unique_ptr<Graph>> graphs_;
  StepRunnerStats stats_;
};

}  // namespace philora::engine
