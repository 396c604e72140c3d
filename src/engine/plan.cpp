#include "engine/plan.h"

#include <algorithm>
#include <cmath>

namespace philora::engine {

StepPlan plan_step(const std::vector<SeqWork>& work, int64_t page_size) {
  StepPlan p;
  p.q_indptr.push_back(0);
  p.kv_indptr.push_back(0);
  p.logit_indptr.push_back(0);
  for (const SeqWork& w : work) {
    const Sequence& s = *w.seq;
    const int64_t begin = s.num_computed, end = s.num_computed + w.num_tokens;
    for (int64_t i = begin; i < end; ++i) {
      p.token_ids.push_back(s.tokens[size_t(i - s.first_token)]);
      p.positions.push_back(int32_t(i));
      p.kv_locs.push_back(int32_t(s.pages.ids[size_t(i / page_size)] * page_size + i % page_size));
      p.rope_long.push_back(s.rope_long ? 1 : 0);
      p.lora_slot.push_back(s.lora_slot);
    }
    // Its logit rows: every row it computes, its last, or none.
    const int64_t logit_rows = w.all_logits ? w.num_tokens : (w.logits && w.num_tokens > 0 ? 1 : 0);
    for (int64_t k = logit_rows; k > 0; --k) {
      p.logit_rows.push_back(int32_t(p.token_ids.size() - size_t(k)));
      p.logit_lora_slot.push_back(s.lora_slot);
    }
    p.logit_indptr.push_back(int32_t(p.logit_rows.size()));
    p.host_logits = p.host_logits || (w.all_logits && w.all_logits_to_host && w.num_tokens > 0);
    const int64_t pages = (end + page_size - 1) / page_size;
    for (int64_t i = 0; i < pages; ++i) p.kv_indices.push_back(s.pages.ids[size_t(i)]);
    p.q_indptr.push_back(int32_t(p.token_ids.size()));
    p.kv_indptr.push_back(int32_t(p.kv_indices.size()));
    p.kv_last_page_len.push_back(int32_t(end - (pages - 1) * page_size));
    p.max_q_len = std::max(p.max_q_len, w.num_tokens);
    p.max_kv_len = std::max(p.max_kv_len, end);
  }
  p.all_rows = !p.token_ids.empty() && p.logit_rows.size() == p.token_ids.size();
  return p;
}

void lora_segments(const std::vector<int32_t>& token_slot, std::vector<int32_t>* indptr,
                   std::vector<int32_t>* seg_slot) {
  indptr->assign(1, 0);
  seg_slot->clear();
  for (size_t t = 0; t < token_slot.size(); ++t) {
    if (t == 0 || token_slot[t] != token_slot[t - 1]) {
      if (t > 0) indptr->push_back(int32_t(t));
      seg_slot->push_back(token_slot[t]);
    }
  }
  if (!token_slot.empty()) indptr->push_back(int32_t(token_slot.size()));
}

static LoraBatch stage_lora(Backend& b, const std::vector<int32_t>& token_slot, int64_t max_rank) {
  LoraBatch batch;
  batch.active =
      std::any_of(token_slot.begin(), token_slot.end(), [](int32_t s) { return s >= 0; });
  if (!batch.active) return batch;
  std::vector<int32_t> indptr, seg_slot;
  lora_segments(token_slot, &indptr, &seg_slot);
  batch.seg_indptr = b.upload_i32(indptr);
  batch.seg_slot = b.upload_i32(seg_slot);
  batch.token_slot = b.upload_i32(token_slot);
  batch.num_segments = int64_t(seg_slot.size());
  batch.max_rank = max_rank;
  return batch;
}

int64_t step_lora_columns(const lora::AdapterSlots* adapters,
                          const std::vector<int32_t>& token_slot) {
  return adapters ? adapters->step_columns(token_slot) : 0;
}

model::StepInputs stage(Backend& b, const StepPlan& p, const model::Phi3Config& c,
                        const lora::AdapterSlots* adapters) {
  const int64_t lora_max_rank = adapters ? adapters->max_rank() : 0;
  model::StepInputs in;
  in.tokens.token_ids = b.upload_i32(p.token_ids);
  in.tokens.positions = b.upload_i32(p.positions);
  in.tokens.kv_locs = b.upload_i32(p.kv_locs);
  in.tokens.rope_long = b.upload_i32(p.rope_long);
  AttentionPlan& a = in.attention;
  a.q_indptr = b.upload_i32(p.q_indptr);
  a.kv_indptr = b.upload_i32(p.kv_indptr);
  a.kv_indices = b.upload_i32(p.kv_indices);
  a.kv_last_page_len = b.upload_i32(p.kv_last_page_len);
  a.positions = in.tokens.positions;
  a.num_seqs = int64_t(p.kv_last_page_len.size());
  a.max_q_len = p.max_q_len;
  a.max_kv_len = p.max_kv_len;
  a.window = c.sliding_window.value_or(0);
  a.scale = float(1.0 / std::sqrt(double(c.head_dim)));
  in.lora = stage_lora(b, p.lora_slot, lora_max_rank);
  if (in.lora.active) in.lora.lora_columns = step_lora_columns(adapters, p.lora_slot);
  in.lora_logits = stage_lora(b, p.logit_lora_slot, lora_max_rank);
  in.logit_rows = b.upload_i32(p.logit_rows);
  in.all_rows = p.all_rows;
  return in;
}

}  // namespace philora::engine
