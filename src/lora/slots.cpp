#include "lora/slots.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace philora::lora {

namespace {

// `n` elements of `dtype` at byte `offset` of `base`, sharing its storage.
Tensor sub(const Tensor& base, size_t offset, DType dtype, int64_t n) {
  Tensor t = base;
  t.data = static_cast<char*>(base.data) + offset;
  t.dtype = dtype;
  t.ndim = 1;
  t.shape = {n, 0, 0, 0};
  return t;
}

// The tensor of `block` (on the backend) that `part` is of `host_block` (its
// host image): same offset, shape and dtype.
Tensor part_of(const Tensor& block, const Tensor& host_block, const Tensor& part) {
  Tensor t = part;
  t.data = static_cast<char*>(block.data) +
           (static_cast<const char*>(part.data) - static_cast<const char*>(host_block.data));
  t.device = block.device;
  t.storage = block.storage;
  return t;
}

// (in, out) of every module, layer-major in Target order, then lm_head.
std::vector<std::array<int64_t, 2>> module_dims(const model::Phi3Config& c) {
  std::vector<std::array<int64_t, 2>> dims;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    dims.push_back({c.hidden_size, c.qkv_size()});
    dims.push_back({c.q_size(), c.hidden_size});
    dims.push_back({c.hidden_size, 2 * c.intermediate_size});
    dims.push_back({c.intermediate_size, c.hidden_size});
  }
  dims.push_back({c.hidden_size, c.vocab_size});  // lm_head
  return dims;
}

}  // namespace

AdapterSlots::AdapterSlots(Backend& backend, const model::Phi3Config& config, int num_slots)
    : AdapterSlots(backend, config, num_slots, model::TpShard{}) {}

AdapterSlots::AdapterSlots(const std::vector<Backend*>& backends, const model::Phi3Config& config,
                           int num_slots)
    : AdapterSlots(*backends.at(0), config, num_slots,
                   model::TpShard{0, int64_t(backends.size())}) {
  for (size_t r = 1; r < backends.size(); ++r) {
    peers_.push_back(std::unique_ptr<AdapterSlots>(new AdapterSlots(
        *backends[r], config, num_slots, model::TpShard{int64_t(r), int64_t(backends.size())})));
    view_.peers.push_back(&peers_.back()->view_);
  }
}

AdapterSlots::AdapterSlots(Backend& backend, const model::Phi3Config& config, int num_slots,
                           model::TpShard shard)
    : backend_(backend),
      num_slots_(num_slots),
      slot_rank_(size_t(num_slots), 0),
      col_offset_(size_t(num_slots), -1),
      col_width_(size_t(num_slots), 0),
      config_(config),
      shard_(shard) {
  model::require_tensor_parallel(config, shard.world);
  dims_ = module_dims(model::shard_config(config, shard.world));  // this rank's sizes
  resident_.assign(dims_.size(), std::vector<Resident>(size_t(num_slots)));
  tables_.resize(dims_.size());
  used_.assign(dims_.size(), false);
  view_.modules.assign(dims_.size(), nullptr);
  // Every module's table lives in one backend buffer (fixed addresses: step
  // graphs keep them) with a host mirror: a change is one upload (flush_tables).
  const auto S = size_t(num_slots);
  table_words_ = 4 * S;  // a_ptrs, b_ptrs (i64), then b_ld, ranks, scales, col_offsets (4 bytes)
  table_host_.assign(dims_.size() * table_words_, 0);
  const std::vector<int32_t> no_columns(S, -1);  // col_offsets: none yet
  for (size_t m = 0; m < dims_.size(); ++m)
    std::memcpy(module_words(m) + 7 * S, no_columns.data(), S * 4);
  table_buf_ = backend_.upload_i64(table_host_);
  for (size_t m = 0; m < dims_.size(); ++m) {
    LoraModuleTable& t = tables_[m];
    const size_t at = m * table_words_ * 8;  // bytes
    t.a_ptrs = sub(table_buf_, at, DType::i64, num_slots);
    t.b_ptrs = sub(table_buf_, at + S * 8, DType::i64, num_slots);
    t.b_ld = sub(table_buf_, at + S * 16, DType::i32, num_slots);
    t.ranks = sub(table_buf_, at + S * 20, DType::i32, num_slots);
    t.scales = sub(table_buf_, at + S * 24, DType::f32, num_slots);
    t.dtype = backend_.compute_dtype();
    t.num_slots = num_slots_;
    t.in_features = dims_[m][0];
    t.out_features = dims_[m][1];
  }
}

