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
  // adds W x into it (matmul_add). The LoRA of each module rides where it is
  // cheapest on CUDA (backend.h): the norms compute the shrink of the qkv and
  // gate_up inputs and add the (small) o_proj and down_proj deltas; silu_mul
  // computes down_proj's shrink; the wide qkv and gate_up deltas are written
  // before their matmul, which adds W x (linear_shrunk); o_proj's shrink of
  // the attention output is an op of its own.
  Tensor residual = ops.embedding(in.tokens.token_ids, w_.embed_tokens);  // (T, hidden)
  LoraPart down_prev;  // the previous layer's down_proj, whose delta is still to add
  Tensor xa_down;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    const Phi3LayerWeights& layer = w_.layers[size_t(l)];
    KvLayer& cache = kv.layers[size_t(l)];
    const LoraPart qkv_lora = lora(l, lora::Target::qkv), o_lora = lora(l, lora::Target::o),
                   gate_up_lora = lora(l, lora::Target::gate_up), down_lora = lora(l, lora::Target::down);

    auto [x, xa_qkv] = ops.rms_norm_lora(residual, layer.input_layernorm, eps, down_prev, xa_down, qkv_lora);
    Tensor qkv = linear_shrunk(ops, x, layer.qkv_proj, qkv_lora, xa_qkv);
    ops.rope_and_cache(qkv, in.tokens, rope_, cache);
    Tensor attn = ops.attention(qkv, cache, in.attention, rope_);
    const Tensor xa_o = o_lora.active() ? ops.lora_shrink(attn, *o_lora.table, in.lora) : Tensor();
    ops.matmul_add(attn, layer.o_proj, residual);

    auto [y, xa_gate_up] =
        ops.rms_norm_lora(residual, layer.post_attention_layernorm, eps, o_lora, xa_o, gate_up_lora);
    Tensor gate_up = linear_shrunk(ops, y, layer.gate_up_proj, gate_up_lora, xa_gate_up);
    auto [h, xa_h] = ops.silu_mul_lora(gate_up, down_lora);
    ops.matmul_add(h, layer.down_proj, residual);
    down_prev = down_lora;
    xa_down = std::move(xa_h);
  }
  Tensor x = ops.rms_norm_lora(residual, w_.norm, eps, down_prev, xa_down, LoraPart{}).first;
  if (!in.all_rows) x = ops.gather_rows(x, in.logit_rows);
  if (in.skip_lm_head) return x;
  const LoraPart head{adapters ? adapters->table(0, lora::Target::lm_head) : nullptr,
                       &in.lora_logits};
  return linear(ops, x, w_.lm_head, head);
}

}  // namespace philora::model
