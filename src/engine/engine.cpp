#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <span>

#include "backend/cpu/cpu_backend.h"
#include "engine/plan.h"
#include "engine/speculate.h"
#include "model/rope.h"
#include "structured/matcher.h"

namespace philora::engine {

Engine::Engine(model::Phi3ForCausalLM& model, kv::KvCache& kv, lora::AdapterStore* adapters,
               EngineConfig config, const tokenizer::Tokenizer* tokenizer)
    : model_(model),
      kv_(kv),
      adapters_(adapters),
      config_(config),
      tokenizer_(tokenizer),
      runner_(model, kv, adapters ? &adapters->slots() : nullptr, config.step_graphs),
      counts_(model.backend(), model.config().vocab_size,
              config.count_rows > 0 ? config.count_rows : config.max_running),
      seeds_(std::random_device{}()) {}

Engine::~Engine() {
  if (mask_filler_) mask_filler_->wait();
}

namespace {

Status check_token(const Request& r, int32_t t, int64_t vocab, const char* what) {
  if (t < 0 || t >= vocab)
    return Status::errorf("request '{}': {} token id {} is outside the vocabulary [0, {})", r.id,
                          what, t, vocab);
  return Status();
}

// The sampling and stopping parameters: in range, token ids in the vocabulary.
Status validate_sampling(const Request& r, int64_t vocab) {
  const SamplingParams& p = r.sampling;
  auto fail = [&](std::string_view what) { return Status::errorf("request '{}': {}", r.id, what); };
  if (!p.greedy && !(p.temperature > 0.0f) && p.temperature != 0.0f)
    return fail("temperature must not be negative");
  if (p.top_k < 0) return fail("top_k must not be negative");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return fail("top_p must be in (0, 1]");
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) return fail("min_p must be in [0, 1]");
  if (!(p.typical_p > 0.0f && p.typical_p <= 1.0f)) return fail("typical_p must be in (0, 1]");
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty))
    return fail("repetition_penalty must be a finite number > 0");
  if (!std::isfinite(p.frequency_penalty) || !std::isfinite(p.presence_penalty))
    return fail("frequency_penalty and presence_penalty must be finite");
  for (const auto& [t, v] : p.logit_bias) {
    PHILORA_RETURN_IF_ERROR(check_token(r, t, vocab, "logit_bias"));
    if (!std::isfinite(v)) return fail("a logit_bias value must be finite");
  }
  for (const std::vector<int32_t>& w : p.bad_words) {
    if (w.empty()) return fail("a bad word must hold at least one token id");
    for (int32_t t : w) PHILORA_RETURN_IF_ERROR(check_token(r, t, vocab, "bad word"));
  }
  for (int32_t t : r.stop_token_ids) PHILORA_RETURN_IF_ERROR(check_token(r, t, vocab, "stop"));
  if (r.min_new_tokens < 0 || r.min_new_tokens > r.max_new_tokens)
    return fail("min_new_tokens must be in [0, max_new_tokens]");
  for (const std::string& s : r.stop)
    if (s.empty()) return fail("a stop string must not be empty");
  for (const auto& k : {r.logprobs, r.prompt_logprobs})
    if (k && (*k < 0 || *k > kMaxLogprobs))
      return Status::errorf("request '{}': logprobs must be in [0, {}]", r.id, kMaxLogprobs);
  return Status();
}

// n and best_of: 1 ≤ n ≤ best_of ≤ kMaxBestOf; several candidates need new
// tokens, and best_of > n needs sampling. vLLM (V0) and LoRAX / TGI refuse
// best_of > 1 with greedy sampling, its candidates being identical; n > 1
// with greedy gives n identical outputs, as vLLM V1 does.
Status validate_outputs(const Request& r) {
  auto fail = [&](std::string_view what) { return Status::errorf("request '{}': {}", r.id, what); };
  if (r.n < 1) return fail(fmt::format("n must be at least 1 (got {})", r.n));
  if (r.best_of && *r.best_of < r.n)
    return fail(fmt::format("best_of ({}) must be at least n ({})", *r.best_of, r.n));
  const int32_t candidates = r.num_candidates();
  if (candidates > kMaxBestOf)
    return fail(fmt::format("n and best_of must be at most {} (got {})", kMaxBestOf, candidates));
  if (candidates == 1) return Status();
  if (r.max_new_tokens == 0) return fail("n and best_of greater than 1 need max_new_tokens ≥ 1");
  if (r.prompt_logits) return fail("prompt logits come with one output: n and best_of must be 1");
  const bool greedy = r.sampling.greedy || r.sampling.temperature <= 0.0f;
  if (candidates > r.n && greedy)
    return fail(fmt::format(
        "best_of ({}) greater than n ({}) needs sampling: greedy candidates are all the same",
        candidates, r.n));
  return Status();
}

}  // namespace

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
  PHILORA_RETURN_IF_ERROR(validate_outputs(r));
  if (r.constraint && int64_t(r.constraint->vocab().size()) > c.vocab_size)
    return Status::errorf(
        "request '{}': the constraint was compiled for a vocabulary of {} tokens, the model has {}",
        r.id, r.constraint->vocab().size(), c.vocab_size);
  return validate_sampling(r, c.vocab_size);
}

// A request with several candidates (n / best_of) is queued as candidate 0;
// the others wait with it until its prompt is computed (fork_candidates).
Status Engine::add_request(Request r) {
  PHILORA_RETURN_IF_ERROR(validate(r));
  const uint64_t seed = r.sampling.seed ? *r.sampling.seed : seeds_();
  const int32_t candidates = r.num_candidates();
  std::shared_ptr<Group> group;
  if (candidates > 1) {
    group = std::make_shared<Group>();
    group->n = r.n;
    group->best_of = candidates;
    group->running = candidates;
    group->hold = candidates > r.n;
    if (group->hold) group->held.resize(size_t(candidates));
  }
  std::vector<std::unique_ptr<Live>> others;
  for (int32_t i = 1; i < candidates; ++i) {
    Request c = r;
    c.prompt_logprobs.reset();  // the request's, reported once with candidate 0
    others.push_back(make_live(std::move(c), candidate_seed(seed, i), i, group));
  }
  std::unique_ptr<Live> l = make_live(std::move(r), seed, 0, group);
  l->unforked = std::move(others);
  waiting_.push_back(std::move(l));
  return Status();
}

std::unique_ptr<Engine::Live> Engine::make_live(Request r, uint64_t seed, int32_t index,
                                                std::shared_ptr<Group> group) const {
  auto l = std::make_unique<Live>();
  l->index = index;
  l->group = std::move(group);
  l->seq.id = r.id;
  l->seq.tokens = r.prompt;
  l->seq.prompt_len = int64_t(r.prompt.size());
  l->seq.rope_long =
      model::uses_long_rope(model_.config(), int64_t(r.prompt.size()) + r.max_new_tokens);
  l->seed = seed;
  l->rng.seed(l->seed);
  if (config_.speculate_medusa > 0 && config_.medusa) l->heads = config_.medusa->find(r.adapter);
  if (r.constraint) l->matcher = std::make_unique<structured::Matcher>(r.constraint);
  if (tokenizer_ && r.max_new_tokens > 0) {
    // The last prompt ids give the first new token its context (its leading space).
    const size_t ctx = std::min<size_t>(r.prompt.size(), 4);
    l->detok = std::make_unique<tokenizer::IncrementalDetokenizer>(
        *tokenizer_, r.skip_special_tokens,
        std::span<const int32_t>(r.prompt.data() + r.prompt.size() - ctx, ctx));
  }
  l->req = std::move(r);
  return l;
}

