// Runs one step on the backend — the forward, then token selection — so that
// only token ids come back to the host.
//
// Decode steps (every sequence computes one token and samples it) replay a
// step graph where the backend can record one (CUDA): the step's inputs are
// copied into tensors at fixed addresses (one copy), the graph replays every
// kernel of the forward and the sampler in one launch, and the ids come back.
// A graph is recorded on first use per key
//   (batch bucket, context bucket, adapter layout),
// the batch padded up to its bucket with rows that write a reserved KV page
// and whose tokens are dropped, the context bucket fixing the decode
// attention's split. Other steps (prompts, chunks, mixed) run op by op.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "engine/plan.h"
#include "engine/sampler.h"
#include "kv/kv_cache.h"
#include "lora/slots.h"
#include "model/phi3.h"

namespace philora::engine {

// How one logit row picks its token (Backend::sample's rule).
struct SampleRow {
  float temperature = 0.0f;  // ≤ 0: greedy
  int32_t top_k = 0;
  float top_p = 1.0f;
  float uniform = 0.0f;  // the row's draw in [0, 1)
};

// A request's row this step: greedy rows draw nothing; the others draw their
// uniform from the request's generator, so a seed fixes the whole sequence.
SampleRow sample_row(const SamplingParams& params, std::mt19937_64& rng);

// What a step gives back: token ids, and the logits when the plan asks for them.
struct StepResult {
  std::vector<int32_t> tokens;  // [R] one per logit row (its SampleRow's pick); empty without rows
  Tensor logits;                // (R, vocab) f32 on the host when plan.host_logits, else empty
};

struct StepRunnerStats {
  int64_t eager_steps = 0;
  int64_t graph_steps = 0;
  int64_t captures = 0;
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
  // the tokens come back in the order of plan.logit_rows, row r chosen by rows[r].
  StepResult run(const StepPlan& plan, const std::vector<SampleRow>& rows);

  const StepRunnerStats& stats() const { return stats_; }
  // KV pages the runner holds for itself (the pad page).
  int64_t reserved_pages() const { return pad_page_ >= 0 ? 1 : 0; }
  // The batch sizes graphs are recorded for (a decode step of n sequences
  // replays the graph of the smallest bucket ≥ n).
  static const std::vector<int64_t>& batch_buckets();

 private:
  struct Graph;
  // batch, context, lora version, rank, LoRA columns
  using Key = std::tuple<int64_t, int64_t, uint64_t, int64_t, int64_t>;
  StepResult run_eager(const StepPlan& plan, const std::vector<SampleRow>& rows);
  bool graphable(const StepPlan& plan, const std::vector<SampleRow>& rows) const;
  std::vector<int32_t> run_graph(const StepPlan& plan, const std::vector<SampleRow>& rows);
  std::unique_ptr<Graph> record(const Key& key, bool lora);

  model::Phi3ForCausalLM& model_;
  kv::KvCache& kv_;
  const lora::AdapterSlots* adapters_;
  bool use_graphs_;
  int32_t pad_page_ = -1;  // KV page the padding rows write
  std::map<Key, std::unique_ptr<Graph>> graphs_;
  StepRunnerStats stats_;
};

// The sampling plan of `rows` on the backend.
SamplingPlan stage_sampling(Backend& backend, const std::vector<SampleRow>& rows);

}  // namespace philora::engine
