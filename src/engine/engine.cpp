#include "engine/engine.h"

#include <algorithm>
#include <cstring>

#include "backend/cpu/cpu_backend.h"
#include "engine/plan.h"
#include "model/rope.h"

namespace philora::engine {

Engine::Engine(model::Phi3ForCausalLM& model, kv::KvCache& kv, lora::AdapterStore* adapters,
               EngineConfig config)
    : model_(model),
      kv_(kv),
      adapters_(adapters),
      config_(config),
      runner_(model, kv, adapters ? &adapters->slots() : nullptr, config.step_graphs) {}

Status Engine::validate(const Request& r) const {
  const model::Phi3Config& c = model_.config();
  if (r.prompt.empty())
    return Status::errorf("request '{}': the prompt is empty (input_ids is empty)", r.id);
  for (int32_t t : r.prompt)
    if (t < 0 || t >= c.vocab_size)
      return Status::errorf("request '{}': token id {} is outside the vocabulary [0, {})", r.id, t,
                            c.vocab_size);
  if (r.max_new_tokens < 0)
    return Status::errorf("request '{}': max_new_tokens must not be negative", r.id);
  const int64_t total = int64_t(r.prompt.size()) + r.max_new_tokens;
  if (total > c.max_position_embeddings)
    return Status::errorf(
        "request '{}': prompt ({} tokens) + max_new_tokens ({}) exceeds the model's {} positions",
        r.id, r.prompt.size(), r.max_new_tokens, c.max_position_embeddings);
  if (total > max_sequence_tokens())
    return Status::errorf("request '{}': {} tokens can never fit the KV cache ({} tokens)", r.id,
                          total, max_sequence_tokens());
  return Status();
}

Status Engine::add_request(Request r) {
  PHILORA_RETURN_IF_ERROR(validate(r));
  auto l = std::make_unique<Live>();
  l->seq.id = r.id;
  l->seq.tokens = r.prompt;
  l->seq.prompt_len = int64_t(r.prompt.size());
  l->seq.rope_long =
      model::uses_long_rope(model_.config(), int64_t(r.prompt.size()) + r.max_new_tokens);
  l->rng.seed(r.sampling.seed);
  l->req = std::move(r);
  waiting_.push_back(std::move(l));
  return Status();
}

int64_t Engine::max_sequence_tokens() const {
  const int64_t usable_pages = kv_.pages.num_pages() - runner_.reserved_pages();
  return std::min(model_.config().max_position_embeddings, usable_pages * kv_.page_size);
}

void Engine::abort(const std::string& id) {
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it)
    if ((*it)->req.id == id) {
      finish(**it, FinishReason::abort, pending_);
      waiting_.erase(it);
      return;
    }
  for (auto it = running_.begin(); it != running_.end(); ++it)
    if ((*it)->req.id == id) {
      finish(**it, FinishReason::abort, pending_);
      running_.erase(it);
      return;
    }
}

// Lets go of the sequence's pages (its full ones stay cached) and adapter slot.
void Engine::release(Live& l) {
  kv_.pages.release(l.seq.pages);
  l.seq.num_computed = 0;
  if (l.has_slot && adapters_) adapters_->release(l.seq.lora_slot);
  l.has_slot = false;
  l.seq.lora_slot = -1;
  l.adapter_identity = 0;
}

void Engine::preempt(Live& l) {
  release(l);  // recompute prompt + generated tokens later (from the cache where it can)
  ++stats_.preemptions;
}

// Ends the request: `o` may carry the step's new tokens or an error's messages.
void Engine::finish(Live& l, FinishReason reason, std::vector<StepOutput>& out, StepOutput o) {
  release(l);
  l.done = true;
  o.id = l.req.id;
  o.finish = reason;
  if (l.logits_rows == l.seq.prompt_len) o.prompt_logits = std::move(l.prompt_logits);
  out.push_back(std::move(o));
}

std::vector<StepOutput> Engine::step() {
  std::vector<StepOutput> out;
  out.swap(pending_);
  int64_t budget = config_.max_batched_tokens;
  std::vector<Scheduled> batch;
  schedule_running(batch, budget);
  admit_waiting(batch, budget, out);
  if (!batch.empty()) run(batch, out);
  std::erase_if(running_, [](const std::unique_ptr<Live>& l) { return l->done; });
  return out;
}