int64_t Engine::max_sequence_tokens() const {
  const int64_t usable_pages = kv_.pages.num_pages() - runner_.reserved_pages();
  return std::min(model_.config().max_position_embeddings, usable_pages * kv_.page_size);
}

// Every candidate of the request: waiting, running, or not forked yet (they
// end with candidate 0).
void Engine::abort(const std::string& id) {
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if ((*it)->req.id != id) {
      ++it;
      continue;
    }
    finish(**it, FinishReason::abort, pending_);
    it = waiting_.erase(it);
  }
  for (auto it = running_.begin(); it != running_.end();) {
    if ((*it)->req.id != id) {
      ++it;
      continue;
    }
    finish(**it, FinishReason::abort, pending_);
    it = running_.erase(it);
  }
}

// Lets go of the sequence's pages (its full ones stay cached) and adapter slot.
void Engine::release(Live& l) {
  kv_.pages.release(l.seq.pages);
  for (Live::DraftPath& p : l.alt_paths) kv_.pages.release(p.seq.pages);
  l.alt_paths.clear();
  l.seq.num_computed = 0;
  if (l.has_slot && adapters_) adapters_->release(l.seq.lora_slot);
  counts_.release(l.count_row);
  l.count_row = -1;
  l.has_slot = false;
  l.seq.lora_slot = -1;
  l.adapter_identity = 0;
  l.medusa_next.clear();
  l.medusa_top.clear();
  l.medusa_top_logprob.clear();
  l.medusa_at = 0;
}

void Engine::preempt(Live& l) {
  release(l);  // recompute prompt + generated tokens later (from the cache where it can)
  ++stats_.preemptions;
}

// Ends the request (the candidate): `o` may carry the step's new tokens or an
// error's messages. Candidates not forked yet end with candidate 0, for the
// same reason (an abort, or an error before its prompt was computed).
void Engine::finish(Live& l, FinishReason reason, std::vector<StepOutput>& out, StepOutput o) {
  release(l);
  l.done = true;
  o.id = l.req.id;
  o.finish = reason;
  o.seed = l.seed;
  if (l.logits_rows == l.seq.prompt_len) o.prompt_logits = std::move(l.prompt_logits);
  if (wants_prompt_logprobs(l) && int64_t(l.prompt_logprobs.size()) == l.seq.prompt_len - 1) {
    o.prompt_logprobs = std::move(l.prompt_logprobs);
    l.prompt_logprobs_sent = true;
  }
  const std::vector<std::unique_ptr<Live>> unforked = std::move(l.unforked);
  StepOutput same;
  same.error = o.error;
  same.error_detail = o.error_detail;
  emit(l, std::move(o), out);
  for (const std::unique_ptr<Live>& c : unforked) finish(*c, reason, out, same);
}

namespace {

// Appends a candidate's next output to what it has handed out so far.
void merge(StepOutput& into, StepOutput o) {
  into.id = std::move(o.id);
  into.new_tokens.insert(into.new_tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
  into.drafted.insert(into.drafted.end(), o.drafted.begin(), o.drafted.end());
  into.text += o.text;
  into.logprobs.insert(into.logprobs.end(), std::make_move_iterator(o.logprobs.begin()),
                       std::make_move_iterator(o.logprobs.end()));
  if (o.prompt_logprobs) into.prompt_logprobs = std::move(o.prompt_logprobs);
  into.finish = o.finish;
  into.error = std::move(o.error);
  into.error_detail = std::move(o.error_detail);
  into.stop_string = std::move(o.stop_string);
  into.seed = o.seed;
  into.cumulative_logprob = o.cumulative_logprob;
}

}  // namespace

// Hands out a candidate's output: at once, or, when the request has best_of >
// n, merged into what the candidate holds until the last one finishes; then
// every candidate once, ranked by cumulative logprob (StepOutput::index).
void Engine::emit(Live& l, StepOutput o, std::vector<StepOutput>& out) {
  o.index = l.index;
  if (tracks_logprob(l)) o.cumulative_logprob = l.cumulative_logprob;
  Group* g = l.group.get();
  if (g && o.finished()) o.outputs_running = --g->running;
  if (!g || !g->hold) {
    out.push_back(std::move(o));
    return;
  }
  merge(g->held[size_t(l.index)], std::move(o));
  if (g->running > 0) return;
  std::vector<int32_t> order(size_t(g->best_of));
  for (int32_t i = 0; i < g->best_of; ++i) order[size_t(i)] = i;
  auto score = [&](int32_t i) { return g->held[size_t(i)].cumulative_logprob.value_or(-INFINITY); };
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return score(a) > score(b); });
  StepOutput& best = g->held[size_t(order[0])];  // the request's prompt logprobs go first
  if (!best.prompt_logprobs) std::swap(best.prompt_logprobs, g->held[0].prompt_logprobs);
  for (int32_t rank = 0; rank < g->best_of; ++rank) {
    StepOutput& h = g->held[size_t(order[size_t(rank)])];
    h.index = rank;
    h.best_of_extra = rank >= g->n;
    h.outputs_running = g->best_of - 1 - rank;
    out.push_back(std::move(h));
  }
}

// Candidate 0 has computed the prompt: the other candidates take its pages
// (PageManager::fork) but the one that holds the last prompt token, whose
// tokens each computes into a page of its own (copy-on-write of the partial
// page by recomputing at most page_size tokens, as no page is ever written
// while shared), and run from the next step; a candidate finding no room
// (max_running, a row of token counts) waits at the head of the queue
// without pages, to be admitted as a preempted sequence is.
void Engine::fork_candidates(Live& l, std::vector<StepOutput>& out) {
  const int64_t shared = (l.seq.prompt_len - 1) / kv_.page_size;
  std::vector<std::unique_ptr<Live>> wait;
  for (std::unique_ptr<Live>& c : l.unforked) {
    Live& k = *c;
    if (int64_t(running_.size()) < config_.max_running && acquire_adapter(k, out) &&
        acquire_count_row(k)) {
      k.seq.pages = kv_.pages.fork(l.seq.pages, shared);
      k.seq.num_computed = shared * kv_.page_size;
      running_.push_back(std::move(c));
    } else if (!k.done) {
      release(k);
      wait.push_back(std::move(c));
    }
  }
  l.unforked.clear();
  waiting_.insert(waiting_.begin(), std::make_move_iterator(wait.begin()),
                  std::make_move_iterator(wait.end()));
}