size_t AdapterSlots::module_index(int64_t layer, Target t) const {
  return t == Target::lm_head ? dims_.size() - 1 : size_t(layer * kLayerTargets + int64_t(t));
}

void AdapterSlots::assign(int slot, const Adapter& adapter) {
  for (const auto& peer : peers_) peer->assign(slot, adapter);
  release_columns(slot);
  slot_rank_[size_t(slot)] = 0;
  // A packed adapter in the compute dtype goes up as two copies (its A block
  // and its B block; from page-locked memory where the store keeps it there),
  // its modules views of them; others module by module (and every rank's
  // part of a split one).
  const DType dtype = backend_.compute_dtype();
  const bool packed = shard_.world == 1 && !adapter.packed_a.empty() &&
                      adapter.packed_a.dtype == dtype && adapter.packed_b.dtype == dtype;
  const Tensor a_block = packed ? backend_.upload(adapter.packed_a, dtype) : Tensor();
  const Tensor b_block = packed ? backend_.upload(adapter.packed_b, dtype) : Tensor();
  for (size_t m = 0; m < dims_.size(); ++m) {
    const bool head = m == dims_.size() - 1;
    const auto& mod =
        head ? adapter.lm_head
             : adapter.module(int64_t(m) / kLayerTargets, Target(int64_t(m) % kLayerTargets));
    Resident r;
    if (mod && packed) {
      r.a = part_of(a_block, adapter.packed_a, mod->a);
      r.b = part_of(b_block, adapter.packed_b, mod->b);
    } else if (mod) {
      const auto [a, b] =
          model::shard_lora(head ? Target::lm_head : Target(int64_t(m) % kLayerTargets), mod->a,
                            mod->b, config_, shard_);
      r.a = backend_.upload(a, dtype);
      r.b = backend_.upload(b, dtype);
    }
    if (mod) {
      r.rank = int32_t(mod->rank);
      r.scale = mod->scale;
      slot_rank_[size_t(slot)] = std::max(slot_rank_[size_t(slot)], mod->rank);
    }
    resident_[m][size_t(slot)] = r;
  }
  // B placed in the columns is read from there; the B block goes when no
  // module's view of it is left.
  place_columns(slot);
  for (size_t m = 0; m < dims_.size(); ++m) rebuild(m);
  place_waiting();
  flush_tables();
}

void AdapterSlots::assign_random(int slot, int64_t rank, float scale, uint64_t seed,
                                 float half_width) {
  for (const auto& peer : peers_) peer->assign_random(slot, rank, scale, seed, half_width);
  release_columns(slot);
  // With tensor parallelism, every rank draws the whole adapter (the same
  // seeds) and keeps its part, as assign does: the ranks together hold the
  // adapter one rank would.
  const std::vector<std::array<int64_t, 2>> whole =
      shard_.world == 1 ? dims_ : module_dims(config_);
  for (size_t m = 0; m + 1 < dims_.size(); ++m) {
    Resident r;
    r.a = backend_.random_uniform({rank, whole[m][0]}, seed + 2 * m, 0.0f, half_width);
    r.b = backend_.random_uniform({whole[m][1], rank}, seed + 2 * m + 1, 0.0f, half_width);
    if (shard_.world > 1) {
      const auto [a, b] =
          model::shard_lora(Target(int64_t(m) % kLayerTargets), backend_.to_host_f32(r.a),
                            backend_.to_host_f32(r.b), config_, shard_);
      r.a = backend_.upload(a, backend_.compute_dtype());
      r.b = backend_.upload(b, backend_.compute_dtype());
    }
    r.rank = int32_t(rank);
    r.scale = scale;
    resident_[m][size_t(slot)] = r;
    rebuild(m);
  }
  slot_rank_[size_t(slot)] = rank;
  place_columns(slot);
  place_waiting();
  flush_tables();
}

void AdapterSlots::clear(int slot) {
  for (const auto& peer : peers_) peer->clear(slot);
  release_columns(slot);
  for (size_t m = 0; m < dims_.size(); ++m) {
    resident_[m][size_t(slot)] = Resident{};
    rebuild(m);
  }
  slot_rank_[size_t(slot)] = 0;
  place_waiting();
  flush_tables();
}

