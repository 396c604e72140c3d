// Rotary embedding parameters of a Phi-3 config, computed exactly as HF's
// Phi3RotaryEmbedding computes them (f32 arithmetic):
//   inv_freq_i = 1 / (f_i · theta^(2i / rotary_dim)),  f = short/long factor or 1.
#pragma once

#include <vector>

#include "backend/backend.h"
#include "model/config.h"

namespace philora::model {

// Host f32 inverse frequencies [rotary_dim / 2] for the given factors (empty = 1).
std::vector<float> rope_inv_freq(const Phi3Config& config, const std::vector<double>& factors);

RopeParams make_rope_params(const Phi3Config& config, Backend& backend);

// The per-sequence LongRoPE rule: long factors iff the sequence can grow past
// original_max_position_embeddings (prompt + max new tokens), decided once.
inline bool uses_long_rope(const Phi3Config& config, int64_t max_total_len) {
  return config.longrope && max_total_len > config.original_max_position_embeddings;
}

}  // namespace philora::model
