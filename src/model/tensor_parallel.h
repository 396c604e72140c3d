// Tensor parallelism in one process: N ranks, one thread each, rank r's part
// of the weights (model/shard.h says which) on backends[r], talking through
// a Communicator per rank. The engine sees one Phi3ForCausalLM: this object is
// rank 0 (the engine's backend, the engine's thread) and runs the other ranks
// beside it for every forward, each over its own KV pools (KvCache::peer_layers)
// and adapter tables (LoraTables::peers). Every rank reads the step's inputs
// as rank 0 staged them; the logits are gathered on rank 0 alone (the one
// that samples) and returned. A rank that throws aborts the group (the others' collectives
// throw instead of waiting) and its exception leaves forward, after every
// rank has left and the group was reset (Communicator::reset), so that the
// next step can use it. On the CPU the ranks are simulated (a LoopbackGroup,
// host memory). On CUDA each rank holds a GPU and an NCCL communicator
// (backend/cuda/nccl_communicator.h); the peers read the step's inputs where
// rank 0 staged them (peer access to its GPU), after each rank's
// Communicator::begin_step; steps run eagerly (no step graphs).
#pragma once

#include <memory>
#include <vector>

#include "backend/communicator.h"
#include "model/phi3.h"

namespace philora::model {

class TensorParallelPhi3 final : public Phi3ForCausalLM {
 public:
  struct Rank {
    Backend* backend = nullptr;
    Phi3Weights weights;                 // this rank's part (load_weights with its TpShard)
    std::unique_ptr<Communicator> comm;  // this rank's end of the group
  };
  // `config` is the whole model's; ranks[0] is this object's.
  TensorParallelPhi3(Phi3Config config, std::vector<Rank> ranks);

  Tensor forward(const StepInputs& in, kv::KvCache& kv, const LoraTables* lora,
                 Tensor* hidden = nullptr) override;
  kv::KvCache make_kv_cache(int64_t num_pages, int64_t page_size) override;
  void copy_kv_pages(kv::KvCache& kv,
                     const std::vector<std::pair<int32_t, int32_t>>& pages) override;
  // Rank 0's targets, then rank 1's, ...: 4 · layers · N weights (what
  // lora::AdapterSlots' tensor-parallel attach_columns takes).
  std::vector<Tensor> widen_for_lora(int64_t columns) override;
  bool lora_columns_supported() override;
  // Rank 0's backend records graphs and every rank's communicator may be
  // recorded (the CPU's loopback; not NCCL: CUDA steps stay eager).
  bool step_graphs_supported() override;
  // The whole (vocab, hidden) matrix on rank 0's backend, put together from
  // every rank's vocabulary rows on first use (Medusa heads read it; the
  // forward's lm_head stays split).
  const Tensor& lm_head() const override;

 private:
  mutable Tensor whole_lm_head_;
  std::unique_ptr<Communicator> comm_;                   // rank 0's
  std::vector<std::unique_ptr<Phi3ForCausalLM>> peers_;  // ranks 1 .. N-1
  std::vector<std::unique_ptr<Communicator>> peer_comms_;
};

// The model split over backends.size() ranks (rank r on backends[r], its
// collectives through comms[r]), each rank's weights loaded from the one
// checkpoint through weight_specs' splits. Refuses, naming the counts, a
// model whose heads, intermediate size or vocabulary do not split
// (check_tensor_parallel).
Expected<std::unique_ptr<Phi3ForCausalLM>> load_tensor_parallel(
    const io::TensorSet& tensors, const Phi3Config& config, const std::vector<Backend*>& backends,
    std::vector<std::unique_ptr<Communicator>> comms,
    const std::function<void(int64_t done, int64_t total)>& progress = {});

}  // namespace philora::model