void AdapterSlots::rebuild(size_t m) {
  std::vector<int64_t> a(static_cast<size_t>(num_slots_)), b(static_cast<size_t>(num_slots_));
  std::vector<int32_t> ranks(static_cast<size_t>(num_slots_)), b_ld(static_cast<size_t>(num_slots_));
  std::vector<float> scales(static_cast<size_t>(num_slots_));
  int64_t max_rank = 0;
  for (size_t s = 0; s < size_t(num_slots_); ++s) {
    const Resident& r = resident_[m][s];
    a[s] = int64_t(reinterpret_cast<uintptr_t>(r.a.data));
    b[s] = int64_t(reinterpret_cast<uintptr_t>(r.b.data));
    b_ld[s] = r.rank;
    if (r.rank > 0 && !r.b.data && col_offset_[s] >= 0 && m < wide_.size()) {  // B lives in the columns
      const Tensor& w = wide_[m];
      b[s] = int64_t(reinterpret_cast<uintptr_t>(static_cast<const char*>(w.data) +
                                                 (dims_[m][0] + col_offset_[s]) * int64_t(dtype_size(w.dtype))));
      b_ld[s] = int32_t(w.cols());
    }
    ranks[s] = r.rank;
    scales[s] = r.scale;
    max_rank = std::max<int64_t>(max_rank, r.rank);
  }
  LoraModuleTable& t = tables_[m];
  const auto S = size_t(num_slots_);
  int32_t* words = module_words(m);
  std::memcpy(words, a.data(), S * 8);
  std::memcpy(words + 2 * S, b.data(), S * 8);
  std::memcpy(words + 4 * S, b_ld.data(), S * 4);
  std::memcpy(words + 5 * S, ranks.data(), S * 4);
  std::memcpy(words + 6 * S, scales.data(), S * 4);
  std::memcpy(words + 7 * S, col_offset_.data(), S * 4);
  tables_dirty_ = true;
  if (t.max_rank != max_rank || used_[m] != (max_rank > 0)) ++layout_version_;
  t.max_rank = max_rank;
  used_[m] = max_rank > 0;
  view_.modules[m] = used_[m] ? &tables_[m] : nullptr;
}


int64_t AdapterSlots::max_rank() const {
  return slot_rank_.empty() ? 0 : *std::max_element(slot_rank_.begin(), slot_rank_.end());
}

void AdapterSlots::attach_columns(std::vector<Tensor> weights, int64_t columns) {
  if (!peers_.empty()) {  // every rank's weights, rank 0's first
    const size_t per = dims_.size() - 1;
    if (weights.size() != per * (peers_.size() + 1))
      throw std::invalid_argument("attach_columns: " + std::to_string(weights.size()) +
                                  " weights for " + std::to_string(peers_.size() + 1) +
                                  " ranks of " + std::to_string(per));
    for (size_t p = 0; p < peers_.size(); ++p)
      peers_[p]->attach_columns(std::vector<Tensor>(weights.begin() + long((p + 1) * per),
                                                    weights.begin() + long((p + 2) * per)),
                                columns);
    weights.resize(per);
  }
  if (columns <= 0 || columns % 8 != 0 || weights.size() + 1 != dims_.size())
    throw std::invalid_argument("attach_columns: " + std::to_string(weights.size()) + " weights with " +
                                std::to_string(columns) + " columns (a positive multiple of 8, one weight per " +
                                "layer target)");
  for (size_t m = 0; m < weights.size(); ++m)
    if (weights[m].dim(0) != dims_[m][1] || weights[m].cols() != dims_[m][0] + columns)
      throw std::invalid_argument("attach_columns: weight " + std::to_string(m) + " is " + weights[m].shape_str());
  if (std::any_of(slot_rank_.begin(), slot_rank_.end(), [](int64_t r) { return r > 0; }))
    throw std::logic_error("attach_columns: adapters were assigned before the columns");
  wide_ = std::move(weights);
  columns_ = columns;
  for (size_t m = 0; m < wide_.size(); ++m) {
    tables_[m].col_offsets =
        sub(table_buf_, m * table_words_ * 8 + 28 * size_t(num_slots_), DType::i32, num_slots_);
    tables_[m].columns = columns_;
  }
}