std::vector<StepOutput> Engine::step() {
  std::vector<StepOutput> out;
  out.swap(pending_);
  if (adapters_ &&
      config_.wait_for_adapter_loads) {  // every load asked for ends before this step's poll
    for (const std::unique_ptr<Live>& l : waiting_)
      if (l->req.adapter && !l->has_slot) adapters_->prepare(*l->req.adapter);  // starts the load
    adapters_->wait_for_all_loads();
  }
  if (adapters_) adapters_->poll();  // adapters loaded from disk since the last step
  int64_t budget = config_.max_batched_tokens;
  std::vector<Scheduled> batch;
  // Speculation never costs real work: every running sequence's token or
  // chunk first, then the waiting prompts, then drafts from what is left.
  schedule_running(batch, budget);
  const size_t running = batch.size();
  admit_waiting(batch, budget, out);
  schedule_drafts(batch, running, budget);
  if (!batch.empty()) run(batch, out);
  // Nothing to run but adapters loading: wait a little for one rather than spin.
  if (batch.empty() && out.empty() && adapters_ && adapters_->loads_in_flight() > 0)
    adapters_->wait_for_load(std::chrono::milliseconds(5));
  std::erase_if(running_, [](const std::unique_ptr<Live>& l) { return l->done; });
  return out;
}

// Running sequences, oldest first: a decode token or the next prompt chunk
// each; the newest is preempted when pages run out. Drafts come later
// (schedule_drafts), from what the running and admitted sequences leave.
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

// The drafts of the first `running` sequences of the batch (those running
// before this step), oldest first, from the budget and the free pages the
// step's required work left (never a cached page: a draft evicts nothing).
void Engine::schedule_drafts(std::vector<Scheduled>& batch, size_t running, int64_t& budget) {
  // First chains first, oldest first; then, from what they leave, alternatives.
  std::vector<std::pair<Live*, std::vector<std::vector<int32_t>>>> trees;
  for (size_t i = 0; i < running && budget > 0; ++i) {
    Scheduled& s = batch[i];
    Live& l = *s.live;
    std::vector<std::vector<int32_t>> chains = draft(l, budget);
    if (chains.empty()) continue;
    std::vector<int32_t> drafts = std::move(chains[0]);
    if (l.matcher && !drafts.empty()) {  // the drafts the constraint takes, in order
      size_t ok = 0;
      while (ok < drafts.size() && l.matcher->accept_token(drafts[ok])) ++ok;
      l.matcher->rollback(ok);
      drafts.resize(ok);
    }
    const int64_t end = l.seq.num_computed + s.num_tokens;  // tokens held after the required ones
    const int64_t room =
        (int64_t(l.seq.pages.ids.size()) + kv_.pages.num_free()) * kv_.page_size - end;
    if (int64_t(drafts.size()) > room) drafts.resize(size_t(std::max<int64_t>(room, 0)));
    if (drafts.empty() || !kv_.pages.reserve(l.seq.pages, end + int64_t(drafts.size()))) continue;
    l.drafts = std::move(drafts);
    l.seq.tokens.insert(l.seq.tokens.end(), l.drafts.begin(), l.drafts.end());
    s.num_tokens += int64_t(l.drafts.size());
    budget -= int64_t(l.drafts.size());
    if (chains.size() > 1) trees.push_back({&l, std::move(chains)});
  }
  std::vector<std::pair<int32_t, int32_t>> copies;  // partial pages of alternative chains
  bool alternatives = false;
  for (auto& [l, chains] : trees) {
    if (budget <= 0) break;
    schedule_alternatives(*l, chains, budget, copies);
    alternatives = alternatives || !l->alt_paths.empty();
  }
  if (!alternatives) return;
  if (!copies.empty()) model_.copy_kv_pages(kv_, copies);  // queued before the step
  // Each alternative's row group right after its sequence's (run() keeps them so).
  std::vector<Scheduled> with;
  for (const Scheduled& s : batch) {
    with.push_back(s);
    if (s.path >= 0) continue;
    for (size_t p = 0; p < s.live->alt_paths.size(); ++p)
      with.push_back({s.live, int64_t(s.live->alt_paths[p].drafts.size()) + 1, int32_t(p)});
  }
  batch = std::move(with);
}

// The alternatives of a sequence whose first chain (l.drafts) is scheduled,
// in order, while they pay (alternatives_pay), fit the budget and find free
// pages: each a sequence of its own with the same tokens before the drafts,
// the full pages of the sequence shared (PageManager::fork), a new page for
// the partial one filled by a copy of it (queued on the backend before the
// step), and new pages for its drafts.
void Engine::schedule_alternatives(Live& l, std::vector<std::vector<int32_t>>& chains,
                                   int64_t& budget,
                                   std::vector<std::pair<int32_t, int32_t>>& copies) {
  const auto k = int64_t(l.drafts.size());
  const int64_t base = l.seq.num_computed, page = kv_.page_size;
  const int64_t full = base / page;
  int64_t rows = 0;
  // Whether a chain cut to k drafts verifies nothing a chain taken does not.
  auto known = [&](const std::vector<int32_t>& c) {
    auto covers = [&](const std::vector<int32_t>& p) { return starts_with(p, c); };
    return covers(l.drafts) ||
           std::any_of(l.alt_paths.begin(), l.alt_paths.end(),
                       [&](const Live::DraftPath& p) { return covers(p.drafts); });
  };
  for (size_t c = 1; c < chains.size(); ++c) {
    std::vector<int32_t>& chain = chains[c];
    if (int64_t(chain.size()) > k) chain.resize(size_t(k));
    if (chain.empty() || known(chain)) continue;
    const int64_t r = int64_t(chain.size()) + 1;
    const int64_t pages = (base + r + page - 1) / page - full;
    if (r > budget || pages > kv_.pages.num_free() ||
        !alternatives_pay(l.draft_stats, speculate_row_cost(), k, rows + r))
      break;
    Live::DraftPath p;
    p.drafts = std::move(chain);
    Sequence& q = p.seq;
    q.id = l.seq.id;
    q.prompt_len = l.seq.prompt_len;
    q.num_computed = base;
    q.lora_slot = l.seq.lora_slot;
    q.rope_long = l.seq.rope_long;
    q.first_token = base;  // its last token and drafts only: what its rows compute
    q.tokens.assign(1, l.seq.tokens[size_t(base)]);
    q.tokens.insert(q.tokens.end(), p.drafts.begin(), p.drafts.end());
    q.pages = kv_.pages.fork(l.seq.pages, full);
    if (!kv_.pages.reserve(q.pages, base + r)) {  // cannot happen: the pages were free
      kv_.pages.release(q.pages);
      break;
    }
    if (base % page != 0)
      copies.push_back({l.seq.pages.ids[size_t(full)], q.pages.ids[size_t(full)]});
    rows += r;
    budget -= r;
    ++stats_.spec_alt_chains;
    l.alt_paths.push_back(std::move(p));
  }
}

// Ends the request with its adapter's error; the others go on.
void Engine::fail_adapter(Live& l, const lora::AdapterError& e, std::vector<StepOutput>& out) {
  StepOutput o;
  o.error = e.message;
  o.error_detail = e.detail;
  using Kind = lora::AdapterError::Kind;
  finish(l,
         e.kind == Kind::not_found ? FinishReason::unknown_adapter
         : e.kind == Kind::invalid ? FinishReason::adapter_invalid
                                   : FinishReason::no_adapter_slot,
         out, std::move(o));
}

