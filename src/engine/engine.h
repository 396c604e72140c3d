// The engine: continuous batching over the paged KV cache. Each step the
// scheduler spends a token budget — running sequences first (a decode token or
// the next prompt chunk), then waiting ones in arrival order — so prefill and
// decode share steps and there is no separate "prefill phase" (vLLM v1 style).
// When pages run out, the most recently admitted sequence is preempted and
// later recomputed.
//
// Prefix caching (vLLM v1's automatic prefix caching): every page a sequence
// fills is keyed by its tokens, its predecessors' key, the sequence's adapter
// and its LongRoPE choice, and stays cached after the sequence lets it go
// (kv::PageManager). A sequence being admitted, new or preempted, takes the
// cached pages of its longest prefix of whole pages and computes the rest,
// always including its last token (the one whose logits it samples from); a
// request for prompt logits reuses only the rows it has already kept. A
// sliding-window model reuses whole prefixes too: a sequence keeps every
// page, in the window or not, so a cached page is what recomputing it writes.
// Sampling: each running sequence's parameters become one row of the step's
// sampling plan (engine/sampler.h, backend.h); token counts for the penalties
// live on the backend (TokenCounts), a row per sequence that has penalties,
// set at admission and updated by the sample op.
//
// With a tokenizer, the engine also detokenizes each sequence's new tokens
// (IncrementalDetokenizer), matches stop strings, and hands out the text.
// Single-threaded: callers serialise access.
#pragma once

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/constraint_masks.h"
#include "engine/request.h"
#include "engine/sampler.h"
#include "engine/sequence.h"
#include "engine/speculate.h"
#include "engine/step_runner.h"
#include "kv/kv_cache.h"
#include "lora/store.h"
#include "model/medusa.h"
#include "model/phi3.h"
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace philora::structured {
class Matcher;
}

