// Offline batches (the CLI's score and generate): every request runs in one
// batch, generate goes through the real decode path over the paged KV cache.
#pragma once

#include <string>
#include <vector>

#include "engine/sampler.h"
#include "lora/slots.h"
#include "model/phi3.h"

namespace philora::engine {

struct OfflineRequest {
  std::string id;
  std::vector<int32_t> input_ids;
  int32_t lora_slot = -1;
  int64_t max_new_tokens = 0;
  SamplingParams sampling;
  bool ignore_eos = false;
};

struct OfflineOptions {
  int64_t page_size = 16;
  std::vector<int64_t> stop_ids;  // eos ids of the model
  bool step_graphs = true;        // decode steps replay graphs where the backend records them
};

// Logits of every position of every request, (len, vocab) host f32 each.
Expected<std::vector<Tensor>> score_batch(model::Phi3ForCausalLM& model,
                                          const lora::AdapterSlots* adapters,
                                          const std::vector<OfflineRequest>& requests,
                                          const OfflineOptions& options);

struct Generation {
  std::vector<int32_t> tokens;  // new tokens only
  std::string finish_reason;    // "length" or "stop"
};

Expected<std::vector<Generation>> generate_batch(model::Phi3ForCausalLM& model,
                                                 const lora::AdapterSlots* adapters,
                                                 const std::vector<OfflineRequest>& requests,
                                                 const OfflineOptions& options);

}  // namespace philora::engine
