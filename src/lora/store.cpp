#include "lora/store.h"

#include "io/file.h"

namespace philora::lora {

AdapterStore::AdapterStore(const model::Phi3Config& config, AdapterSlots& slots,
                           StoreOptions options)
    : config_(config),
      slots_(slots),
      options_(std::move(options)),
      slot_state_(static_cast<size_t>(slots.num_slots())) {}

void AdapterStore::register_dir(const std::string& name, const std::string& dir) {
  dirs_[name] = dir;
}

Status AdapterStore::check_name(const std::string& name) const {
  if (dirs_.count(name)) return Status();
  // A name from a request becomes a path: keep it inside adapter_dir.
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.find('\\') != std::string::npos)
    return Status::errorf("adapter name '{}' is not valid", name);
  if (options_.adapter_dir.empty())
    return Status::errorf("adapter '{}' is not loaded (no --adapter-dir to look in)", name);
  return Status();
}

Expected<std::shared_ptr<const Adapter>> AdapterStore::host_adapter(const std::string& name) {
  auto it = host_.find(name);
  if (it != host_.end()) {
    host_lru_.splice(host_lru_.begin(), host_lru_, it->second.second);
    return it->second.first;
  }
  PHILORA_RETURN_IF_ERROR(check_name(name));
  auto d = dirs_.find(name);
  const std::string dir = d != dirs_.end() ? d->second : io::join_path(options_.adapter_dir, name);
  PHILORA_ASSIGN_OR_RETURN(Adapter a, load_adapter(name, dir, config_, options_.base_checkpoint));
  ++disk_loads_;
  auto shared = std::make_shared<const Adapter>(std::move(a));
  host_lru_.push_front(name);
  host_[name] = {shared, host_lru_.begin()};
  while (int64_t(host_.size()) > options_.host_capacity) {  // evict least recently used
    host_.erase(host_lru_.back());
    host_lru_.pop_back();
  }
  return std::shared_ptr<const Adapter>(shared);
}

Expected<int32_t> AdapterStore::acquire(const std::string& name) {
  ++clock_;
  auto r = resident_.find(name);
  if (r != resident_.end()) {
    SlotState& s = slot_state_[size_t(r->second)];
    ++s.pins;
    s.last_use = clock_;
    return r->second;
  }
  PHILORA_ASSIGN_OR_RETURN(std::shared_ptr<const Adapter> adapter, host_adapter(name));
  // A free slot, else the least recently used unpinned one.
  int32_t victim = -1;
  for (size_t i = 0; i < slot_state_.size(); ++i) {
    const SlotState& s = slot_state_[i];
    if (s.pins > 0) continue;
    if (s.name.empty()) {
      victim = int32_t(i);
      break;
    }
    if (victim < 0 || s.last_use < slot_state_[size_t(victim)].last_use) victim = int32_t(i);
  }
  if (victim < 0)
    return Status::errorf("adapter '{}': all {} adapter slots are in use by running requests", name,
                          slot_state_.size());
  SlotState& s = slot_state_[size_t(victim)];
  if (!s.name.empty()) resident_.erase(s.name);
  slots_.assign(victim, *adapter);
  ++uploads_;
  s = SlotState{name, 1, clock_};
  resident_[name] = victim;
  return victim;
}

bool AdapterStore::slot_available(const std::string& name) const {
  if (resident_.count(name)) return true;
  for (const SlotState& s : slot_state_)
    if (s.pins == 0) return true;
  return false;
}

void AdapterStore::release(int32_t slot) {
  if (slot < 0) return;
  SlotState& s = slot_state_[size_t(slot)];
  if (s.pins > 0) --s.pins;
}

int64_t AdapterStore::resident_count() const { return int64_t(resident_.size()); }

}  // namespace philora::lora
