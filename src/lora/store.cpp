#include "lora/store.h"

#include <fmt/format.h>

#include "core/hash.h"
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

namespace {

AdapterError not_found(const std::string& message, const std::string& detail) {
  return {AdapterError::Kind::not_found, message, detail};
}

// `message` with the adapter's directory taken out of every path (files then
// read relative to it), or a plain sentence when a path would still show.
std::string without_paths(std::string message, const std::string& dir,
                          const std::string& adapter_dir, const std::string& name) {
  const std::string prefix = dir.empty() || dir.back() == '/' ? dir : dir + "/";
  for (size_t at; !prefix.empty() && (at = message.find(prefix)) != std::string::npos;)
    message.erase(at, prefix.size());
  for (const std::string& path : {dir, adapter_dir})
    if (path.size() > 1 && message.find(path) != std::string::npos)
      return fmt::format("adapter '{}' is not a loadable PEFT LoRA adapter", name);
  return message;
}

}  // namespace

std::optional<AdapterError> AdapterStore::check_name(const std::string& name) const {
  if (dirs_.count(name)) return std::nullopt;
  // A name from a request becomes a path: keep it inside adapter_dir.
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.find('\\') != std::string::npos) {
    const std::string m = fmt::format("adapter name '{}' is not valid", name);
    return not_found(m, m);
  }
  if (options_.adapter_dir.empty()) {
    const std::string m = fmt::format(
        "unknown adapter '{}' (not registered, and no adapter directory to look in)", name);
    return not_found(m, m);
  }
  return std::nullopt;
}

std::variant<std::shared_ptr<const Adapter>, AdapterError> AdapterStore::host_adapter(
    const std::string& name) {
  auto it = host_.find(name);
  if (it != host_.end()) {
    host_lru_.splice(host_lru_.begin(), host_lru_, it->second.second);
    return it->second.first;
  }
  if (auto bad = check_name(name)) return *bad;
  auto d = dirs_.find(name);
  const std::string dir = d != dirs_.end() ? d->second : io::join_path(options_.adapter_dir, name);
  const std::string config = io::join_path(dir, "adapter_config.json");
  if (!io::is_regular_file(config))
    return not_found(fmt::format("adapter '{}' not found", name),
                     fmt::format("adapter '{}' not found: {} does not exist", name, config));
  auto a = load_adapter(name, dir, config_, options_.base_checkpoint);
  if (!a.ok()) {
    const std::string detail = a.status().message();
    return AdapterError{AdapterError::Kind::invalid,
                        without_paths(detail, dir, options_.adapter_dir, name), detail};
  }
  ++disk_loads_;
  auto shared = std::make_shared<const Adapter>(std::move(*a));
  host_lru_.push_front(name);
  host_[name] = {shared, host_lru_.begin()};
  while (int64_t(host_.size()) > options_.host_capacity) {  // evict least recently used
    host_.erase(host_lru_.back());
    host_lru_.pop_back();
    ++host_evictions_;
  }
  return std::shared_ptr<const Adapter>(shared);
}

Acquired AdapterStore::acquire(const std::string& name) {
  ++clock_;
  auto r = resident_.find(name);
  if (r != resident_.end()) {
    SlotState& s = slot_state_[size_t(r->second)];
    ++s.pins;
    s.last_use = clock_;
    return r->second;
  }
  auto loaded = host_adapter(name);
  if (auto* e = std::get_if<AdapterError>(&loaded)) return std::move(*e);
  const auto& adapter = std::get<std::shared_ptr<const Adapter>>(loaded);
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
  if (victim < 0) {
    const std::string m =
        fmt::format("adapter '{}': all {} adapter slots are in use by running requests", name,
                    slot_state_.size());
    return AdapterError{AdapterError::Kind::no_slot, m, m};
  }
  SlotState& s = slot_state_[size_t(victim)];
  if (!s.name.empty()) {
    resident_.erase(s.name);
    ++device_evictions_;
  }
  slots_.assign(victim, *adapter);
  ++uploads_;
  const uint64_t identity = hash_combine(hash_string(0, name), adapter->content_hash);
  s = SlotState{name, 1, clock_, identity == 0 ? 1 : identity};
  resident_[name] = victim;
  return victim;
}

Status AdapterStore::preload(const std::string& name) {
  Acquired a = acquire(name);
  if (!a.ok()) return Status::error(a.error().detail);
  release(*a);
  return Status();
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

int64_t AdapterStore::pins() const {
  int64_t n = 0;
  for (const SlotState& s : slot_state_) n += s.pins;
  return n;
}

int64_t AdapterStore::resident_count() const { return int64_t(resident_.size()); }

}  // namespace philora::lora
