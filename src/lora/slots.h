// Adapters resident on a backend, one per slot. For every (layer, target)
// module the slots are seen through a LoraModuleTable (pointer, rank and scale
// per slot) that the LoRA kernels index by each token's slot.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "lora/adapter.h"
#include "model/config.h"
#include "model/shard.h"

namespace philora::lora {

// LoRA columns (decode's one-matmul form), where their use is decided:
// kColumnsPerSlot columns of every target weight per adapter slot unless asked
// otherwise (a rank-16 adapter each), for at most kColumnsMaxSlots slots (1024
// columns: 2.1 GB on Phi-3-mini); only steps of at most kColumnsMaxTokens
// tokens read them (longer ones, prefill, keep the shrink / expand kernels,
// which read each adapter once per tile of tokens).
inline constexpr int64_t kColumnsPerSlot = 16;
inline constexpr int64_t kColumnsMaxSlots = 64;
inline constexpr int64_t kColumnsMaxTokens = 256;
// The columns to attach for `requested` (-1: the default for `num_slots`), a
// multiple of 8; 0 for none.
int64_t columns_to_attach(int64_t requested, int num_slots);

class AdapterSlots {
 public:
  AdapterSlots(Backend& backend, const model::Phi3Config& config, int num_slots);
  // Tensor parallelism over backends.size() ranks: rank r's slots on
  // backends[r], each adapter split as the base weights are
  // (model::shard_lora: B's rows for qkv / gate_up / lm_head, A's columns for
  // o / down). This object is rank 0's and keeps the other ranks' in step
  // (assign, clear, columns: the same slots, ranks and column ranges);
  // tables().peers are theirs.
  AdapterSlots(const std::vector<Backend*>& backends, const model::Phi3Config& config,
               int num_slots);

  int num_slots() const { return num_slots_; }
  Backend& backend() const { return backend_; }
  // Uploads the adapter's A and B into `slot`, replacing whatever was there.
  void assign(int slot, const Adapter& adapter);
  void clear(int slot);
  // A random adapter of rank `rank` on qkv, o, gate_up and down of every layer,
  // generated on the backend (benchmarks): A, B uniform in ±`half_width`.
  // With tensor parallelism each rank holds its part of the same adapter
  // (the whole one drawn with the same seeds, then split as assign splits).
  void assign_random(int slot, int64_t rank, float scale, uint64_t seed, float half_width = 0.02f);
  // The slots seen from one module; nullptr when no slot touches that module.
  const LoraModuleTable* table(int64_t layer, Target t) const { return view_.table(layer, t); }
  // Every module's table, as the forward takes them (at a fixed address).
  const LoraTables& tables() const { return view_; }
  // Largest rank resident in any slot (sizes the shrink buffer).
  int64_t max_rank() const;

  // LoRA columns (decode's one-matmul form, see LoraModuleTable): `weights`
  // are the base weights of the 4 · layers target modules, in module order
  // (layer-major, Target order), each (out, in + columns) with its last
  // `columns` zero. From now on every assigned adapter whose widest module
  // fits gets a range of those columns (a multiple of 8 wide) holding its B
  // in every module. Call before any assign; columns a multiple of 8. With
  // tensor parallelism, every rank's weights, rank 0's first
  // (model::TensorParallelPhi3::widen_for_lora).
  void attach_columns(std::vector<Tensor> weights, int64_t columns);
  int64_t columns() const { return columns_; }
  // The LoRA columns a step of these token slots (-1 = none) reads: the end
  // of the last used slot's range rounded up to a power of two (≥ 16, ≤ the
  // capacity), so that step graphs see few widths; 0 when no token has an
  // adapter, some token's adapter has no columns, or the step has more than
  // kColumnsMaxTokens tokens.
  int64_t step_columns(const std::vector<int32_t>& token_slot) const;
  // Changes whenever what the LoRA ops decide on the host changes (which
  // modules have a table, each table's max_rank); the tables themselves stay
  // at fixed addresses and are rewritten in place, so a recorded step graph
  // stays valid for as long as this number does.
  uint64_t layout_version() const { return layout_version_; }

 private:
  AdapterSlots(Backend& backend, const model::Phi3Config& config, int num_slots,
               model::TpShard shard);
  struct Resident {  // one slot's pair on one module
    Tensor a, b;     // (rank, in), (out, rank) in the backend's compute dtype
    int32_t rank = 0;
    float scale = 0;
  };
  size_t module_index(int64_t layer, Target t) const;
  // Writes the module's table into the host mirror; flush_tables uploads the
  // mirror (one copy) when something changed.
  void rebuild(size_t module);
  // Where the module's table starts in the host mirror, in 4-byte words
  // (written only with memcpy: the mirror's storage is int64_t).
  int32_t* module_words(size_t module);
  void flush_tables();
  // After the slot's modules are resident: true when it placed the slot's B in the columns and
  // so rebuilt the tables of every module with columns; false (nothing done) without room.
  bool place_columns(int slot);
  void place_waiting();           // place_columns for every slot still without columns
  void release_columns(int slot);

  Backend& backend_;
  int num_slots_;
  std::vector<std::array<int64_t, 2>> dims_;     // [modules] (in, out)
  std::vector<std::vector<Resident>> resident_;  // [modules][slots]
  std::vector<LoraModuleTable> tables_;          // [modules]: views of table_buf_
  Tensor table_buf_;                             // every module's table, on the backend
  std::vector<int64_t> table_host_;              // its host mirror, table_words_ per module
  size_t table_words_ = 0;
  bool tables_dirty_ = false;
  std::vector<bool> used_;                       // [modules]: any slot has rank > 0
  LoraTables view_;                              // &tables_[m] where used_[m], else null
  std::vector<int64_t> slot_rank_;               // [slots] max rank per slot
  uint64_t layout_version_ = 0;
  std::vector<Tensor> wide_;                     // [4 · layers] weights with LoRA columns
  int64_t columns_ = 0;
  std::vector<int32_t> col_offset_;              // [slots] first column (-1: none)
  std::vector<int32_t> col_width_;               // [slots]
  model::Phi3Config config_;                     // the whole model's (splits need its heads)
  model::TpShard shard_;                         // the rank these slots are
  std::vector<std::unique_ptr<AdapterSlots>> peers_;  // ranks 1 .. N-1 (rank 0's slots only)
};

}  // namespace philora::lora
