#include "model/rope.h"

#include <cmath>

namespace philora::model {

std::vector<float> rope_inv_freq(const Phi3Config& config, const std::vector<double>& factors) {
  const int64_t dim = config.rotary_dim();
  std::vector<float> inv(size_t(dim / 2));
  const float base = float(config.rope_theta);
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float exponent = float(2 * i) / float(dim);
    const float power = std::pow(base, exponent);
    const float factor = factors.empty() ? 1.0f : float(factors[size_t(i)]);
    inv[size_t(i)] = 1.0f / (factor * power);
  }
  return inv;
}

RopeParams make_rope_params(const Phi3Config& config, Backend& backend) {
  RopeParams r;
  r.rotary_dim = config.rotary_dim();
  r.n_heads = config.num_attention_heads;
  r.n_kv_heads = config.num_key_value_heads;
  r.head_dim = config.head_dim;
  if (config.longrope) {
    r.inv_freq_short = backend.upload_f32(rope_inv_freq(config, config.short_factor));
    r.inv_freq_long = backend.upload_f32(rope_inv_freq(config, config.long_factor));
    r.attention_factor = float(config.rope_attention_factor);
  } else {
    r.inv_freq_short = backend.upload_f32(rope_inv_freq(config, {}));
    r.inv_freq_long = r.inv_freq_short;
  }
  return r;
}

}  // namespace philora::model