// Pins the request's adapter in a slot. False when it must wait — for its
// load from disk (on the store's loader thread) or for a slot — or when it
// failed (then it is finished with the reason).
bool Engine::acquire_adapter(Live& l, std::vector<StepOutput>& out) {
  if (!l.req.adapter || l.has_slot) return true;
  const std::string& name = *l.req.adapter;
  if (!adapters_) {
    StepOutput o;
    o.error = o.error_detail = fmt::format("adapter '{}' not found: this engine serves none", name);
    finish(l, FinishReason::unknown_adapter, out, std::move(o));
    return false;
  }
  const lora::Preparation p = adapters_->prepare(name);
  if (p.error) {
    fail_adapter(l, *p.error, out);
    return false;
  }
  if (!p.ready) return false;                            // loading
  if (!adapters_->slot_available(name)) return false;    // wait for a running one to finish
  const lora::Acquired slot = adapters_->acquire(name);  // an upload, no disk
  if (!slot.ok()) {
    fail_adapter(l, slot.error(), out);
    return false;
  }
  l.seq.lora_slot = *slot;
  l.has_slot = true;
  if (*slot == draining_slot_)
    draining_slot_ = -1;  // drained and taken: the next blocked request picks anew
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
  int64_t reusable = int64_t(l.seq.tokens.size()) - 1;
  if (l.req.prompt_logits) reusable = std::min(reusable, l.logits_rows);
  if (wants_prompt_logprobs(l)) reusable = std::min(reusable, int64_t(l.prompt_logprobs.size()));
  const bool every_prompt_row = l.req.prompt_logits || wants_prompt_logprobs(l);
  if (!config_.prefix_cache || (every_prompt_row && reusable == 0)) return false;
  l.seq.num_computed = kv_.pages.match_prefix(l.seq.pages, l.seq.tokens, prefix_salt(l), reusable);
  return true;
}

// A row of token counts for a sequence whose sampling has penalties, set to
// its tokens so far. False when it must wait for one.
bool Engine::acquire_count_row(Live& l) {
  if (!uses_counts(l.req.sampling) || l.req.max_new_tokens == 0 || l.count_row >= 0) return true;
  const std::optional<int32_t> row = counts_.acquire(l.seq.tokens, l.seq.prompt_len);
  if (!row) return false;
  l.count_row = *row;
  return true;
}

// Waiting sequences in arrival order, while budget, pages and row counts
// last. Every waiting request's adapter starts loading now (a bad one ends
// its request); a request whose adapter is still loading waits and lets the
// ones behind it pass. When a request finds every adapter slot pinned, the
// ones behind it that need a slot wait behind it (slots go in arrival
// order), and so do those whose adapter holds the slot it will get (the one
// with the fewest pins, kept until it is taken), so that the slot drains;
// requests for the base model or another resident adapter still pass.
void Engine::admit_waiting(std::vector<Scheduled>& batch, int64_t& budget,
                           std::vector<StepOutput>& out) {
  if (adapters_)
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      Live& l = **it;
      const lora::Preparation p = l.req.adapter && !l.has_slot
                                      ? adapters_->prepare(*l.req.adapter)
                                      : lora::Preparation{true, std::nullopt};
      if (!p.error) {
        ++it;
        continue;
      }
      fail_adapter(l, *p.error, out);
      it = waiting_.erase(it);
    }
  bool slot_blocked = false;  // a request before this one waits for a slot
  for (auto it = waiting_.begin();
       it != waiting_.end() && budget > 0 && int64_t(running_.size()) < config_.max_running;) {
    Live& l = **it;
    if (slot_blocked && adapters_ && l.req.adapter && !l.has_slot) {
      const int32_t slot = adapters_->resident_slot(*l.req.adapter);
      if (slot < 0 || slot == draining_slot_) {  // behind the one waiting for a slot
        ++it;
        continue;
      }
    }
    if (!acquire_adapter(l, out)) {
      if (l.done) {
        it = waiting_.erase(it);
        continue;
      }
      if (adapters_->prepare(*l.req.adapter).ready && !slot_blocked) {  // no slot free
        slot_blocked = true;
        const int32_t drain = adapters_->slot_to_drain();
        if (draining_slot_ < 0 || drain < 0) draining_slot_ = drain;
      }
      ++it;
      continue;
    }
    const bool looked_up = reuse_cached_prefix(l);
    const int64_t n = std::min<int64_t>(int64_t(l.seq.tokens.size()) - l.seq.num_computed, budget);
    if (!kv_.pages.reserve(l.seq.pages, l.seq.num_computed + n) || !acquire_count_row(l)) {
      release(l);  // the cached prefix too: it is looked up again next time
      break;
    }
    if (looked_up) {
      stats_.prefix_cache_queries += int64_t(l.seq.tokens.size());
      stats_.prefix_cache_hits += l.seq.num_computed;
    }
    running_.push_back(std::move(*it));
    it = waiting_.erase(it);
    batch.push_back({running_.back().get(), n});
    budget -= n;
  }
  if (!slot_blocked) draining_slot_ = -1;
}

// The sampling row of a sequence that samples this step: its parameters, its
// draw, its count row, and its bias and bans (logit bias, bad words, and the
// eos / stop ids until min_new_tokens).
SampleRow Engine::sampling_row(Live& l, int64_t ahead) {
  const SamplingParams& p = l.req.sampling;
  SampleRow row = sample_row(p, l.rng);
  row.repetition_penalty = p.repetition_penalty;
  row.frequency_penalty = p.frequency_penalty;
  row.presence_penalty = p.presence_penalty;
  row.count_row = l.count_row;
  if (l.req.logprobs) {
    row.logprobs = *l.req.logprobs;
    row.logprob_kind = l.req.logprob_kind == LogprobKind::processed ? 1 : 0;
  } else if (tracks_logprob(l)) {
    row.logprobs = 0;  // the chosen token's raw logprob alone (best_of's ranking)
  }
  std::map<int32_t, float> bias = p.logit_bias;
  if (!p.bad_words.empty()) {
    const auto end = l.seq.tokens.end() - int64_t(l.drafts.size()) + ahead;
    const std::vector<int32_t> output(l.seq.tokens.begin() + l.seq.prompt_len, end);
    for (int32_t t : banned_bad_words(p.bad_words, output)) bias[t] = -INFINITY;
  }
  // A constraint decides where the output may end (its mask allows the stop ids only there).
  if (l.generated + ahead < l.req.min_new_tokens && !l.req.ignore_eos && !l.matcher) {
    for (int64_t t : model_.config().eos_token_ids) bias[int32_t(t)] = -INFINITY;
    for (int32_t t : l.req.stop_token_ids) bias[t] = -INFINITY;
  }
  row.bias.assign(bias.begin(), bias.end());
  return row;
}

