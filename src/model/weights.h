// The weights of Phi3ForCausalLM, named as in HF's checkpoint, each with the
// way tensor parallelism splits it (model/shard.h). Loading goes through one
// table (weight_specs) so that names, shapes and splits live in one place.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/shard.h"

namespace philora::model {

struct Phi3LayerWeights {
  Tensor input_layernorm;           // (hidden)
  Tensor qkv_proj;                  // (H·d + 2·Hkv·d, hidden) rows [q | k | v]
  Tensor o_proj;                    // (hidden, H·d)
  Tensor post_attention_layernorm;  // (hidden)
  Tensor gate_up_proj;              // (2·intermediate, hidden) rows [gate | up]
  Tensor down_proj;                 // (hidden, intermediate)
};

struct Phi3Weights {
  Tensor embed_tokens;  // (vocab, hidden)
  std::vector<Phi3LayerWeights> layers;
  Tensor norm;     // (hidden)
  Tensor lm_head;  // (vocab, hidden); the embedding itself when tie_word_embeddings
};

struct WeightSpec {
  std::string name;            // HF checkpoint name
  std::vector<int64_t> shape;  // expected shape
  Split split = Split::replicated;            // how tensor parallelism splits it
  Tensor Phi3Weights::*top = nullptr;         // a model-level tensor, or
  Tensor Phi3LayerWeights::*field = nullptr;  // a per-layer tensor of `layer`
  int64_t layer = -1;
};

std::vector<WeightSpec> weight_specs(const Phi3Config& config);

// Checks every tensor of the checkpoint against weight_specs (missing, extra,
// shape, dtype) and uploads each to `backend` in its compute dtype;
// `progress` (optional) hears the checkpoint bytes uploaded so far and in all.
// With shard.world > 1, rank shard.rank's part of each (weight_slice; the
// caller has checked the split with check_tensor_parallel); a tied lm_head is
// then the rank's vocabulary rows of the (whole) embedding.
Expected<Phi3Weights> load_weights(
    const io::TensorSet& tensors, const Phi3Config& config, Backend& backend,
    const std::function<void(int64_t done, int64_t total)>& progress = {}, TpShard shard = {});

// Random weights of the right shapes (benchmarks): normal(0, std) for
// matrices, 1 + normal(0, 0.1) for norms; deterministic in `seed`. With
// shard.world > 1, rank shard.rank's part of the same weights.
Phi3Weights random_weights(const Phi3Config& config, Backend& backend, uint64_t seed,
                           float std = 0.02f, TpShard shard = {});

}  // namespace philora::model
