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
    return LoraApply{adapters ? adapters->table(layer, t) : nullptr, &in.lora};
  };

  // The residual stream, updated in place: each sublayer's output projection
  // adds into it (matmul_add), and each norm reads it alone. The o_proj and
  // down_proj LoRA run on the side queue while their base matmul runs (on CUDA
  // those matmuls leave a quarter of the GPU idle at decode sizes): the shrink
  // and the delta land in their own tensor, and the norm after the sublayer
  // adds it to the residual (add_rms_norm) once the side has joined.
  Tensor residual = ops.embedding(in.tokens.token_ids, w_.embed_tokens);  // (T, hidden)
  SideDelta pending;  // the last down_proj's LoRA delta, still on the side
  auto norm = [&](SideDelta& side, const Tensor& w) {
    if (side.delta.empty()) return ops.rms_norm(residual, w, eps);
    ops.side_join();
    auto [x, sum] = ops.add_rms_norm(side.delta, residual, w, eps);
    residual = std::move(sum);
    side = SideDelta{};
    return x;
  };
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    const Phi3LayerWeights& layer = w_.layers[size_t(l)];
    KvLayer& cache = kv.layers[size_t(l)];

    Tensor x = norm(pending, layer.input_layernorm);
    Tensor qkv = linear(ops, x, layer.qkv_proj, lora(l, lora::Target::qkv));
    ops.rope_and_cache(qkv, in.tokens, rope_, cache);
    Tensor attn = ops.attention(qkv, cache, in.attention, rope_);
    SideDelta o_side = side_delta(ops, attn, lora(l, lora::Target::o));
    ops.matmul_add(attn, layer.o_proj, residual);

    Tensor y = norm(o_side, layer.post_attention_layernorm);
    Tensor gate_up = linear(ops, y, layer.gate_up_proj, lora(l, lora::Target::gate_up));
    Tensor h = ops.silu_mul(gate_up);
    pending = side_delta(ops, h, lora(l, lora::Target::down));
    ops.matmul_add(h, layer.down_proj, residual);
  }
  Tensor x = norm(pending, w_.norm);
  if (!in.all_rows) x = ops.gather_rows(x, in.logit_rows);
  if (in.skip_lm_head) return x;
  const LoraApply head{adapters ? adapters->table(0, lora::Target::lm_head) : nullptr,
                       &in.lora_logits};
  return linear(ops, x, w_.lm_head, head);
}

}  // namespace philora::model
