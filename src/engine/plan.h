// Plan, then run: the host builds the flat arrays of one step (FlashInfer's
// paged layout, LoRA segments and per-token adapter slots, rows that need logits),
// stages them on the backend, and the model runs on plain descriptors.
#pragma once

#include <vector>

#include "backend/backend.h"
#include "engine/sequence.h"
#include "kv/kv_cache.h"
#include "lora/slots.h"
#include "model/config.h"
#include "model/phi3.h"

namespace philora::engine {

// One sequence's share of a step: compute tokens [num_computed, num_computed + num_tokens).
struct SeqWork {
  Sequence* seq = nullptr;
  int64_t num_tokens = 0;
  bool logits = false;             // this sequence needs the logits of its last computed token
  bool all_logits = false;         // ... of every token it computes (prompt logits or logprobs)
  bool all_logits_to_host = true;  // ... and they come back to the host (prompt logits)
};

struct StepPlan {
  // per token, T = Σ num_tokens
  std::vector<int32_t> token_ids;  // [T]
  std::vector<int32_t> positions;  // [T]
  std::vector<int32_t> kv_locs;    // [T] KV location: page * page_size + offset
  std::vector<int32_t> rope_long;  // [T]
  std::vector<int32_t> lora_slot;  // [T]
  // per sequence, S = number of SeqWork
  std::vector<int32_t> q_indptr;          // [S + 1]
  std::vector<int32_t> kv_indptr;         // [S + 1]
  std::vector<int32_t> kv_indices;        // [Σ pages]
  std::vector<int32_t> kv_last_page_len;  // [S]
  // rows needing logits, and their adapter slots (for lm_head LoRA)
  std::vector<int32_t> logit_rows;       // [R] increasing
  std::vector<int32_t> logit_lora_slot;  // [R]
  std::vector<int32_t> logit_indptr;     // [S + 1] sequence i's rows: [indptr[i], indptr[i+1])
  bool all_rows = false;     // every row needs logits (logit_rows is 0..T-1): nothing to gather
  bool host_logits = false;  // the logits come back to the host (a sequence wants them all there)
  int64_t max_q_len = 0;
  int64_t max_kv_len = 0;
};

// Builds the plan; sequences must already hold pages for every token computed.
StepPlan plan_step(const std::vector<SeqWork>& work, int64_t page_size);

// The LoRA columns a step of these per-token adapter slots reads
// (LoraBatch::lora_columns): AdapterSlots::step_columns, 0 without adapters.
int64_t step_lora_columns(const lora::AdapterSlots* adapters,
                          const std::vector<int32_t>& token_slot);

// Copies the plan to the backend; `adapters` (may be null) bounds the shrink
// buffer and says which LoRA columns the step reads.
model::StepInputs stage(Backend& backend, const StepPlan& plan, const model::Phi3Config& config,
                        const lora::AdapterSlots* adapters);

// Contiguous runs of equal slot over a per-token slot array: (indptr, slot).
void lora_segments(const std::vector<int32_t>& token_slot, std::vector<int32_t>* indptr,
                   std::vector<int32_t>* seg_slot);

}  // namespace philora::engine
