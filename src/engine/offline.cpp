#include "engine/offline.h"

#include <algorithm>
#include <cstring>

#include "backend/cpu/cpu_backend.h"
#include "engine/plan.h"
#include "engine/step_runner.h"
#include "model/rope.h"

namespace philora::engine {

static Status check_requests(const model::Phi3Config& c, const std::vector<OfflineRequest>& reqs,
                             const lora::AdapterSlots* adapters) {
  for (const OfflineRequest& r : reqs) {
    if (r.input_ids.empty()) return Status::errorf("request '{}': input_ids is empty", r.id);
    for (int32_t id : r.input_ids)
      if (id < 0 || id >= c.vocab_size)
        return Status::errorf("request '{}': token id {} is outside the vocabulary [0, {})", r.id,
                              id, c.vocab_size);
    if (r.lora_slot >= 0 && (!adapters || r.lora_slot >= adapters->num_slots()))
      return Status::errorf("request '{}': adapter slot {} is not loaded", r.id, r.lora_slot);
  }
  return Status();
}

static std::vector<Sequence> admit(const model::Phi3Config& c,
                                   const std::vector<OfflineRequest>& reqs) {
  std::vector<Sequence> seqs(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    Sequence& s = seqs[i];
    s.id = reqs[i].id;
    s.tokens = reqs[i].input_ids;
    s.prompt_len = int64_t(s.tokens.size());
    s.lora_slot = reqs[i].lora_slot;
    s.rope_long = model::uses_long_rope(c, s.prompt_len + reqs[i].max_new_tokens);
  }
  return seqs;
}

static kv::KvCache make_cache(model::Phi3ForCausalLM& m, const std::vector<OfflineRequest>& reqs,
                              int64_t page_size) {
  int64_t pages = 0;
  for (const OfflineRequest& r : reqs)
    pages += (int64_t(r.input_ids.size()) + r.max_new_tokens + page_size - 1) / page_size;
  const model::Phi3Config& c = m.config();
  pages += 1;  // the step runner's pad page
  return kv::KvCache(m.backend(), c.num_hidden_layers, pages, page_size, c.num_key_value_heads,
                     c.head_dim);
}

Expected<std::vector<Tensor>> score_batch(model::Phi3ForCausalLM& model,
                                          const lora::AdapterSlots* adapters,
                                          const std::vector<OfflineRequest>& requests,
                                          const OfflineOptions& options) {
  const model::Phi3Config& c = model.config();
  PHILORA_RETURN_IF_ERROR(check_requests(c, requests, adapters));
  kv::KvCache kv = make_cache(model, requests, options.page_size);
  std::vector<Sequence> seqs = admit(c, requests);
  std::vector<SeqWork> work;
  for (Sequence& s : seqs) {
    PHILORA_RETURN_IF_ERROR(reserve_pages(s, s.prompt_len, kv));
    work.push_back({&s, s.prompt_len, true});
  }
  StepPlan plan = plan_step(work, options.page_size, /*all_rows=*/true);
  Backend& b = model.backend();
  model::StepInputs in = stage(b, plan, c, adapters);
  Tensor logits = b.to_host_f32(model.forward(in, kv, adapters));  // (T, vocab)
  std::vector<Tensor> out;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int64_t begin = plan.q_indptr[i], end = plan.q_indptr[i + 1];
    Tensor t = host_alloc(DType::f32, {end - begin, c.vocab_size});
    std::memcpy(t.data, logits.ptr<float>() + begin * c.vocab_size, t.nbytes());
    out.push_back(t);
  }
  return out;
}

Expected<std::vector<Generation>> generate_batch(model::Phi3ForCausalLM& model,
                                                 const lora::AdapterSlots* adapters,
                                                 const std::vector<OfflineRequest>& requests,
                                                 const OfflineOptions& options) {
  const model::Phi3Config& c = model.config();
  PHILORA_RETURN_IF_ERROR(check_requests(c, requests, adapters));
  kv::KvCache kv = make_cache(model, requests, options.page_size);
  std::vector<Sequence> seqs = admit(c, requests);
  std::vector<Generation> out(requests.size());
  std::vector<std::mt19937_64> rngs;
  for (const OfflineRequest& r : requests) rngs.emplace_back(r.sampling.seed);
  std::vector<bool> done(requests.size(), false);
  for (size_t i = 0; i < requests.size(); ++i) done[i] = requests[i].max_new_tokens <= 0;
  StepRunner runner(model, kv, adapters, options.step_graphs);

  // Step 0 computes every prompt; each later step one new token per live sequence.
  for (;;) {
    std::vector<SeqWork> work;
    std::vector<size_t> which;
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (done[i]) continue;
      Sequence& s = seqs[i];
      const int64_t n = int64_t(s.tokens.size()) - s.num_computed;
      PHILORA_RETURN_IF_ERROR(reserve_pages(s, int64_t(s.tokens.size()), kv));
      work.push_back({&s, n, true});
      which.push_back(i);
    }
    if (work.empty()) break;
    StepPlan plan = plan_step(work, options.page_size, /*all_rows=*/false);
    std::vector<SampleRow> rows;
    for (size_t i : which) rows.push_back(sample_row(requests[i].sampling, rngs[i]));
    const std::vector<int32_t> tokens = runner.run(plan, rows);
    for (size_t k = 0; k < which.size(); ++k) {
      const size_t i = which[k];
      Sequence& s = seqs[i];
      s.num_computed = int64_t(s.tokens.size());
      const int32_t tok = tokens[k];
      s.tokens.push_back(tok);
      out[i].tokens.push_back(tok);
      const bool eos = !requests[i].ignore_eos &&
                       std::find(options.stop_ids.begin(), options.stop_ids.end(), tok) !=
                           options.stop_ids.end();
      if (eos || int64_t(out[i].tokens.size()) >= requests[i].max_new_tokens) {
        done[i] = true;
        out[i].finish_reason = eos ? "stop" : "length";
        release_pages(s, kv);
      }
    }
  }
  return out;
}

}  // namespace philora::engine