// Running sequences, oldest first: a decode token or the next prompt chunk
// each; the newest is preempted when pages run out.
void Engine::schedule_running(std::vector<Scheduled>& batch, int64_t& budget) {
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Live& l = *running_[i];
    const int64_t n = std::min<int64_t>(int64_t(l.seq.tokens.size()) - l.seq.num_computed, budget);
    bool ok = kv_.pages.reserve(l.seq.pages, l.seq.num_computed + n);
    while (!ok && running_.size() > i + 1) {
      preempt(*running_.back());
      waiting_.push_front(std::move(running_.back()));
      running_.pop_back();
      ok = kv_.pages.reserve(l.seq.pages, l.seq.num_computed + n);
    }
    if (!ok) {  // nothing newer to take pages from: this one waits
      preempt(l);
      waiting_.push_front(std::move(running_[i]));
      running_.erase(running_.begin() + int64_t(i));
      continue;
    }
    batch.push_back({&l, n});
    budget -= n;
    ++i;
  }
}

// Pins the request's adapter in a slot. False when it must wait for a slot,
// or when it failed (then it is finished with the reason).
bool Engine::acquire_adapter(Live& l, std::vector<StepOutput>& out) {
  if (!l.req.adapter || l.has_slot) return true;
  const std::string& name = *l.req.adapter;
  StepOutput o;
  if (!adapters_) {
    o.error = o.error_detail = fmt::format("adapter '{}' not found: this engine serves none", name);
    finish(l, FinishReason::unknown_adapter, out, std::move(o));
    return false;
  }
  if (!adapters_->slot_available(name)) return false;  // wait for a running one to finish
  const lora::Acquired slot = adapters_->acquire(name);
  if (!slot.ok()) {  // this request fails, the others go on
    const lora::AdapterError& e = slot.error();
    o.error = e.message;
    o.error_detail = e.detail;
    using Kind = lora::AdapterError::Kind;
    finish(l,
           e.kind == Kind::not_found ? FinishReason::unknown_adapter
           : e.kind == Kind::invalid ? FinishReason::adapter_invalid
                                     : FinishReason::no_adapter_slot,
           out, std::move(o));
    return false;
  }
  l.seq.lora_slot = *slot;
  l.has_slot = true;
  l.adapter_identity = adapters_->identity(*slot);
  return true;
}

// What besides its tokens decides the K and V of the sequence's pages.
kv::PrefixSalt Engine::prefix_salt(const Live& l) const {
  return {l.adapter_identity, l.seq.rope_long};
}

// A sequence about to be admitted (nothing computed, no pages) takes the
// cached pages of its longest prefix. Its last token is always computed (its
// logits are sampled from); a prompt-logits request reuses only the rows it
// has kept (after a preemption), so every prompt position's logits are
// computed, and is not looked up before it has any. False when not looked up.
bool Engine::reuse_cached_prefix(Live& l) {
  if (!config_.prefix_cache || (l.req.prompt_logits && l.logits_rows == 0)) return false;
  int64_t reusable = int64_t(l.seq.tokens.size()) - 1;
  if (l.req.prompt_logits) reusable = std::min(reusable, l.logits_rows);
  l.seq.num_computed = kv_.pages.match_prefix(l.seq.pages, l.seq.tokens, prefix_salt(l), reusable);
  return true;
}

