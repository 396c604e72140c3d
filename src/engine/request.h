// A request as it travels from the HTTP layer or the CLI down to the
// scheduler, unchanged, and the reason it ended. Engine::add_request is the
// one place that checks a request against the model.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampler.h"

namespace philora::structured {
class CompiledConstraint;
}

namespace philora::engine {

// Which logprobs a request gets (one computation on the backend serves both).
enum class LogprobKind : uint8_t {
  raw,        // the model's: log_softmax of the logits before bias, penalties and
              // temperature (vLLM V1's default, so the OpenAI routes)
  processed,  // of the distribution the token was drawn from: after every logit
              // processor, temperature and cut (-inf outside the kept set), as LoRAX
              // reports them; a greedy request's: log_softmax after bias and penalties
};

struct Request {
  std::string id;                      // unique among the engine's requests
  std::vector<int32_t> prompt;         // [prompt_len] token ids
  std::optional<std::string> adapter;  // nullopt: the base model
  SamplingParams sampling;
  int64_t max_new_tokens = 16;  // 0: the prompt alone (its logits, when asked), no token
  // No stop condition (eos, stop token ids, stop strings) ends the request
  // before it has this many new tokens: until then the eos and stop token ids
  // are banned (HF's min_new_tokens, vLLM's min_tokens). ≤ max_new_tokens.
  int64_t min_new_tokens = 0;
  bool ignore_eos = false;              // generate past the eos and stop token ids
  std::vector<int32_t> stop_token_ids;  // besides the model's eos ids
  // Stop strings, matched on the detokenized text of the new tokens by an
  // engine that has a tokenizer (one without leaves them to its caller): the
  // request ends at the earliest match, and its text ends where the string
  // starts, or after it with include_stop_str_in_output. Until a possible
  // start of one is resolved, its text is held back.
  std::vector<std::string> stop;
  bool include_stop_str_in_output = false;  // also keeps the text of an eos / stop token id
  bool skip_special_tokens = true;          // the text leaves out special tokens
  // Per new token: its logprob and the `logprobs` most likely tokens' (0 ..
  // kMaxLogprobs), of the kind below. nullopt: none.
  std::optional<int32_t> logprobs;
  LogprobKind logprob_kind = LogprobKind::raw;
  // Per prompt token after the first: its raw logprob given the tokens before
  // it, and the `prompt_logprobs` most likely tokens' (LoRAX's
  // decoder_input_details, OpenAI's echo + logprobs). nullopt: none.
  std::optional<int32_t> prompt_logprobs;
  // Return the logits of every prompt position (score) with the request's
  // finished output: (prompt_len, vocab) f32 on the host.
  bool prompt_logits = false;
  // Outputs (OpenAI's n and best_of, LoRAX's best_of): best_of candidates are
  // generated from the one prompt (prefilled once; the candidates share its
  // pages) and the n of them with the highest cumulative logprob are returned
  // (StepOutput::index, best_of_extra). Candidate i draws from seed + i (as
  // vLLM V1's parallel sampling derives its children's seeds), so candidate 0
  // is what the request with n = best_of = 1 gives. 1 ≤ n ≤ best_of ≤
  // kMaxBestOf; best_of > n needs sampling (greedy candidates are identical:
  // vLLM and LoRAX refuse best_of > 1 with greedy); n > 1 greedy gives n
  // copies. With best_of > n nothing is streamed: each candidate comes as one
  // output when the last of them has finished. nullopt: n.
  int32_t n = 1;
  std::optional<int32_t> best_of;
  // Structured output (docs/STRUCTURED.md): the new tokens keep the text a
  // valid prefix of the constraint's language, and the eos / stop ids come
  // only where it is complete; a stop id the constraint accepts ends the
  // request (reason eos) even with ignore_eos, and min_new_tokens does not
  // ban it. Each candidate (n, best_of) has its own matcher. Compiled by the
  // caller (structured::ConstraintCache); null: unconstrained.
  std::shared_ptr<const structured::CompiledConstraint> constraint;
  int32_t num_candidates() const { return best_of ? *best_of : n; }
};

inline constexpr int32_t kMaxBestOf = 128;

// The seed candidate `index` of a request whose seed is `seed` draws from.
inline uint64_t candidate_seed(uint64_t seed, int32_t index) { return seed + uint64_t(index); }

// One position's logprobs.
struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0.0f;  // may be -inf (a processed logprob of a token the cuts removed)
};
struct PositionLogprobs {
  TokenLogprob chosen;            // the generated (or prompt) token
  std::vector<TokenLogprob> top;  // [k] the most likely first, ties in ascending id
};

// Why a request ended. The first four are normal ends; the others are
// errors, each with a message (StepOutput::error).
enum class FinishReason : uint8_t {
  none,             // still running
  length,           // max_new_tokens generated
  eos,              // the model's eos or one of the request's stop token ids
  stop_sequence,    // a stop string (matched by the engine, or by server::Generation)
  abort,            // aborted by the caller, or the server shut down
  invalid_request,  // refused by Engine::add_request
  unknown_adapter,  // the adapter does not exist (or its name is not a valid one)
  adapter_invalid,  // the adapter exists but cannot be loaded
  no_adapter_slot,  // every adapter slot is held by running requests
  device_error,     // the step failed on the backend
};

inline bool is_error(FinishReason r) { return r >= FinishReason::invalid_request; }

// The enumerator's name ("length", "eos", "unknown_adapter", ...): for logs;
// the APIs have their own names (server::outcome, the CLI's output).
std::string_view name(FinishReason r);

}  // namespace philora::engine
