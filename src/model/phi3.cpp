#include "model/phi3.h"

#include <stdexcept>
#include <string>

#include "model/linear.h"
#include "model/rope.h"

namespace philora::model {

namespace {

// Rank tp.rank's sizes, once the split is checked: a (config, world) pair
// that does not split is refused here, wherever a sharded model is built.
Phi3Config rank_config(const Phi3Config& config, const TpContext& tp) {
  require_tensor_parallel(config, tp.world);
  if (tp.world > 1 && (tp.rank < 0 || tp.rank >= tp.world || !tp.comm ||
                       tp.comm->world_size() != tp.world || tp.comm->rank() != tp.rank))
    throw std::invalid_argument("tensor parallelism: rank " + std::to_string(tp.rank) + " of " +
                                std::to_string(tp.world) +
                                " needs its own end of a group of that many ranks");
  return shard_config(config, tp.world);
}

}  // namespace

Phi3ForCausalLM::Phi3ForCausalLM(Phi3Config config, Phi3Weights weights, Backend& backend,
                                 TpContext tp)
    : config_(std::move(config)),
      local_(rank_config(config_, tp)),
      w_(std::move(weights)),
      backend_(backend),
      tp_(tp),
      rope_(make_rope_params(local_, backend)) {}

Tensor Phi3ForCausalLM::forward(const StepInputs& in, kv::KvCache& kv,
                                const LoraTables* lora_tables, Tensor* hidden) {
  if (lora_tables && !lora_tables->peers.empty())
    throw std::logic_error("adapter tables split for " +
                           std::to_string(lora_tables->peers.size() + 1) +
                           " tensor-parallel ranks given to a model of one");
  return forward_rank(in, kv.layers, lora_tables, hidden);
}

kv::KvCache Phi3ForCausalLM::make_kv_cache(int64_t num_pages, int64_t page_size) {
  return kv::KvCache(backend_, local_.num_hidden_layers, num_pages, page_size,
                     local_.num_key_value_heads, local_.head_dim);
}

// Every pool's rows `from` into rows `to` (a pool seen as (pages, page elements)).
void Phi3ForCausalLM::copy_rank_pages(const std::vector<KvLayer>& layers,
                                      const std::vector<std::pair<int32_t, int32_t>>& pages) {
  std::vector<Backend::ColumnWrite> writes;
  for (const KvLayer& layer : layers)
    for (const Tensor& pool : {layer.k, layer.v}) {
      const Tensor m = pool.reshape({pool.dim(0), pool.numel() / pool.dim(0)});
      for (const auto& [from, to] : pages)
        writes.push_back({m.row_slice(to, to + 1), 0, m.row_slice(from, from + 1), m.cols()});
    }
  if (!writes.empty()) backend_.write_columns_batch(writes);
}

void Phi3ForCausalLM::copy_kv_pages(kv::KvCache& kv,
                                    const std::vector<std::pair<int32_t, int32_t>>& pages) {
  copy_rank_pages(kv.layers, pages);
}

// With tensor parallelism, each rank runs this on its part of the weights:
// its heads, its share of the MLP, its vocabulary rows; the two row-parallel
// projections sum over the ranks (add_row_parallel), the logits are gathered
// (linear_vocab_parallel). With one rank both are the plain ops.
Tensor Phi3ForCausalLM::forward_rank(const StepInputs& in, std::vector<KvLayer>& kv,
                                     const LoraTables* lora_tables, Tensor* hidden) {
  Backend& ops = backend_;
  const float eps = float(config_.rms_norm_eps);
  auto lora = [&](int64_t layer, LoraTarget t) {
    return LoraApply{lora_tables ? lora_tables->table(layer, t) : nullptr, &in.lora};
  };

  // The residual stream, updated in place: each sublayer's output projection
  // adds into it (linear_add), and each norm reads it alone.
  Tensor residual = ops.embedding(in.tokens.token_ids, w_.embed_tokens);  // (T, hidden)
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    const Phi3LayerWeights& layer = w_.layers[size_t(l)];
    KvLayer& cache = kv[size_t(l)];

    // The norms and SiLU·mul go in as prologues of the matmuls that read
    // their outputs (fused there where the backend can).
    Tensor qkv = linear(ops, {residual, Prologue::rms_norm(layer.input_layernorm, eps)},
                        layer.qkv_proj, lora(l, LoraTarget::qkv));
    ops.rope_and_cache(qkv, in.tokens, rope_, cache);
    Tensor attn = ops.attention(qkv, cache, in.attention, rope_);
    add_row_parallel(ops, tp_, attn, layer.o_proj, lora(l, LoraTarget::o), residual);

    Tensor gate_up =
        linear(ops, {residual, Prologue::rms_norm(layer.post_attention_layernorm, eps)},
               layer.gate_up_proj, lora(l, LoraTarget::gate_up));
    add_row_parallel(ops, tp_, {gate_up, Prologue::silu_mul()}, layer.down_proj,
                     lora(l, LoraTarget::down), residual);
  }
  Tensor x = ops.rms_norm(residual, w_.norm, eps);
  if (!in.all_rows) x = ops.gather_rows(x, in.logit_rows);
  if (hidden) *hidden = x;
  if (in.skip_lm_head) return x;
  const LoraApply head{lora_tables ? lora_tables->table(0, LoraTarget::lm_head) : nullptr,
                       &in.lora_logits};
  return linear_vocab_parallel(ops, tp_, x, w_.lm_head, head);
}

bool Phi3ForCausalLM::lora_columns_supported() {
  for (Phi3LayerWeights& layer : w_.layers)
    for (Tensor* w : lora_targets(layer))
      if (!backend_.lora_columns_supported(w->cols())) return false;
  return true;
}

std::vector<Tensor> Phi3ForCausalLM::widen_for_lora(int64_t columns) {
  std::vector<Tensor> wide;
  for (Phi3LayerWeights& layer : w_.layers)
    for (Tensor* w : lora_targets(layer)) {
      if (w->ndim != 2)
        throw std::logic_error("widen_for_lora: weight " + w->shape_str() + " is not a matrix");
      const int64_t in = w->cols();
      Tensor x = backend_.alloc(w->dtype, {w->dim(0), in + columns});
      backend_.write_columns(x, 0, *w);
      backend_.write_columns(x, in, Tensor(), columns);
      *w = x;
      wide.push_back(x);
    }
  return wide;
}

}  // namespace philora::model