namespace philora::engine {

// Medusa heads by adapter (--speculate medusa): the base model's, and those
// of adapters whose directory carries heads. A request uses its adapter's
// heads, else the base model's (LoRAX: the default Medusa adapter speculates
// for requests whose adapter has none); no heads: it does not draft.
struct MedusaSet {
  std::shared_ptr<const model::MedusaHeads> base;  // may be null
  std::map<std::string, std::shared_ptr<const model::MedusaHeads>> adapters;
  const model::MedusaHeads* find(const std::optional<std::string>& adapter) const {
    if (adapter) {
      auto it = adapters.find(*adapter);
      if (it != adapters.end()) return it->second.get();
    }
    return base.get();
  }
};

struct EngineConfig {
  int64_t max_batched_tokens = 2048;  // token budget of one step
  int64_t max_running = 256;          // sequences in flight
  bool step_graphs = true;            // decode steps replay graphs where the backend records them
  bool prefix_cache = true;           // reuse the KV pages of cached prefixes
  // Rows of token counts on the backend (sequences with penalties running at
  // once; one row is 4 · vocab bytes, allocated when the first is needed);
  // 0: max_running. A request with penalties waits for a row.
  int64_t count_rows = 0;
  // Speculative decoding with n-gram (prompt lookup) drafts (engine/speculate.h):
  // a decoding sequence drafts up to this many tokens per step, verified in
  // the step as one row group; 0: off. Below the limit a sequence drafts what
  // its own acceptance rate pays for (draft_length). Requests with penalties (token counts on
  // the backend, updated by the sample op one token per row) never draft,
  // nor do prompt-logits requests.
  int64_t speculate_ngram = 0;
  // Speculative decoding with Medusa drafts (engine/speculate.h): a decoding
  // sequence drafts up to this many tokens (at most its heads' number), the
  // chain of its heads' greedy tokens on the final hidden state of its last
  // computed token, verified as the n-gram drafts are; 0: off. With
  // speculate_ngram too (ngram+medusa), n-gram lookup's chains come first and
  // the heads' where lookup finds none (with speculate_paths, also as further
  // chains). The heads come from `medusa` (MedusaSet::find).
  int64_t speculate_medusa = 0;
  std::shared_ptr<const MedusaSet> medusa = nullptr;
  // Tree speculation: a sequence verifies up to this many candidate chains a
  // step (1: one chain) — n-gram lookup's other continuations — each as a
  // row group of its own that shares the sequence's full pages and a copy of
  // its partial page, as long as the extra chains pay for their rows
  // (alternatives_pay, engine/speculate.h). Not for constrained requests nor
  // bad-word lists (one chain there).
  int64_t speculate_paths = 1;
  // No drafting in a step while more sequences than this run (a large batch
  // is compute-bound: verifying drafts stops paying).
  int64_t speculate_max_batch = 16;
  // What one more row of a sequence costs relative to a step, for
  // draft_length; negative: the backend's (kGpuRowCost on CUDA, kCpuRowCost
  // on the CPU). 0 drafts the most every step (tests that want long chains).
  double speculate_row_cost = -1.0;
  // Admission waits for the disk loads of the adapters that waiting requests
  // ask for, so that a schedule does not depend on how fast the disk is
  // (offline runs, tests). Off (the server): a request waits for its
  // adapter while the others run.
  bool wait_for_adapter_loads = false;
  // Host threads that fill the allowed-token masks of constrained sequences
  // (structured output), started with the first; 0: the hardware's.
  int mask_threads = 0;
};

// What one step produced for one request.
struct StepOutput {
  std::string id;
  std::vector<int32_t> new_tokens;
  // [new_tokens] 1 where the token is a drafted one that its step verified and
  // kept after the step's first token: it took no forward step of its own
  // (LoRAX's "skipped"; speculative decoding only).
  std::vector<uint8_t> drafted;
  FinishReason finish = FinishReason::none;  // none while the request runs
  std::string error;         // with an error reason: what went wrong, fit for a remote client
  std::string error_detail;  // the same in full (it may name server files), for the server's log
  Tensor prompt_logits;      // (prompt_len, vocab) host f32 when a prompt_logits request finishes
  // With a tokenizer: the text the new tokens add (Request::stop says what is
  // held back and where it ends); a request's texts concatenate to its output.
  std::string text;
  std::vector<PositionLogprobs> logprobs;  // [new_tokens] when the request asks for logprobs
  // [prompt_len - 1]: prompt tokens 1 .. prompt_len - 1, once, in the output
  // of the step that finishes the prompt, when the request asks for them.
  std::optional<std::vector<PositionLogprobs>> prompt_logprobs;
  uint64_t seed = 0;  // the seed this output's draws come from (given or drawn; candidate i's: + i)
  std::string stop_string;  // with FinishReason::stop_sequence: the stop string matched
  // Which of the request's outputs this is (Request::n, best_of): 0 .. n - 1,
  // each streamed as it runs. With best_of > n every candidate comes once,
  // finished, after the last has finished: the n of highest cumulative
  // logprob (ties: the lower candidate) as 0 .. n - 1, best first, then the
  // others flagged best_of_extra as n .. best_of - 1 (LoRAX's
  // best_of_sequences; the OpenAI routes drop them).
  int32_t index = 0;
  bool best_of_extra = false;
  // With finished(): how many of the request's other outputs have not
  // finished yet; 0 on the request's last output.
  int32_t outputs_running = 0;
  // The sum of this output's generated tokens' logprobs so far (of the
  // request's LogprobKind; raw when it asks for no logprobs), when it asks
  // for logprobs or best_of > n; else nullopt.
  std::optional<double> cumulative_logprob;
  bool finished() const { return finish != FinishReason::none; }
  bool request_finished() const { return finished() && outputs_running == 0; }
};

struct EngineStats {
  int64_t steps = 0;
  int64_t preemptions = 0;
  int64_t prompt_tokens = 0;  // computed, recomputation included (prefix-cache hits are not)
  int64_t generated_tokens = 0;
  // Prefix cache, in tokens (vLLM's prefix_cache_queries / _hits): the
  // tokens of every sequence looked up at admission, and of those the ones
  // found in cached pages (hit rate = hits / queries).
  int64_t prefix_cache_queries = 0;
  int64_t prefix_cache_hits = 0;
  // Speculative decoding: tokens drafted and verified, and of those the ones
  // accepted (acceptance rate = accepted / drafted).
  int64_t spec_draft_tokens = 0;
  int64_t spec_accepted_tokens = 0;
  // Medusa: steps whose drafts took a second, eager pass of the heads after
  // the step (mixed heads in the step, or prompt rows); the others' heads ran
  // inside the step (StepRunnerStats::heads_steps).
  int64_t spec_eager_heads_steps = 0;
  // Tree speculation: alternative chains verified (their drafts count in
  // spec_draft_tokens), and the tokens they kept beyond what the first chain
  // alone would have (their accepted drafts count in spec_accepted_tokens).
  int64_t spec_alt_chains = 0;
  int64_t spec_alt_tokens = 0;
};

// The counts between two snapshots of one engine's stats (later - earlier).
static_assert(sizeof(EngineStats) == 11 * sizeof(int64_t),
              "operator- below: subtract the new field");
inline EngineStats operator-(const EngineStats& later, const EngineStats& earlier) {
  EngineStats d;
  d.steps = later.steps - earlier.steps;
  d.preemptions = later.preemptions - earlier.preemptions;
  d.prompt_tokens = later.prompt_tokens - earlier.prompt_tokens;
  d.generated_tokens = later.generated_tokens - earlier.generated_tokens;
  d.prefix_cache_queries = later.prefix_cache_queries - earlier.prefix_cache_queries;
  d.prefix_cache_hits = later.prefix_cache_hits - earlier.prefix_cache_hits;
  d.spec_draft_tokens = later.spec_draft_tokens - earlier.spec_draft_tokens;
  d.spec_accepted_tokens = later.spec_accepted_tokens - earlier.spec_accepted_tokens;
  d.spec_eager_heads_steps = later.spec_eager_heads_steps - earlier.spec_eager_heads_steps;
  d.spec_alt_chains = later.spec_alt_chains - earlier.spec_alt_chains;
  d.spec_alt_tokens = later.spec_alt_tokens - earlier.spec_alt_tokens;
  return d;
}

// Structured output's host work (docs/STRUCTURED.md).
struct MaskStats {
  int64_t steps = 0;        // steps with masks
  int64_t masks = 0;        // masks filled (one per constrained sampling row)
  double fill_seconds = 0;  // summed over the mask jobs (on the filler's threads)
  double wait_seconds = 0;  // the step waited for them (StepMasks::wait), summed
};

class Engine {
 public:
  ~Engine();
  // `tokenizer` (may be null; it must outlive the engine) makes the engine
  // detokenize and match stop strings.
  Engine(model::Phi3ForCausalLM& model, kv::KvCache& kv, lora::AdapterStore* adapters,
         EngineConfig config, const tokenizer::Tokenizer* tokenizer = nullptr);

