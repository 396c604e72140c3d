#include "engine/engine.h"

#include <algorithm>

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

Status Engine::add_request(GenerationRequest r) {
  const model::Phi3Config& c = model_.config();
  if (r.prompt.empty()) return Status::errorf("request '{}': the prompt is empty", r.id);
  for (int32_t t : r.prompt)
    if (t < 0 || t >= c.vocab_size)
      return Status::errorf("request '{}': token id {} is outside the vocabulary [0, {})", r.id, t,
                            c.vocab_size);
  if (r.max_new_tokens < 1)
    return Status::errorf("request '{}': max_new_tokens must be at least 1", r.id);
  const int64_t total = int64_t(r.prompt.size()) + r.max_new_tokens;
  if (total > c.max_position_embeddings)
    return Status::errorf(
        "request '{}': prompt ({} tokens) + max_new_tokens ({}) exceeds the model's {} positions",
        r.id, r.prompt.size(), r.max_new_tokens, c.max_position_embeddings);
  if (total > max_sequence_tokens())
    return Status::errorf("request '{}': {} tokens can never fit the KV cache ({} tokens)", r.id,
                          total, max_sequence_tokens());
  if (r.adapter && !adapters_)
    return Status::errorf("request '{}': adapter '{}' requested but this engine has no adapters",
                          r.id, *r.adapter);
  auto l = std::make_unique<Live>();
  l->seq.id = r.id;
  l->seq.tokens = r.prompt;
  l->seq.prompt_len = int64_t(r.prompt.size());
  l->seq.rope_long = model::uses_long_rope(c, total);
  l->rng.seed(r.sampling.seed);
  l->req = std::move(r);
  waiting_.push_back(std::move(l));
  return Status();
}

int64_t Engine::max_sequence_tokens() const {
  const int64_t usable_pages = kv_.allocator.num_blocks() - runner_.reserved_pages();
  return std::min(model_.config().max_position_embeddings, usable_pages * kv_.page_size);
}

void Engine::abort(const std::string& id) {
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it)
    if ((*it)->req.id == id) {
      finish(**it, "abort", pending_);
      waiting_.erase(it);
      return;
    }
  for (auto it = running_.begin(); it != running_.end(); ++it)
    if ((*it)->req.id == id) {
      finish(**it, "abort", pending_);
      running_.erase(it);
      return;
    }
}

void Engine::preempt(Live& l) {
  release_pages(l.seq, kv_);
  if (l.has_slot && adapters_) adapters_->release(l.seq.lora_slot);
  l.has_slot = false;
  l.seq.lora_slot = -1;
  l.seq.num_computed = 0;  // recompute prompt + generated tokens later
  ++stats_.preemptions;
}

void Engine::finish(Live& l, const std::string& reason, std::vector<StepOutput>& out,
                    const std::string& error) {
  release_pages(l.seq, kv_);
  if (l.has_slot && adapters_) adapters_->release(l.seq.lora_slot);
  l.has_slot = false;
  StepOutput o;
  o.id = l.req.id;
  o.finished = true;
  o.finish_reason = reason;
  o.error = error;
  out.push_back(std::move(o));
}