// One forward over everything scheduled, grouped by adapter slot so that the
// LoRA segments are long; then each sequence's new token, or its prompt
// logits / logprobs.
void Engine::run(std::vector<Scheduled>& batch, std::vector<StepOutput>& out) {
  std::stable_sort(batch.begin(), batch.end(), [](const Scheduled& a, const Scheduled& b) {
    return a.live->seq.lora_slot < b.live->seq.lora_slot;
  });
  std::vector<SeqWork> work;
  for (const Scheduled& s : batch) {
    Sequence& q = sequence(s);
    if (s.path >= 0) {  // an alternative chain: every row samples
      work.push_back({&q, s.num_tokens, true, true, false});
      continue;
    }
    const Request& r = s.live->req;
    const bool last = q.num_computed + s.num_tokens == int64_t(q.tokens.size());
    const bool sample = last && r.max_new_tokens > 0;
    const bool prompt =
        (r.prompt_logits || wants_prompt_logprobs(*s.live)) && q.num_computed < q.prompt_len;
    if (!s.live->drafts.empty())  // every row of the group samples, on the device
      work.push_back({&q, s.num_tokens, true, true, false});
    else
      work.push_back({&q, s.num_tokens, sample, prompt, r.prompt_logits});
    if (q.num_computed < q.prompt_len)
      stats_.prompt_tokens += std::min(s.num_tokens, q.prompt_len - q.num_computed);
  }
  // The constrained sequences' masks are filled on host threads from here on,
  // while the step is planned, staged and its forward launched.
  std::vector<int32_t> first_mask(work.size(), -1);
  StepMasks masks;
  struct WaitMasks {  // the jobs write into `masks`: never leave before they are done
    MaskFiller* filler;
    ~WaitMasks() {
      if (filler) filler->wait();
    }
  } wait_masks{nullptr};
  start_masks(batch, work, first_mask, masks);
  if (masks.rows > 0) wait_masks.filler = mask_filler_.get();
  const StepPlan plan = plan_step(work, kv_.page_size);
  // One sampling row per logit row. A prompt row picks greedily (its token is
  // dropped) and, for prompt logprobs, reports the next prompt token's.
  std::vector<SampleRow> rows;
  bool any_rows = false;
  for (size_t i = 0; i < work.size(); ++i)
    any_rows =
        any_rows || work[i].logits || (work[i].all_logits && wants_prompt_logprobs(*batch[i].live));
  for (size_t i = 0; i < work.size() && any_rows; ++i) {
    Live& l = *batch[i].live;
    if (!l.drafts.empty()) {  // row j follows the first j drafts and takes the j-th next draw
      if (batch[i].path < 0)
        l.draft_rng = l.rng;
      else
        l.rng = l.draft_rng;  // an alternative chain's rows draw as the first chain's
      for (int32_t r = plan.logit_indptr[i]; r < plan.logit_indptr[i + 1]; ++r) {
        rows.push_back(sampling_row(l, r - plan.logit_indptr[i]));
        if (first_mask[i] >= 0) rows.back().mask = first_mask[i] + (r - plan.logit_indptr[i]);
      }
      continue;
    }
    for (int32_t r = plan.logit_indptr[i]; r < plan.logit_indptr[i + 1]; ++r) {
      if (work[i].logits && r + 1 == plan.logit_indptr[i + 1]) {
        rows.push_back(sampling_row(l));
        rows.back().mask = first_mask[i];
        continue;
      }
      SampleRow row;
      const int64_t position =
          l.seq.num_computed + (r - plan.logit_indptr[i]) +
          (work[i].num_tokens - (plan.logit_indptr[i + 1] - plan.logit_indptr[i]));
      if (wants_prompt_logprobs(l) && position + 1 < l.seq.prompt_len) {
        row.logprobs = *l.req.prompt_logprobs;
        row.target = l.seq.tokens[size_t(position + 1)];
      }
      rows.push_back(row);
    }
  }
  // Medusa: the heads of the sequences that sample and may draft next step.
  // One set among them (the base model's, or one adapter's) and no prompt
  // rows: the step runs the heads on every logit row (a verified group's row
  // is known only after verification) and its drafts come back with its
  // tokens, inside its graph when it replays one. Several sets (mixed
  // adapters), or prompt rows: the step's hidden states come back and
  // medusa_propose runs each set on the rows it needs.
  const bool few = int64_t(running_.size()) <= config_.speculate_max_batch;
  auto proposes = [&](const Live& l) {
    return few && l.heads && !l.done && l.count_row < 0 && !uses_counts(l.req.sampling) &&
           !l.req.prompt_logits;
  };
  // The heads' top lists only when a sequence that proposes may branch.
  bool want_hidden = false, one_set = true, prompt_rows = false, branches = false;
  const model::MedusaHeads* heads = nullptr;
  for (size_t i = 0; i < work.size(); ++i) {
    const Live& l = *batch[i].live;
    prompt_rows = prompt_rows || (work[i].all_logits && l.drafts.empty());
    if (!proposes(l) || !work[i].logits) continue;
    want_hidden = true;
    branches = branches || drafts_tree(l);
    one_set = one_set && (!heads || heads == l.heads);
    heads = l.heads;
  }
  const model::MedusaHeads* in_step = want_hidden && one_set && !prompt_rows ? heads : nullptr;
  const int64_t head_top = branches ? medusa_top_tokens() : 0;
  const StepResult result = runner_.run(plan, rows, counts_.table(), &masks,
                                        want_hidden && !in_step, in_step, in_step ? head_top : 0);
  if (masks.wait) masks.wait();
  if (masks.rows > 0) {
    ++mask_stats_.steps;
    mask_stats_.masks += masks.rows;
    for (double t : *mask_seconds_) mask_stats_.fill_seconds += t;
  }
  ++stats_.steps;
  std::vector<std::pair<Live*, int32_t>> medusa_rows;  // (sequence, the row of its last token)
  for (size_t i = 0; i < work.size(); ++i) {
    Live& l = *batch[i].live;
    if (batch[i].path >= 0) continue;  // verified with its sequence's first chain
    if (!l.drafts.empty()) {
      std::vector<int32_t> first_rows = {plan.logit_indptr[i]};
      for (size_t p = 1; p <= l.alt_paths.size(); ++p)
        first_rows.push_back(plan.logit_indptr[i + p]);
      const int32_t last = verify(l, result, first_rows, out);
      if (want_hidden && proposes(l)) medusa_rows.push_back({&l, last});
      continue;
    }
    const int64_t first = l.seq.num_computed;
    l.seq.num_computed += work[i].num_tokens;
    if (config_.prefix_cache)  // before the sequence may finish and let its pages go
      kv_.pages.cache_full_pages(l.seq.pages, l.seq.tokens, l.seq.num_computed, prefix_salt(l));
    if (!l.unforked.empty() && l.seq.num_computed >= l.seq.prompt_len) fork_candidates(l, out);
    const int64_t first_row = plan.logit_indptr[i];
    const int64_t num_rows = plan.logit_indptr[i + 1] - first_row;
    if (work[i].all_logits && l.req.prompt_logits)
      keep_prompt_logits(l, first, result.logits, first_row);
    if (work[i].all_logits && wants_prompt_logprobs(l))
      keep_prompt_logprobs(l, first, result, first_row, num_rows);
    if (work[i].logits) {
      const auto r = size_t(first_row + num_rows - 1);
      append_token(l, result.tokens[r], token_logprobs(l, result, r), out);
      if (want_hidden && proposes(l)) medusa_rows.push_back({&l, int32_t(r)});
    } else if (l.seq.num_computed == l.seq.prompt_len && l.req.max_new_tokens == 0) {
      finish(l, FinishReason::length, out);  // the prompt alone was asked for
    }
  }
  if (!medusa_rows.empty()) medusa_propose(medusa_rows, result, in_step, head_top);
}

