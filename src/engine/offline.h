// Offline batches (the CLI's score and generate) on the same Engine as the
// server: every request in ONE batch — an unlimited token budget, room for
// every request at once, a KV cache sized to hold them all — so that none
// waits or is preempted, and generation goes through the real decode path
// over the paged KV cache.
#pragma once

#include <vector>

#include "engine/engine.h"
#include "lora/store.h"
#include "model/phi3.h"

namespace philora::engine {

struct OfflineOptions {
  int64_t page_size = 16;
  bool step_graphs = true;  // decode steps replay graphs where the backend records them
  // Every request is admitted in the first step, so none finds another's
  // pages; kept for a caller that runs several batches on one engine.
  bool prefix_cache = true;
  int64_t speculate_ngram = 0;   // EngineConfig::speculate_ngram
  int64_t speculate_medusa = 0;  // EngineConfig::speculate_medusa, with its heads
  std::shared_ptr<const MedusaSet> medusa = nullptr;
  int64_t speculate_paths = 1;       // EngineConfig::speculate_paths
  double speculate_row_cost = -1.0;  // EngineConfig::speculate_row_cost
  // Detokenizes the outputs and matches stop strings (StepOutput::text); may be null.
  const tokenizer::Tokenizer* tokenizer = nullptr;
  // When set, receives the engine's counters once the batch is done, and the
  // seconds the run took from the first step to the last (model loading and
  // request checks left out).
  EngineStats* stats = nullptr;
  double* seconds = nullptr;
  // Runs the batch this many times first, on the same engine, and returns
  // (and times, and counts) the run after them: step graphs recorded and
  // matmul shapes tuned, as in a server that has been up a while. (With the
  // prefix cache on, the run finds the warm-ups' prompts cached.)
  int64_t warmup = 0;
};

// Runs the requests (ids unique) to the end and returns, in request order,
// each one's outputs merged: all its new tokens, their text and logprobs, its
// finish reason, seed and stop string, its prompt logits and logprobs when it
// asked for them. Fails with the first request the
// engine refuses or that fails (an unknown or bad adapter: its full message).
Expected<std::vector<StepOutput>> run_offline(model::Phi3ForCausalLM& model,
                                              lora::AdapterStore* adapters,
                                              const std::vector<Request>& requests,
                                              const OfflineOptions& options);

}  // namespace philora::engine