int32_t* AdapterSlots::module_words(size_t m) {
  return reinterpret_cast<int32_t*>(table_host_.data() + m * table_words_);
}

void AdapterSlots::flush_tables() {
  if (!tables_dirty_) return;
  backend_.upload_into(table_buf_, table_host_.data(), table_host_.size() * 8);
  tables_dirty_ = false;
}

// First fit over the ranges of the other slots.
bool AdapterSlots::place_columns(int slot) {
  if (wide_.empty() || col_offset_[size_t(slot)] >= 0) return false;
  int64_t rank = 0;  // over the modules with columns (lm_head has none)
  for (size_t m = 0; m < wide_.size(); ++m) rank = std::max<int64_t>(rank, resident_[m][size_t(slot)].rank);
  if (rank == 0) return false;
  const int32_t width = int32_t((rank + 7) / 8 * 8);
  std::vector<std::pair<int32_t, int32_t>> taken;  // (begin, end)
  for (size_t s = 0; s < col_offset_.size(); ++s)
    if (col_offset_[s] >= 0) taken.push_back({col_offset_[s], col_offset_[s] + col_width_[s]});
  std::sort(taken.begin(), taken.end());
  int32_t at = 0;
  for (const auto& [b, e] : taken) {
    if (b - at >= width) break;
    at = std::max(at, e);
  }
  if (at + width > columns_) return false;  // no room: the slot's tokens take the two-kernel form
  col_offset_[size_t(slot)] = at;
  col_width_[size_t(slot)] = width;
  std::vector<Backend::ColumnWrite> writes;  // every module's B and zeros after it: one launch
  for (size_t m = 0; m < wide_.size(); ++m) {
    const Resident& r = resident_[m][size_t(slot)];
    writes.push_back({wide_[m], dims_[m][0] + at, r.rank > 0 ? r.b : Tensor(), width});
  }
  backend_.write_columns_batch(writes);
  for (size_t m = 0; m < wide_.size(); ++m) {
    Resident& r = resident_[m][size_t(slot)];
    r.b = Tensor();  // B is kept once: the kernels read it from the columns too (b_ld)
    rebuild(m);
  }
  return true;
}

// Slots that found no room earlier, placed now that a range may have been freed.
void AdapterSlots::place_waiting() {
  for (int s = 0; s < num_slots_; ++s) place_columns(s);
}

void AdapterSlots::release_columns(int slot) {
  if (col_offset_[size_t(slot)] < 0) return;
  const int32_t at = col_offset_[size_t(slot)], width = col_width_[size_t(slot)];
  col_offset_[size_t(slot)] = -1;
  col_width_[size_t(slot)] = 0;
  // No stale values behind the zeros; the callers rebuild every module's table.
  std::vector<Backend::ColumnWrite> zeros;
  for (size_t m = 0; m < wide_.size(); ++m) zeros.push_back({wide_[m], dims_[m][0] + at, Tensor(), width});
  backend_.write_columns_batch(zeros);
}

int64_t AdapterSlots::step_columns(const std::vector<int32_t>& token_slot) const {
  if (wide_.empty() || int64_t(token_slot.size()) > kColumnsMaxTokens) return 0;
  int64_t end = 0;
  bool any = false;
  for (int32_t s : token_slot) {
    if (s < 0 || slot_rank_[size_t(s)] == 0) continue;
    if (col_offset_[size_t(s)] < 0) {
      bool layers = false;  // an adapter of lm_head alone needs no columns
      for (size_t m = 0; m < wide_.size() && !layers; ++m) layers = resident_[m][size_t(s)].rank > 0;
      if (layers) return 0;
      continue;
    }
    any = true;
    end = std::max<int64_t>(end, col_offset_[size_t(s)] + col_width_[size_t(s)]);
  }
  if (!any) return 0;
  int64_t w = 16;
  while (w < end) w *= 2;
  return std::min(w, columns_);
}

int64_t columns_to_attach(int64_t requested, int num_slots) {
  const int64_t columns =
      requested < 0 ? kColumnsPerSlot * std::min<int64_t>(num_slots, kColumnsMaxSlots) : requested;
  return (columns + 7) / 8 * 8;
}

}  // namespace philora::lora
