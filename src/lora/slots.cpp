#include "lora/slots.h"

#include <algorithm>

namespace philora::lora {

AdapterSlots::AdapterSlots(Backend& backend, const model::Phi3Config& c, int num_slots)
    : backend_(backend), num_slots_(num_slots), slot_rank_(size_t(num_slots), 0) {
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    dims_.push_back({c.hidden_size, c.qkv_size()});
    dims_.push_back({c.q_size(), c.hidden_size});
    dims_.push_back({c.hidden_size, 2 * c.intermediate_size});
    dims_.push_back({c.intermediate_size, c.hidden_size});
  }
  dims_.push_back({c.hidden_size, c.vocab_size});  // lm_head
  resident_.assign(dims_.size(), std::vector<Resident>(size_t(num_slots)));
  tables_.resize(dims_.size());
  used_.assign(dims_.size(), false);
  for (size_t m = 0; m < dims_.size(); ++m) {
    LoraModuleTable& t = tables_[m];  // fixed addresses: step graphs keep them
    t.a_ptrs = backend_.upload_i64(std::vector<int64_t>(size_t(num_slots), 0));
    t.b_ptrs = backend_.upload_i64(std::vector<int64_t>(size_t(num_slots), 0));
    t.ranks = backend_.upload_i32(std::vector<int32_t>(size_t(num_slots), 0));
    t.scales = backend_.upload_f32(std::vector<float>(size_t(num_slots), 0.0f));
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
  slot_rank_[size_t(slot)] = 0;
  for (size_t m = 0; m < dims_.size(); ++m) {
    const bool head = m == dims_.size() - 1;
    const auto& mod =
        head ? adapter.lm_head
             : adapter.module(int64_t(m) / kLayerTargets, Target(int64_t(m) % kLayerTargets));
    Resident r;
    if (mod) {
      r.a = backend_.upload(mod->a, backend_.compute_dtype());
      r.b = backend_.upload(mod->b, backend_.compute_dtype());
      r.rank = int32_t(mod->rank);
      r.scale = mod->scale;
      slot_rank_[size_t(slot)] = std::max(slot_rank_[size_t(slot)], mod->rank);
    }
    resident_[m][size_t(slot)] = r;
    rebuild(m);
  }
}

void AdapterSlots::assign_random(int slot, int64_t rank, float scale, uint64_t seed,
                                 float half_width) {
  for (size_t m = 0; m + 1 < dims_.size(); ++m) {
    Resident r;
    r.a = backend_.random_uniform({rank, dims_[m][0]}, seed + 2 * m, 0.0f, half_width);
    r.b = backend_.random_uniform({dims_[m][1], rank}, seed + 2 * m + 1, 0.0f, half_width);
    r.rank = int32_t(rank);
    r.scale = scale;
    resident_[m][size_t(slot)] = r;
    rebuild(m);
  }
  slot_rank_[size_t(slot)] = rank;
}

void AdapterSlots::clear(int slot) {
  for (size_t m = 0; m < dims_.size(); ++m) {
    resident_[m][size_t(slot)] = Resident{};
    rebuild(m);
  }
  slot_rank_[size_t(slot)] = 0;
}

void AdapterSlots::rebuild(size_t m) {
  std::vector<int64_t> a(static_cast<size_t>(num_slots_)), b(static_cast<size_t>(num_slots_));
  std::vector<int32_t> ranks(static_cast<size_t>(num_slots_));
  std::vector<float> scales(static_cast<size_t>(num_slots_));
  int64_t max_rank = 0;
  for (size_t s = 0; s < size_t(num_slots_); ++s) {
    const Resident& r = resident_[m][s];
    a[s] = int64_t(reinterpret_cast<uintptr_t>(r.a.data));
    b[s] = int64_t(reinterpret_cast<uintptr_t>(r.b.data));
    ranks[s] = r.rank;
    scales[s] = r.scale;
    max_rank = std::max<int64_t>(max_rank, r.rank);
  }
  LoraModuleTable& t = tables_[m];
  backend_.upload_into(t.a_ptrs, a.data(), a.size() * sizeof(int64_t));
  backend_.upload_into(t.b_ptrs, b.data(), b.size() * sizeof(int64_t));
  backend_.upload_into(t.ranks, ranks.data(), ranks.size() * sizeof(int32_t));
  backend_.upload_into(t.scales, scales.data(), scales.size() * sizeof(float));
  if (t.max_rank != max_rank || used_[m] != (max_rank > 0)) ++layout_version_;
  t.max_rank = max_rank;
  used_[m] = max_rank > 0;
}

const LoraModuleTable* AdapterSlots::table(int64_t layer, Target t) const {
  const size_t m = module_index(layer, t);
  return used_[m] ? &tables_[m] : nullptr;
}

int64_t AdapterSlots::max_rank() const {
  return slot_rank_.empty() ? 0 : *std::max_element(slot_rank_.begin(), slot_rank_.end());
}

}  // namespace philora::lora