  // Checks the request against the model and the KV cache, and queues it; the
  // error says what is wrong with it. Its adapter is looked up when it is
  // admitted (an unknown or bad one ends it with an error reason then).
  Status add_request(Request request);
  void abort(const std::string& id);
  bool has_work() const { return !waiting_.empty() || !running_.empty() || !pending_.empty(); }
  // The most tokens (prompt + new) one sequence can ever hold: the model's
  // positions, or the KV cache when it is smaller.
  int64_t max_sequence_tokens() const;
  std::vector<StepOutput> step();

  const EngineStats& stats() const { return stats_; }
  const StepRunnerStats& runner_stats() const { return runner_.stats(); }
  const MaskStats& mask_stats() const { return mask_stats_; }
  // Sequences running (a request's candidates each count).
  int64_t num_running() const { return int64_t(running_.size()); }
  // Requests waiting: a request's other candidates (n, best_of) waiting to be
  // forked or preempted back do not count again — the server's queue limit
  // and queue times are per request.
  int64_t num_waiting() const {
    return std::count_if(waiting_.begin(), waiting_.end(),
                         [](const std::unique_ptr<Live>& l) { return l->index == 0; });
  }

 private:
  // The candidates of a request with best_of > 1.
  struct Group {
    int32_t n = 1;
    int32_t best_of = 1;
    int32_t running = 0;           // candidates not finished
    bool hold = false;             // best_of > n: outputs held back and ranked at the end
    std::vector<StepOutput> held;  // [best_of] with hold: each candidate's outputs merged
  };
  struct Live {
    Request req;
    int32_t index = 0;             // its candidate number (Request::best_of)
    std::shared_ptr<Group> group;  // null when the request has one candidate
    // Candidate 0's: the other candidates until its prompt is computed (fork_candidates).
    std::vector<std::unique_ptr<Live>> unforked;
    double cumulative_logprob = 0;  // of its generated tokens, when tracks_logprob
    Sequence seq;
    std::mt19937_64 rng;
    uint64_t seed = 0;
    int64_t generated = 0;
    bool has_slot = false;
    uint64_t adapter_identity = 0;  // AdapterStore::identity while it has its slot; 0 = base
    int32_t count_row = -1;         // its row of token counts while running (penalties)
    bool done = false;
    Tensor prompt_logits;     // (prompt_len, vocab) host f32 while filled (prompt_logits requests)
    int64_t logits_rows = 0;  // rows of prompt_logits written (a recomputed row is not kept again)
    std::vector<PositionLogprobs> prompt_logprobs;  // kept so far (prompt_logprobs requests)
    bool prompt_logprobs_sent = false;              // handed out: a recomputation keeps none again
    // With a tokenizer: the detokenized text of the new tokens so far, the
    // bytes of it handed out, and those already searched for stop strings.
    std::unique_ptr<tokenizer::IncrementalDetokenizer> detok;
    std::string text;
    size_t emitted = 0;
    size_t searched = 0;
    // Speculative decoding: this step's drafted tokens (appended to
    // seq.tokens while the step runs), and its acceptance so far.
    std::vector<int32_t> drafts;
    DraftStats draft_stats;
    // Tree speculation: this step's other candidate chains, each verified as
    // a sequence of its own (EngineConfig::speculate_paths); the generator as
    // it was before the step's rows drew (row j of every chain takes its j-th
    // next draw).
    struct DraftPath {
      std::vector<int32_t> drafts;
      Sequence seq;  // its last token and these drafts (from first_token); the full pages shared
    };
    std::vector<DraftPath> alt_paths;
    std::mt19937_64 draft_rng;
    // Medusa: its heads (null: none), and their drafts [heads] for the tokens
    // after tokens[medusa_at - 1] (from that step's hidden state of the last
    // computed token); valid while tokens.size() == medusa_at.
    const model::MedusaHeads* heads = nullptr;
    std::vector<int32_t> medusa_next;
    size_t medusa_at = 0;
    // With tree speculation: every head's top tokens and their logprobs
    // [heads · medusa_top_tokens()], head i's at i · medusa_top_tokens().
    std::vector<int32_t> medusa_top;
    std::vector<float> medusa_top_logprob;
    // Structured output: the constraint's parser over the tokens generated so
    // far (never the drafts: a mask job advances it over them and back).
    std::unique_ptr<structured::Matcher> matcher;
  };
  // A sequence's share of the step being built.
  struct Scheduled {
    Live* live;
    int64_t num_tokens;
    int32_t path = -1;  // >= 0: the row group of live->alt_paths[path]
  };
  static Sequence& sequence(const Scheduled& s) {
    return s.path < 0 ? s.live->seq : s.live->alt_paths[size_t(s.path)].seq;
  }
  static bool wants_prompt_logprobs(const Live& l) {
    return l.req.prompt_logprobs && !l.prompt_logprobs_sent;
  }
  static bool tracks_logprob(const Live& l) { return l.req.logprobs || (l.group && l.group->hold); }
  std::unique_ptr<Live> make_live(Request r, uint64_t seed, int32_t index,
                                  std::shared_ptr<Group> group) const;
  void fork_candidates(Live& l, std::vector<StepOutput>& out);
  void emit(Live& l, StepOutput o, std::vector<StepOutput>& out);
  Status validate(const Request& r) const;
  void schedule_running(std::vector<Scheduled>& batch, int64_t& budget);
  void schedule_drafts(std::vector<Scheduled>& batch, size_t running, int64_t& budget);
  void admit_waiting(std::vector<Scheduled>& batch, int64_t& budget, std::vector<StepOutput>& out);
  bool acquire_adapter(Live& l, std::vector<StepOutput>& out);
  void fail_adapter(Live& l, const lora::AdapterError& e, std::vector<StepOutput>& out);
  bool acquire_count_row(Live& l);
  kv::PrefixSalt prefix_salt(const Live& l) const;
  bool reuse_cached_prefix(Live& l);
  // `ahead`: the row of a drafted sequence that follows its first `ahead` drafts.
  SampleRow sampling_row(Live& l, int64_t ahead = 0);
  // The most drafts the sequence verifies in a step (its method's K); 0: it never drafts.
  int64_t max_drafts(const Live& l) const;
  double speculate_row_cost() const;
  // Its candidate chains this step (none, or the first and its alternatives).
  std::vector<std::vector<int32_t>> draft(const Live& l, int64_t room) const;
  bool drafts_tree(const Live& l) const;
  // Adds the alternative chains that pay and fit to `l`'s step; the copies of
  // its partial page go to `copies`.
  void schedule_alternatives(Live& l, std::vector<std::vector<int32_t>>& chains, int64_t& budget,
                             std::vector<std::pair<int32_t, int32_t>>& copies);
  // Its Medusa heads' drafts for the sequences `rows` names (each with its
  // logit row of the step): the step's own (`in_step`: the heads it ran), or
  // from its hidden states.
  // `top`: each head's top tokens to keep too (tree speculation), 0: none.
  void medusa_propose(const std::vector<std::pair<Live*, int32_t>>& rows, const StepResult& result,
                      const model::MedusaHeads* in_step, int64_t top);
  // How many top tokens of each Medusa head a step brings back for tree
  // speculation (0: the greedy chain alone).
  int64_t medusa_top_tokens() const;
  // `first_rows`: the first logit row of each chain's group (the first
  // chain's, then the alternatives'). Returns the logit row that gave its last kept token.
  int32_t verify(Live& l, const StepResult& result, const std::vector<int32_t>& first_rows,
                 std::vector<StepOutput>& out);
  std::optional<PositionLogprobs> token_logprobs(Live& l, const StepResult& result, size_t row);
  void run(std::vector<Scheduled>& batch, std::vector<StepOutput>& out);
  // Starts filling the masks of the step's constrained sequences (`work`
  // parallel to `batch`); `first_mask[i]` gets the index of sequence i's
  // first mask (its rows' masks follow), -1 when it has none.
  void start_masks(const std::vector<Scheduled>& batch, const std::vector<SeqWork>& work,
                   std::vector<int32_t>& first_mask, StepMasks& masks);
  void keep_prompt_logits(Live& l, int64_t first_position, const Tensor& logits, int64_t first_row);
  void keep_prompt_logprobs(Live& l, int64_t first_position, const StepResult& result,
                            int64_t first_row, int64_t num_rows);
  // `drafted`: a verified draft kept after its step's first token (StepOutput::drafted).
  void append_token(Live& l, int32_t token, std::optional<PositionLogprobs> logprobs,
                    std::vector<StepOutput>& out, bool drafted = false);
  bool stops(const Live& l, int32_t token) const;
  void release(Live& l);
  void preempt(Live& l);
  void finish(Live& l, FinishReason reason, std::vector<StepOutput>& out, StepOutput o = {});

  model::Phi3ForCausalLM& model_;
  kv::KvCache& kv_;
  lora::AdapterStore* adapters_;
  EngineConfig config_;
  const tokenizer::Tokenizer* tokenizer_;
  StepRunner runner_;
  TokenCounts counts_;
  std::mt19937_64 seeds_;  // seeds of requests that give none
  std::deque<std::unique_ptr<Live>> waiting_;
  std::vector<std::unique_ptr<Live>> running_;         // admission order
  std::vector<StepOutput> pending_;                    // finished outside a step (aborts)
  std::unique_ptr<MaskFiller> mask_filler_;            // with the first constrained sequence
  std::shared_ptr<std::vector<double>> mask_seconds_;  // [jobs] of the step's mask jobs
  MaskStats mask_stats_;
  // The pinned adapter slot that goes to the oldest request waiting for a
  // slot: no later request pins it meanwhile (admit_waiting); -1 when none waits.
  int32_t draining_slot_ = -1;
  EngineStats stats_;
};

}  // namespace philora::engine
