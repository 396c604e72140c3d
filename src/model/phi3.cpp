#include "model/phi3.h"

#include "model/linear.h"
#include "model/rope.h"

namespace philora::model {

Phi3ForCausalLM::Phi3ForCausalLM(Phi3Config config, Phi3Weights weights, Backend& backend)
    : config_(std::move(config)),
      w_(std::move(weights)),
      backend_(backend),
      rope_(make_rope_params(config_, backend)) {}

Tensor Phi3ForCausalLM::forward(const StepInputs& in, kv::KvCache& kv,
                                const lora::AdapterSlots* adapters) {
  Backend& ops = backend_;
  const float eps = float(config_.rms_norm_eps);
  auto lora = [&](int64_t layer, lora::Target t) {
    return LoraPart{adapters ? adapters->table(layer, t) : nullptr, &in.lora};
  };

  // The residual stream, updated in place: each sublayer's output projection
  // adds into it (linear_add), and each norm reads it alone. The norms and
  // silu_mul also compute the LoRA shrink of their output for the module after
  // them (rms_norm_shrink, silu_mul_shrink: one kernel on CUDA at decode sizes).
  Tensor residual = ops.embedding(in.tokens.token_ids, w_.embed_tokens);  // (T, hidden)
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    const Phi3LayerWeights& layer = w_.layers[size_t(l)];
    KvLayer& cache = kv.layers[size_t(l)];
    const LoraPart qkv_lora = lora(l, lora::Target::qkv), gate_up_lora = lora(l, lora::Target::gate_up),
                   down_lora = lora(l, lora::Target::down);

    auto [x, xa_qkv] = ops.rms_norm_shrink(residual, layer.input_layernorm, eps, qkv_lora);
    Tensor qkv = linear_shrunk(ops, x, layer.qkv_proj, qkv_lora, xa_qkv);
    ops.rope_and_cache(qkv, in.tokens, rope_, cache);
    Tensor attn = ops.attention(qkv, cache, in.attention, rope_);
    linear_add(ops, attn, layer.o_proj, lora(l, lora::Target::o), residual);

    auto [y, xa_gate_up] = ops.rms_norm_shrink(residual, layer.post_attention_layernorm, eps, gate_up_lora);
    Tensor gate_up = linear_shrunk(ops, y, layer.gate_up_proj, gate_up_lora, xa_gate_up);
    auto [h, xa_h] = ops.silu_mul_shrink(gate_up, down_lora);
    linear_add(ops, h, layer.down_proj, down_lora, residual, xa_h);
  }
  Tensor x = ops.rms_norm(residual, w_.norm, eps);
  if (!in.all_rows) x = ops.gather_rows(x, in.logit_rows);
  if (in.skip_lm_head) return x;
  const LoraPart head{adapters ? adapters->table(0, lora::Target::lm_head) : nullptr,
                       &in.lora_logits};
  return linear(ops, x, w_.lm_head, head);
}

}  // namespace philora::model