// Waiting sequences in arrival order, while budget, pages and slots last.
void Engine::admit_waiting(std::vector<Scheduled>& batch, int64_t& budget,
                           std::vector<StepOutput>& out) {
  while (!waiting_.empty() && budget > 0 && int64_t(running_.size()) < config_.max_running) {
    Live& l = *waiting_.front();
    if (!acquire_adapter(l, out)) {
      if (!l.done) break;  // no slot yet
      waiting_.pop_front();
      continue;
    }
    const bool looked_up = reuse_cached_prefix(l);
    const int64_t n = std::min<int64_t>(int64_t(l.seq.tokens.size()) - l.seq.num_computed, budget);
    if (!kv_.pages.reserve(l.seq.pages, l.seq.num_computed + n)) {
      release(l);  // the cached prefix too: it is looked up again next time
      break;
    }
    if (looked_up) {
      stats_.prefix_cache_queries += int64_t(l.seq.tokens.size());
      stats_.prefix_cache_hits += l.seq.num_computed;
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    batch.push_back({running_.back().get(), n});
    budget -= n;
  }
}

// One forward over everything scheduled, grouped by adapter slot so that the
// LoRA segments are long; then each sequence's new token, or its prompt logits.
void Engine::run(std::vector<Scheduled>& batch, std::vector<StepOutput>& out) {
  std::stable_sort(batch.begin(), batch.end(), [](const Scheduled& a, const Scheduled& b) {
    return a.live->seq.lora_slot < b.live->seq.lora_slot;
  });
  std::vector<SeqWork> work;
  for (const Scheduled& s : batch) {
    Sequence& q = s.live->seq;
    const bool last = q.num_computed + s.num_tokens == int64_t(q.tokens.size());
    const bool sample = last && s.live->req.max_new_tokens > 0;
    const bool prompt = s.live->req.prompt_logits && q.num_computed < q.prompt_len;
    work.push_back({&q, s.num_tokens, sample, prompt});
    if (q.num_computed < q.prompt_len)
      stats_.prompt_tokens += std::min(s.num_tokens, q.prompt_len - q.num_computed);
  }
  const StepPlan plan = plan_step(work, kv_.page_size);
  // One sampling row per logit row; rows kept only as prompt logits pick
  // greedily (no draw) and their tokens are dropped.
  std::vector<SampleRow> rows;
  const bool any_sampled =
      std::any_of(work.begin(), work.end(), [](const SeqWork& w) { return w.logits; });
  for (size_t i = 0; i < work.size() && any_sampled; ++i)
    for (int32_t r = plan.logit_indptr[i]; r < plan.logit_indptr[i + 1]; ++r) {
      const bool sampled = work[i].logits && r + 1 == plan.logit_indptr[i + 1];
      rows.push_back(sampled ? sample_row(batch[i].live->req.sampling, batch[i].live->rng)
                             : SampleRow{});
    }
  const StepResult result = runner_.run(plan, rows);
  ++stats_.steps;
  for (size_t i = 0; i < work.size(); ++i) {
    Live& l = *batch[i].live;
    const int64_t first = l.seq.num_computed;
    l.seq.num_computed += work[i].num_tokens;
    if (config_.prefix_cache)  // before the sequence may finish and let its pages go
      kv_.pages.cache_full_pages(l.seq.pages, l.seq.tokens, l.seq.num_computed, prefix_salt(l));
    if (work[i].all_logits) keep_prompt_logits(l, first, result.logits, plan.logit_indptr[i]);
    if (work[i].logits)
      append_token(l, result.tokens[size_t(plan.logit_indptr[i + 1] - 1)], out);
    else if (l.seq.num_computed == l.seq.prompt_len && l.req.max_new_tokens == 0)
      finish(l, FinishReason::length, out);  // the prompt alone was asked for
  }
}

// Copies the step's logit rows of prompt positions [first_position, ...) that
// are not kept yet (rows recomputed after a preemption are not).
void Engine::keep_prompt_logits(Live& l, int64_t first_position, const Tensor& logits,
                                int64_t first_row) {
  const int64_t vocab = model_.config().vocab_size;
  if (l.prompt_logits.empty()) l.prompt_logits = host_alloc(DType::f32, {l.seq.prompt_len, vocab});
  const int64_t end = std::min(l.seq.num_computed, l.seq.prompt_len);
  for (int64_t p = std::max(first_position, l.logits_rows); p < end; ++p) {
    const float* row = logits.ptr<float>() + (first_row + p - first_position) * vocab;
    std::memcpy(l.prompt_logits.ptr<float>() + p * vocab, row, size_t(vocab) * sizeof(float));
    l.logits_rows = p + 1;
  }
}

// Appends the sampled token; the request ends at an eos / stop token or at
// max_new_tokens.
void Engine::append_token(Live& l, int32_t tok, std::vector<StepOutput>& out) {
  l.seq.tokens.push_back(tok);
  ++l.generated;
  ++stats_.generated_tokens;
  StepOutput o;
  o.id = l.req.id;
  o.new_tokens = {tok};
  const std::vector<int64_t>& eos = model_.config().eos_token_ids;
  const std::vector<int32_t>& stop = l.req.stop_token_ids;
  const bool stopped =
      !l.req.ignore_eos && (std::find(eos.begin(), eos.end(), int64_t(tok)) != eos.end() ||
                            std::find(stop.begin(), stop.end(), tok) != stop.end());
  if (stopped)
    finish(l, FinishReason::eos, out, std::move(o));
  else if (l.generated >= l.req.max_new_tokens)
    finish(l, FinishReason::length, out, std::move(o));
  else
    out.push_back(std::move(o));
}

}  // namespace philora::engine
