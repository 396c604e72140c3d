// A request as it travels from the HTTP layer or the CLI down to the
// scheduler, unchanged, and the reason it ended. Engine::add_request is the
// one place that checks a request against the model.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampler.h"

namespace philora::engine {

struct Request {
  std::string id;                      // unique among the engine's requests
  std::vector<int32_t> prompt;         // [prompt_len] token ids
  std::optional<std::string> adapter;  // nullopt: the base model
  SamplingParams sampling;
  int64_t max_new_tokens = 16;          // 0: the prompt alone (its logits, when asked), no token
  bool ignore_eos = false;              // generate past the eos and stop token ids
  std::vector<int32_t> stop_token_ids;  // besides the model's eos ids
  // Stop strings, matched on the detokenized text by server::Generation (the
  // engine sees token ids only and does not read them).
  std::vector<std::string> stop;
  // Return the logits of every prompt position (score) with the request's
  // finished output: (prompt_len, vocab) f32 on the host.
  bool prompt_logits = false;
};

// Why a request ended. The first four are normal ends; the others are
// errors, each with a message (StepOutput::error).
enum class FinishReason : uint8_t {
  none,             // still running
  length,           // max_new_tokens generated
  eos,              // the model's eos or one of the request's stop token ids
  stop_sequence,    // a stop string (server::Generation)
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