std::vector<StepOutput> Engine::step() {
  std::vector<StepOutput> out;
  out.swap(pending_);
  int64_t budget = config_.max_batched_tokens;
  std::vector<Live*> scheduled;
  std::vector<int64_t> counts;

  // 1. Running sequences, oldest first; preempt the newest when pages run out.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Live& l = *running_[i];
    const int64_t n = std::min<int64_t>(int64_t(l.seq.tokens.size()) - l.seq.num_computed, budget);
    bool ok = reserve_pages(l.seq, l.seq.num_computed + n, kv_).ok();
    while (!ok && running_.size() > i + 1) {
      preempt(*running_.back());
      waiting_.push_front(std::move(running_.back()));
      running_.pop_back();
      ok = reserve_pages(l.seq, l.seq.num_computed + n, kv_).ok();
    }
    if (!ok) {  // nothing newer to take pages from: this one waits
      preempt(l);
      waiting_.push_front(std::move(running_[i]));
      running_.erase(running_.begin() + int64_t(i));
      continue;
    }
    scheduled.push_back(&l);
    counts.push_back(n);
    budget -= n;
    ++i;
  }

  // 2. Admit waiting sequences in arrival order while budget, pages and slots last.
  while (!waiting_.empty() && budget > 0 && int64_t(running_.size()) < config_.max_running) {
    Live& l = *waiting_.front();
    if (l.req.adapter && !l.has_slot) {
      if (!adapters_->slot_available(*l.req.adapter)) break;  // wait for a running one to finish
      auto slot = adapters_->acquire(*l.req.adapter);
      if (!slot.ok()) {  // unknown or bad adapter: this request fails, the others go on
        finish(l, "error", out, slot.status().message());
        waiting_.pop_front();
        continue;
      }
      l.seq.lora_slot = *slot;
      l.has_slot = true;
    }
    const int64_t n = std::min<int64_t>(int64_t(l.seq.tokens.size()) - l.seq.num_computed, budget);
    if (!reserve_pages(l.seq, l.seq.num_computed + n, kv_).ok()) {
      if (l.has_slot) adapters_->release(l.seq.lora_slot);
      l.has_slot = false;
      l.seq.lora_slot = -1;
      release_pages(l.seq, kv_);
      break;
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    scheduled.push_back(running_.back().get());
    counts.push_back(n);
    budget -= n;
  }
  if (scheduled.empty()) return out;

  // 3. One forward over everything scheduled, grouped by adapter slot so the
  //    LoRA segments are long.
  std::vector<size_t> order(scheduled.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return scheduled[a]->seq.lora_slot < scheduled[b]->seq.lora_slot;
  });
  std::vector<SeqWork> work;
  std::vector<Live*> sampled;  // rows of the logits, in order
  for (size_t k : order) {
    Live& l = *scheduled[k];
    const bool logits = l.seq.num_computed + counts[k] == int64_t(l.seq.tokens.size());
    work.push_back({&l.seq, counts[k], logits});
    if (logits) sampled.push_back(&l);
    if (l.seq.num_computed < l.seq.prompt_len)
      stats_.prompt_tokens += std::min(counts[k], l.seq.prompt_len - l.seq.num_computed);
  }
  const model::Phi3Config& c = model_.config();
  StepPlan plan = plan_step(work, kv_.page_size, false);
  std::vector<SampleRow> rows;
  for (Live* l : sampled) rows.push_back(sample_row(l->req.sampling, l->rng));
  const std::vector<int32_t> tokens = runner_.run(plan, rows);
  ++stats_.steps;
  for (const SeqWork& w : work) w.seq->num_computed += w.num_tokens;

  // 4. Append, check stops.
  const std::vector<int64_t>& eos = c.eos_token_ids;
  for (size_t r = 0; r < sampled.size(); ++r) {
    Live& l = *sampled[r];
    const int32_t tok = tokens[r];
    l.seq.tokens.push_back(tok);
    ++l.generated;
    ++stats_.generated_tokens;
    StepOutput o;
    o.id = l.req.id;
    o.new_tokens = {tok};
    const bool stop = !l.req.ignore_eos &&
                      (std::find(eos.begin(), eos.end(), int64_t(tok)) != eos.end() ||
                       std::find(l.req.stop_token_ids.begin(), l.req.stop_token_ids.end(), tok) !=
                           l.req.stop_token_ids.end());
    if (stop || l.generated >= l.req.max_new_tokens) {
      o.finished = true;
      o.finish_reason = stop ? "stop" : "length";
      l.done = true;
      release_pages(l.seq, kv_);
      if (l.has_slot && adapters_) adapters_->release(l.seq.lora_slot);
      l.has_slot = false;
    }
    out.push_back(std::move(o));
  }
  std::erase_if(running_, [](const std::unique_ptr<Live>& l) { return l->done; });
  return out;
}

}  // namespace philora::engine