// Each constrained sequence that samples this step gets one mask per sampling
// row: the mask after its tokens so far, and for a drafted one also after
// each prefix of its drafts (the job advances the matcher over the drafts,
// which the constraint took when they were drafted, and rolls it back). One
// job per sequence, so a matcher is touched by one thread; the compiled
// constraint's per-state tables are shared and built once (std::call_once).
void Engine::start_masks(const std::vector<Scheduled>& batch, const std::vector<SeqWork>& work,
                         std::vector<int32_t>& first_mask, StepMasks& masks) {
  struct Job {
    Live* live;
    int32_t first;
    int32_t count;
  };
  auto jobs = std::make_shared<std::vector<Job>>();
  int32_t m = 0;
  for (size_t i = 0; i < work.size(); ++i) {
    Live& l = *batch[i].live;
    if (!l.matcher) continue;
    const int32_t count = !l.drafts.empty() ? int32_t(l.drafts.size()) + 1 : work[i].logits ? 1 : 0;
    if (count == 0) continue;
    first_mask[i] = m;
    jobs->push_back({&l, m, count});
    m += count;
  }
  masks.rows = m;
  masks.words = (model_.config().vocab_size + 31) / 32;
  if (m == 0) return;
  masks.bits.assign(size_t(m * masks.words), 0u);
  if (!mask_filler_) mask_filler_ = std::make_unique<MaskFiller>(config_.mask_threads);
  const int64_t words = masks.words;
  uint32_t* bits = masks.bits.data();
  mask_seconds_ = std::make_shared<std::vector<double>>(jobs->size(), 0.0);
  // The model's eos ids end a constrained output where it is complete, as the
  // tokenizer's stop ids do (the matcher's), should the two differ.
  std::vector<int32_t> eos;
  for (int64_t t : model_.config().eos_token_ids)
    if (t >= 0 && t < model_.config().vocab_size) eos.push_back(int32_t(t));
  mask_filler_->start(int64_t(jobs->size()), [jobs, bits, words, eos = std::move(eos),
                                              seconds = mask_seconds_](int64_t j) {
    const auto t0 = std::chrono::steady_clock::now();
    const Job& job = (*jobs)[size_t(j)];
    structured::Matcher& matcher = *job.live->matcher;
    int32_t advanced = 0;
    for (int32_t r = 0; r < job.count; ++r) {
      if (r > 0 && matcher.accept_token(job.live->drafts[size_t(r - 1)])) ++advanced;
      uint32_t* mask = bits + (job.first + r) * words;
      matcher.fill_mask(std::span<uint32_t>(mask, size_t(words)));
      if (matcher.is_accepting())
        for (int32_t t : eos) mask[t / 32] |= 1u << (t % 32);
    }
    matcher.rollback(size_t(advanced));
    (*seconds)[size_t(j)] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  });
  MaskFiller* filler = mask_filler_.get();
  masks.wait = [filler, stats = &mask_stats_] {
    const auto t0 = std::chrono::steady_clock::now();
    filler->wait();
    stats->wait_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
}

// The logprobs of the token sampled by logit row `row` (when the request asks
// for them), and its share of the cumulative logprob.
std::optional<PositionLogprobs> Engine::token_logprobs(Live& l, const StepResult& result,
                                                       size_t r) {
  if (tracks_logprob(l)) l.cumulative_logprob += double(result.logprob[r]);
  std::optional<PositionLogprobs> lp;
  if (l.req.logprobs) {
    lp.emplace();
    lp->chosen = {result.tokens[r], result.logprob[r]};
    for (int64_t j = 0; j < *l.req.logprobs; ++j) {
      const auto at = size_t(int64_t(r) * result.logprobs_width + j);
      lp->top.push_back({result.top_tokens[at], result.top_logprobs[at]});
    }
  }
  return lp;
}

double Engine::speculate_row_cost() const {
  if (config_.speculate_row_cost >= 0) return config_.speculate_row_cost;
  return model_.backend().device() == Device::cuda ? kGpuRowCost : kCpuRowCost;
}

int64_t Engine::max_drafts(const Live& l) const {
  int64_t most = std::max<int64_t>(config_.speculate_ngram, 0);
  if (config_.speculate_medusa > 0 && l.heads)
    most = std::max(most, std::min(config_.speculate_medusa, l.heads->num_heads()));
  return most;
}

// The drafts of a running sequence this step, at most `room`: n-gram lookup
// over its prompt and output, or its Medusa heads' tokens from the step that
// computed its last token, when it is decoding (one token to compute, prompt
// done), may draft (no penalties, no prompt logits, few sequences running)
// and has room (max_new_tokens: the last row's token is one more).
bool Engine::drafts_tree(const Live& l) const {
  return config_.speculate_paths > 1 && !l.matcher && l.req.sampling.bad_words.empty();
}

std::vector<std::vector<int32_t>> Engine::draft(const Live& l, int64_t room) const {
  if (max_drafts(l) <= 0 || int64_t(running_.size()) > config_.speculate_max_batch) return {};
  const Sequence& q = l.seq;
  if (int64_t(q.tokens.size()) - q.num_computed != 1 || q.num_computed < q.prompt_len ||
      !l.unforked.empty() || l.count_row >= 0 || uses_counts(l.req.sampling) ||
      l.req.prompt_logits || wants_prompt_logprobs(l))
    return {};
  const int64_t limit = draft_length(l.draft_stats.rate(), speculate_row_cost(), max_drafts(l));
  const int64_t k = std::min({limit, l.req.max_new_tokens - l.generated - 1, room});
  if (k <= 0) return {};
  const int64_t paths = drafts_tree(l) ? config_.speculate_paths : 1;
  std::vector<std::vector<int32_t>> chains;
  if (config_.speculate_ngram > 0)
    chains = ngram_draft_paths(q.tokens, std::min(k, config_.speculate_ngram), paths);
  // The heads' chains: alone, or (ngram+medusa) where lookup found none or
  // leaves room for more, none that a chain taken covers.
  if (!l.heads || l.medusa_at != q.tokens.size() || int64_t(chains.size()) >= paths)
    return chains;  // (no hidden state of its last token yet)
  const auto n = std::min<size_t>(size_t(k), l.medusa_next.size());
  if (n == 0) return chains;
  const std::span<const int32_t> chain(l.medusa_next.data(), n);
  std::vector<std::vector<int32_t>> heads =
      drafts_tree(l) && !l.medusa_top.empty()
          ? medusa_draft_paths(chain, l.medusa_top, l.medusa_top_logprob, medusa_top_tokens(),
                               paths)
          : std::vector<std::vector<int32_t>>{std::vector<int32_t>(chain.begin(), chain.end())};
  for (std::vector<int32_t>& c : heads) {
    if (int64_t(chains.size()) >= paths) break;
    const bool covered =
        std::any_of(chains.begin(), chains.end(),
                    [&](const std::vector<int32_t>& p) { return starts_with(p, c); });
    if (!covered) chains.push_back(std::move(c));
  }
  return chains;
}

int64_t Engine::medusa_top_tokens() const {
  constexpr int64_t kMostTopTokens = 4;  // of each head: a tree branches into its likeliest few
  if (config_.speculate_medusa <= 0 || config_.speculate_paths <= 1) return 0;
  return std::min(config_.speculate_paths, kMostTopTokens);
}

// Medusa head i on the final hidden state of position t proposes the token of
// position t + 2 + i: on the row of a sequence's last computed token, whose
// own logits gave the token just appended (t + 1), the heads' chain is the
// next step's drafts. When the step ran them (`in_step`: one set for every
// such sequence), they are the step's drafts of that row. Otherwise sequences
// are grouped by heads (mixed adapters); each group is one gather of its rows
// of the step's hidden states and one draft() (a product per head, one
// download).
void Engine::medusa_propose(const std::vector<std::pair<Live*, int32_t>>& rows,
                            const StepResult& result, const model::MedusaHeads* in_step,
                            int64_t top) {
  if (in_step) {
    const int64_t k = in_step->num_heads();
    for (const auto& [l, row] : rows) {
      const auto at = result.drafts.begin() + int64_t(row) * k;
      l->medusa_next.assign(at, at + k);
      l->medusa_at = l->seq.tokens.size();
      l->medusa_top.clear();
      l->medusa_top_logprob.clear();
      if (top == 0) continue;
      const int64_t from = int64_t(row) * k * top, to = from + k * top;
      l->medusa_top.assign(result.draft_top.begin() + from, result.draft_top.begin() + to);
      l->medusa_top_logprob.assign(result.draft_top_logprob.begin() + from,
                                   result.draft_top_logprob.begin() + to);
    }
    return;
  }
  ++stats_.spec_eager_heads_steps;
  const Tensor& hidden = result.hidden;
  std::map<const model::MedusaHeads*, std::vector<std::pair<Live*, int32_t>>> by_heads;
  for (const auto& r : rows) by_heads[r.first->heads].push_back(r);
  Backend& ops = model_.backend();
  for (const auto& [heads, group] : by_heads) {
    std::vector<int32_t> index;
    for (const auto& r : group) index.push_back(r.second);
    const Tensor x = ops.gather_rows(hidden, ops.upload_i32(index));
    const auto k = size_t(heads->num_heads());
    std::vector<int32_t> ids, top_ids;
    std::vector<float> top_lp;
    if (top > 0) {  // the heads' logits through the sample op: greedy rows with their top lists
      std::vector<SampleRow> head_rows(group.size() * k);
      for (SampleRow& r : head_rows) r.logprobs = int32_t(top);
      const SampleResult s = ops.sample(heads->step_logits(ops, x, model_.lm_head()),
                                        stage_sampling_rows(ops, head_rows, Tensor(), top));
      ids = ops.download_i32(s.tokens);
      const auto width = size_t(s.top_tokens.cols());
      const std::vector<int32_t> all_ids = ops.download_i32(s.top_tokens);
      const Tensor all_lp = ops.to_host_f32(s.top_logprobs);
      for (size_t r = 0; r < head_rows.size(); ++r)
        for (size_t j = 0; j < size_t(top); ++j) {
          top_ids.push_back(all_ids[r * width + j]);
          top_lp.push_back(all_lp.ptr<float>()[r * width + j]);
        }
    } else {
      ids = heads->draft(ops, x, model_.lm_head());
    }
    for (size_t g = 0; g < group.size(); ++g) {
      Live& l = *group[g].first;
      l.medusa_next.assign(ids.begin() + int64_t(g * k), ids.begin() + int64_t((g + 1) * k));
      l.medusa_at = l.seq.tokens.size();
      l.medusa_top.clear();
      l.medusa_top_logprob.clear();
      if (top == 0) continue;
      const auto from = int64_t(g * k) * top, to = from + int64_t(k) * top;
      l.medusa_top.assign(top_ids.begin() + from, top_ids.begin() + to);
      l.medusa_top_logprob.assign(top_lp.begin() + from, top_lp.begin() + to);
    }
  }
}

// A drafted sequence's step is done: the rows of its chains sampled; it
// keeps y_0 .. y_a (engine/speculate.h, accept_paths; one chain: its first
// a drafts and one more token). When an alternative chain holds the kept
// drafts, the sequence takes its pages and tokens; the other chains' pages go.
// The KV of the accepted drafts stays (its full pages are keyed for the
// prefix cache), the pages past them are freed (a page holding a rejected
// draft is never keyed: only computed tokens are), the generator advances by
// the kept tokens' draws, and the kept tokens are appended in order, each
// under the stop conditions (a stop inside the run ends it there); the step's
// outputs of the sequence go out as one.
int32_t Engine::verify(Live& l, const StepResult& result, const std::vector<int32_t>& first_rows,
                       std::vector<StepOutput>& out) {
  std::vector<std::vector<int32_t>> drafts;
  drafts.push_back(std::move(l.drafts));
  l.drafts.clear();
  std::vector<Live::DraftPath> alts = std::move(l.alt_paths);
  l.alt_paths.clear();
  struct ReleaseAlternatives {  // however verify leaves (release empties a table: no double
                                // release)
    kv::PageManager& pages;
    std::vector<Live::DraftPath>& alts;
    ~ReleaseAlternatives() {
      for (Live::DraftPath& p : alts) pages.release(p.seq.pages);
    }
  } release_alternatives{kv_.pages, alts};
  for (Live::DraftPath& p : alts) drafts.push_back(p.drafts);
  std::vector<std::span<const int32_t>> sampled;
  for (size_t p = 0; p < drafts.size(); ++p)
    sampled.emplace_back(result.tokens.data() + first_rows[p], drafts[p].size() + 1);
  const PathAcceptance acc = accept_paths(drafts, sampled);
  const int64_t a = acc.accepted, first_chain = accepted_drafts(drafts[0], sampled[0]);
  for (const std::vector<int32_t>& d : drafts) stats_.spec_draft_tokens += int64_t(d.size());
  stats_.spec_accepted_tokens += a;
  l.draft_stats.record(int64_t(drafts[0].size()), first_chain);
  if (!alts.empty()) {
    l.draft_stats.record_alternatives(a - first_chain);
    stats_.spec_alt_tokens += a - first_chain;
  }
  if (acc.path > 0) {  // an alternative chain holds the kept drafts
    Sequence& w = alts[size_t(acc.path - 1)].seq;
    kv_.pages.release(l.seq.pages);
    l.seq.pages = std::move(w.pages);
    w.pages = {};
    l.seq.tokens.resize(l.seq.tokens.size() - drafts[0].size());
    l.seq.tokens.insert(l.seq.tokens.end(), drafts[size_t(acc.path)].begin(),
                        drafts[size_t(acc.path)].end());
  }
  for (Live::DraftPath& p : alts) kv_.pages.release(p.seq.pages);
  const auto k = int64_t(drafts[size_t(acc.path)].size());
  const auto base = int64_t(l.seq.tokens.size()) - k;  // tokens before the drafts
  l.seq.num_computed = base + a;                       // the last token and the accepted drafts
  l.seq.tokens.resize(size_t(base + a));
  kv_.pages.truncate(l.seq.pages, l.seq.num_computed);
  if (config_.prefix_cache)
    kv_.pages.cache_full_pages(l.seq.pages, l.seq.tokens, l.seq.num_computed, prefix_salt(l));
  l.seq.tokens.resize(size_t(base));
  l.rng = l.draft_rng;
  for (int64_t j = 0; j <= a; ++j) (void)sample_row(l.req.sampling, l.rng);
  auto row = [&](int64_t j) { return first_rows[size_t(acc.row_path[size_t(j)])] + int32_t(j); };
  std::vector<StepOutput> step;
  for (int64_t j = 0; j <= a && !l.done; ++j) {
    const auto r = size_t(row(j));
    append_token(l, result.tokens[r], token_logprobs(l, result, r), step, /*drafted=*/j > 0);
  }
  if (l.group && l.group->hold) {  // held and merged already
    for (StepOutput& o : step) out.push_back(std::move(o));
    return row(a);
  }
  StepOutput merged = std::move(step.front());
  for (size_t j = 1; j < step.size(); ++j) {
    const int32_t running = step[j].outputs_running;
    merge(merged, std::move(step[j]));
    merged.outputs_running = running;
  }
  out.push_back(std::move(merged));
  return row(a);
}

// Keeps the prompt logprobs of the step's rows (positions [first_position,
// ...) of the sequence's rows) not kept yet: position p's row reports prompt
// token p + 1.
void Engine::keep_prompt_logprobs(Live& l, int64_t first_position, const StepResult& result,
                                  int64_t first_row, int64_t num_rows) {
  const int64_t k = *l.req.prompt_logprobs;
  for (int64_t j = 0; j < num_rows; ++j) {
    const int64_t p = first_position + j;
    if (p + 1 >= l.seq.prompt_len || p != int64_t(l.prompt_logprobs.size())) continue;
    const auto r = size_t(first_row + j);
    PositionLogprobs lp;
    lp.chosen = {l.seq.tokens[size_t(p + 1)], result.logprob[r]};
    for (int64_t t = 0; t < k; ++t) {
      const auto at = size_t(int64_t(r) * result.logprobs_width + t);
      lp.top.push_back({result.top_tokens[at], result.top_logprobs[at]});
    }
    l.prompt_logprobs.push_back(std::move(lp));
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

// Whether `token`, just generated, is an eos or stop token id that ends the request.
bool Engine::stops(const Live& l, int32_t tok) const {
  if (l.req.ignore_eos) return false;
  const std::vector<int64_t>& eos = model_.config().eos_token_ids;
  const std::vector<int32_t>& stop = l.req.stop_token_ids;
  return std::find(eos.begin(), eos.end(), int64_t(tok)) != eos.end() ||
         std::find(stop.begin(), stop.end(), tok) != stop.end();
}

namespace {

// The earliest match of a stop string in `text` that may end at or after
// byte `from` (the new text), and which string it is.
std::pair<size_t, const std::string*> find_stop(const std::string& text, size_t from,
                                                const std::vector<std::string>& stop) {
  std::pair<size_t, const std::string*> best{std::string::npos, nullptr};
  for (const std::string& st : stop) {
    const size_t start = from > st.size() ? from - st.size() + 1 : 0;
    const size_t at = text.find(st, start);
    if (at < best.first) best = {at, &st};
  }
  return best;
}

// The longest suffix of `text` that is a proper prefix of a stop string: it
// may still become one, so it is held back.
size_t held_back(const std::string& text, const std::vector<std::string>& stop) {
  size_t hold = 0;
  for (const std::string& st : stop)
    for (size_t n = std::min(st.size() - 1, text.size()); n > hold; --n)
      if (text.compare(text.size() - n, n, st, 0, n) == 0) {
        hold = n;
        break;
      }
  return hold;
}

}  // namespace

// Appends the sampled token. No stop condition applies before min_new_tokens;
// then the request ends at a stop string (with a tokenizer), at an eos / stop
// token id, or at max_new_tokens. With a tokenizer, the step's text goes out
// with the token, but for what may still become a stop string.
void Engine::append_token(Live& l, int32_t tok, std::optional<PositionLogprobs> logprobs,
                          std::vector<StepOutput>& out, bool drafted) {
  bool constraint_ends = false;  // a stop id where the constraint is complete
  if (l.matcher) {
    const std::vector<int64_t>& eos = model_.config().eos_token_ids;
    const bool model_eos =
        std::find(eos.begin(), eos.end(), int64_t(tok)) != eos.end() && l.matcher->is_accepting();
    if (!model_eos && !l.matcher->accept_token(tok)) {  // every token its mask allowed was banned
      StepOutput o;
      o.error = o.error_detail = fmt::format(
          "request '{}': no token can continue the structured output after {} tokens (logit_bias "
          "or bad_words ban every token the constraint allows, or the vocabulary cannot write it)",
          l.req.id, l.generated);
      finish(l, FinishReason::invalid_request, out, std::move(o));
      return;
    }
    constraint_ends = model_eos || l.matcher->is_terminated();
  }
  l.seq.tokens.push_back(tok);
  ++l.generated;
  ++stats_.generated_tokens;
  StepOutput o;
  o.id = l.req.id;
  o.new_tokens = {tok};
  o.drafted = {uint8_t(drafted)};
  o.seed = l.seed;
  if (logprobs) o.logprobs.push_back(std::move(*logprobs));
  if (wants_prompt_logprobs(l)) {  // the prompt is done: its last row sampled this token
    o.prompt_logprobs = std::move(l.prompt_logprobs);
    l.prompt_logprobs_sent = true;
  }
  const bool may_stop = l.generated >= l.req.min_new_tokens;
  // A constrained output ends only where it is complete: an eos / stop id the
  // constraint took as text (a model whose eos is a text token) does not end it elsewhere.
  const bool stop_token =
      constraint_ends || (may_stop && stops(l, tok) && (!l.matcher || l.matcher->is_accepting()));
  const bool length = l.generated >= l.req.max_new_tokens;
  FinishReason reason = stop_token ? FinishReason::eos
                        : length   ? FinishReason::length
                                   : FinishReason::none;
  if (l.detok) {
    const size_t before = l.text.size();
    l.text += l.detok->push(tok);
    if (reason != FinishReason::none) l.text += l.detok->flush();
    // The text of an eos / stop token id is left out unless asked for (vLLM).
    if (stop_token && !l.req.include_stop_str_in_output) l.text.resize(before);
    size_t end = l.text.size();
    if (!l.req.stop.empty()) {
      // Only a match that ends in this token's text counts (one before
      // min_new_tokens never does).
      const auto [at, matched] = may_stop ? find_stop(l.text, l.searched, l.req.stop)
                                          : std::pair<size_t, const std::string*>{0, nullptr};
      l.searched = l.text.size();
      if (matched) {
        reason = FinishReason::stop_sequence;
        o.stop_string = *matched;
        end = at + (l.req.include_stop_str_in_output ? matched->size() : 0);
      } else if (reason == FinishReason::none) {
        end -= held_back(l.text, l.req.stop);
      }
    }
    if (end > l.emitted) {
      o.text = l.text.substr(l.emitted, end - l.emitted);
      l.emitted = end;
    }
  }
  if (reason != FinishReason::none)
    finish(l, reason, out, std::move(o));
  else
    emit(l, std::move(o), out);
}

}  // namespace philora::engine
