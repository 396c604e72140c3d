// Phi3Config: every field of HF's configuration_phi3.py that changes the math.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace philora::model {

struct Phi3Config {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int64_t head_dim = 0;             // hidden_size / num_attention_heads unless given
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  double partial_rotary_factor = 1.0;
  int64_t max_position_embeddings = 4096;
  int64_t original_max_position_embeddings = 4096;
  std::optional<int64_t> sliding_window;
  bool tie_word_embeddings = false;
  DType torch_dtype = DType::bf16;

  // LongRoPE (rope_scaling.type "longrope" or "su"); empty factors = default RoPE.
  bool longrope = false;
  std::vector<double> short_factor;  // [rotary_dim / 2]
  std::vector<double> long_factor;   // [rotary_dim / 2]
  // cos/sin multiplier: sqrt(1 + ln(s)/ln(orig)), s = max_pos / orig (1 when s ≤ 1),
  // or rope_scaling.attention_factor when the config gives one.
  double rope_attention_factor = 1.0;

  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // config.json, overridden by generation_config.json
  std::optional<int64_t> pad_token_id;

  int64_t rotary_dim() const { return int64_t(double(head_dim) * partial_rotary_factor); }
  int64_t q_size() const { return num_attention_heads * head_dim; }
  int64_t kv_size() const { return num_key_value_heads * head_dim; }
  int64_t qkv_size() const { return q_size() + 2 * kv_size(); }

  // Checks the invariants the forward relies on (divisibility, factor lengths).
  Status validate() const;
};

// Parses config.json text; `origin` names the file in error messages.
Expected<Phi3Config> parse_config(const std::string& json_text, const std::string& origin);
// Reads DIR/config.json and, when present, DIR/generation_config.json (eos/bos ids).
Expected<Phi3Config> load_config(const std::string& dir);

}  // namespace philora::model
