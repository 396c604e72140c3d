// Phi3ForCausalLM, mirroring transformers/models/phi3/modeling_phi3.py:
// embedding -> N × (add+RMSNorm, fused qkv, RoPE, paged attention, o_proj,
// add+RMSNorm, fused gate_up, SiLU·mul, down) -> final norm -> lm_head on the
// selected rows. One forward serves prefill and decode alike.
#pragma once

#include <array>
#include <vector>

#include "backend/backend.h"
#include "kv/kv_cache.h"
#include "model/config.h"
#include "model/shard.h"
#include "model/weights.h"

namespace philora::model {

// Everything one step needs, already on the backend (built by engine/plan).
struct StepInputs {
  TokenPlan tokens;
  AttentionPlan attention;
  LoraBatch lora;             // per token of the step
  LoraBatch lora_logits;      // per selected row (lm_head LoRA)
  Tensor logit_rows;          // [R] i32 rows of the step that need logits
  bool all_rows = false;      // every row needs logits (score); logit_rows ignored
  bool skip_lm_head = false;  // return final hidden states of the selected rows instead
};

class Phi3ForCausalLM {
 public:
  // `weights` are the whole model's, or with tensor parallelism (tp.world > 1)
  // rank tp.rank's part (load_weights with its TpShard): the forward then runs
  // as that rank, its row-parallel sums and logits through tp.comm
  // (TensorParallelPhi3 in model/tensor_parallel.h runs every rank).
  Phi3ForCausalLM(Phi3Config config, Phi3Weights weights, Backend& backend, TpContext tp = {});
  virtual ~Phi3ForCausalLM() = default;

  // The whole model's config (vocabulary, heads), whatever the ranks.
  const Phi3Config& config() const { return config_; }
  int64_t tensor_parallel() const { return tp_.world; }
  Backend& backend() { return backend_; }
  // (vocab, hidden): the whole output matrix on backend() (Medusa heads
  // without their own use it).
  virtual const Tensor& lm_head() const { return w_.lm_head; }

  // Logits (R, vocab) of the selected rows — or hidden states (R, hidden) with
  // skip_lm_head — in the backend's compute dtype, on the backend. `hidden`
  // (may be null) also gets the selected rows' final hidden states (R, hidden)
  // (after the final norm: what Medusa heads read), at no cost: the tensor
  // the lm_head reads.
  // `lora` (may be null: no adapters) are the resident adapters' tables.
  virtual Tensor forward(const StepInputs& in, kv::KvCache& kv, const LoraTables* lora,
                         Tensor* hidden = nullptr);
  // A KV cache of `num_pages` pages for this model (every rank's layers).
  virtual kv::KvCache make_kv_cache(int64_t num_pages, int64_t page_size);
  // Queues copies of whole KV pages, (from, to) page ids, in every layer's K
  // and V pools of every rank, each on its rank's backend (tree speculation:
  // an alternative chain's copy of a partial page); ordered before the next
  // forward.
  virtual void copy_kv_pages(kv::KvCache& kv,
                             const std::vector<std::pair<int32_t, int32_t>>& pages);

  // Gives the four LoRA targets of every layer (qkv, o, gate_up, down) a copy
  // of their weight with `columns` zero columns more, where resident adapters'
  // B matrices go (lora::AdapterSlots::attach_columns takes the returned
  // tensors, in LoraTables' module order). Done once, before serving.
  virtual std::vector<Tensor> widen_for_lora(int64_t columns);
  // Whether the backend's LoRA columns shrink takes every target's input size.
  virtual bool lora_columns_supported();
  // Whether a step graph recorded on backend() replays this model's whole
  // forward (engine::StepRunner records graphs only then).
  virtual bool step_graphs_supported() { return backend_.can_capture(); }

 private:
  friend class TensorParallelPhi3;
  // copy_kv_pages on this rank's own pools.
  void copy_rank_pages(const std::vector<KvLayer>& layers,
                       const std::vector<std::pair<int32_t, int32_t>>& pages);
  // The forward as this rank alone, over its own KV layers and adapter
  // tables (TensorParallelPhi3 runs it on every rank at once; on one rank of
  // a group by itself it would wait for the others forever).
  Tensor forward_rank(const StepInputs& in, std::vector<KvLayer>& kv, const LoraTables* lora,
                      Tensor* hidden);

  // The four LoRA targets of a layer with LoRA columns, in LoraTarget order.
  static std::array<Tensor*, 4> lora_targets(Phi3LayerWeights& l) {
    return {&l.qkv_proj, &l.o_proj, &l.gate_up_proj, &l.down_proj};
  }

  Phi3Config config_;
  Phi3Config local_;  // this rank's sizes (shard_config); config_ with one rank
  Phi3Weights w_;
  Backend& backend_;
  TpContext tp_;
  RopeParams rope_;  // of local_: this rank's heads
};

}  // namespace philora::model
