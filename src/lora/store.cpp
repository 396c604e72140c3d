#include "lora/store.h"

#include <chrono>
#include <stdexcept>
#include <system_error>

#include <fmt/format.h>

#include "core/hash.h"
#include "io/file.h"

namespace philora::lora {

AdapterStore::AdapterStore(const model::Phi3Config& config, AdapterSlots& slots,
                           StoreOptions options)
    : config_(config),
      slots_(slots),
      options_(std::move(options)),
      host_dtype_(options_.host_dtype.value_or(
          slots.backend().compute_dtype() == DType::bf16 ? DType::bf16 : DType::f32)),
      slot_state_(static_cast<size_t>(slots.num_slots())) {
  if (host_dtype_ != DType::f32 && host_dtype_ != DType::bf16)
    throw std::invalid_argument("StoreOptions::host_dtype: f32 or bf16");
}

AdapterStore::~AdapterStore() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_loader_.notify_all();
  for (std::thread& t : loaders_) t.join();
}

void AdapterStore::register_dir(const std::string& name, const std::string& dir) {
  dirs_[name] = dir;
}

Status AdapterStore::register_adapter(const std::string& name,
                                      std::shared_ptr<const Adapter> adapter) {
  if (name.empty()) return Status::error("an adapter needs a name");
  if (!adapter) return Status::errorf("adapter '{}': no adapter given", name);
  if (adapter->layers.size() != size_t(config_.num_hidden_layers))
    return Status::errorf("adapter '{}' has {} layers, the model {}", name, adapter->layers.size(),
                          config_.num_hidden_layers);
  for (int64_t layer = -1; layer < config_.num_hidden_layers; ++layer)
    for (int t = 0; t <= int(Target::lm_head); ++t) {
      const Target target = Target(t);
      if ((layer < 0) != (target == Target::lm_head)) continue;
      const std::optional<LoraModule>& m = adapter->module(layer < 0 ? 0 : layer, target);
      if (!m) continue;
      const ModuleDims d = module_dims(config_, target);
      auto is_float = [](DType t) { return t == DType::f32 || t == DType::bf16; };
      if (!is_float(m->a.dtype) || !is_float(m->b.dtype) || m->a.rows() != m->rank ||
          m->a.cols() != d.in || m->b.rows() != d.out || m->b.cols() != m->rank)
        return Status::errorf(
            "adapter '{}': {} of layer {} is not (r, {}) and ({}, r) in f32 or bf16", name,
            target_module_name(target), layer, d.in, d.out);
    }
  if (options_.max_rank > 0 && adapter->max_rank > options_.max_rank)
    return Status::errorf("adapter '{}' has rank {}, above the largest rank this server takes ({})",
                          name, adapter->max_rank, options_.max_rank);
  // Already in the host dtype: kept as given (tensors shared with the caller's).
  if (modules_dtype(*adapter) != host_dtype_) {
    Adapter converted = with_host_dtype(*adapter, host_dtype_);
    converted.content_hash = adapter->content_hash;  // the caller's key for this content
    adapter = std::make_shared<const Adapter>(std::move(converted));
  }
  in_memory_[name] = std::move(adapter);
  return Status();
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
  if (dirs_.count(name) || in_memory_.count(name)) return std::nullopt;
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

std::string AdapterStore::dir_of(const std::string& name) const {
  auto d = dirs_.find(name);
  return d != dirs_.end() ? d->second : io::join_path(options_.adapter_dir, name);
}

namespace {

int64_t host_size(const Adapter& a) {
  int64_t bytes = 0;
  auto add = [&](const std::optional<LoraModule>& m) {
    if (m) bytes += int64_t(m->a.nbytes() + m->b.nbytes());
  };
  for (const auto& layer : a.layers)
    for (const auto& m : layer) add(m);
  add(a.lm_head);
  return bytes;
}

}  // namespace

AdapterStore::Loaded AdapterStore::load_from_disk(const std::string& name,
                                                  const std::string& dir) const {
  const std::string config = io::join_path(dir, "adapter_config.json");
  if (!io::is_regular_file(config))
    return not_found(fmt::format("adapter '{}' not found", name),
                     fmt::format("adapter '{}' not found: {} does not exist", name, config));
  auto a = load_adapter(name, dir, config_, options_.base_checkpoint, host_dtype_);
  if (!a.ok()) {
    const std::string detail = a.status().message();
    return AdapterError{AdapterError::Kind::invalid,
                        without_paths(detail, dir, options_.adapter_dir, name), detail};
  }
  if (options_.max_rank > 0 && a->max_rank > options_.max_rank) {
    const std::string m =
        fmt::format("adapter '{}' has rank {}, above the largest rank this server takes ({})", name,
                    a->max_rank, options_.max_rank);
    return AdapterError{AdapterError::Kind::invalid, m, m};
  }
  // Packed into the memory the slots' backend uploads from fastest (CUDA:
  // page-locked), so that going to a slot is two copies that do not block.
  Backend& backend = slots_.backend();
  auto packed = pack(*a, [&backend](DType d, int64_t n) { return backend.pinned_host(d, n); });
  if (!packed.ok()) return AdapterError{AdapterError::Kind::invalid, packed.status().message(),
                                        packed.status().message()};
  return std::make_shared<const Adapter>(std::move(*packed));
}

// Puts the adapter first in the host LRU, then drops the least recently used
// others while the tier holds too many adapters or bytes.
void AdapterStore::keep_on_host(const std::string& name, std::shared_ptr<const Adapter> adapter) {
  ++disk_loads_;
  if (auto old = host_.find(name); old != host_.end()) {  // loaded again meanwhile
    host_bytes_ -= host_size(*old->second.first);
    host_lru_.erase(old->second.second);
    host_.erase(old);
  }
  host_bytes_ += host_size(*adapter);
  host_lru_.push_front(name);
  host_[name] = {std::move(adapter), host_lru_.begin()};
  auto over = [&] {
    return int64_t(host_.size()) > options_.host_capacity ||
           (options_.host_memory_bytes > 0 && host_bytes_ > options_.host_memory_bytes);
  };
  while (host_.size() > 1 && over()) {  // evict least recently used
    auto victim = host_.find(host_lru_.back());
    host_bytes_ -= host_size(*victim->second.first);
    host_.erase(victim);
    host_lru_.pop_back();
    ++host_evictions_;
  }
}

AdapterStore::Loaded AdapterStore::host_adapter(const std::string& name) {
  if (auto m = in_memory_.find(name); m != in_memory_.end()) return m->second;
  auto it = host_.find(name);
  if (it != host_.end()) {
    host_lru_.splice(host_lru_.begin(), host_lru_, it->second.second);
    return it->second.first;
  }
  if (auto bad = check_name(name)) return *bad;
  Loaded loaded = load_from_disk(name, dir_of(name));
  if (auto* a = std::get_if<std::shared_ptr<const Adapter>>(&loaded)) keep_on_host(name, *a);
  return loaded;
}

Preparation AdapterStore::prepare(const std::string& name) {
  if (auto h = host_.find(name); h != host_.end()) {
    // Asked for again (a request waits for it): the most recently used, so
    // that loads taken in before its request runs do not evict it.
    host_lru_.splice(host_lru_.begin(), host_lru_, h->second.second);
    return {true, std::nullopt};
  }
  if (resident_.count(name) || in_memory_.count(name)) return {true, std::nullopt};
  if (auto f = failed_.find(name); f != failed_.end()) return {false, f->second};
  if (loading_.count(name)) return {};
  if (auto bad = check_name(name)) return {false, *bad};
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.emplace_back(name, dir_of(name));
    if (idle_loaders_ < int64_t(queue_.size()) && int64_t(loaders_.size()) < kLoaderThreads) {
      try {
        loaders_.emplace_back([this] { loader_main(); });
      } catch (const std::system_error& e) {  // no thread: one already running takes the load
        if (loaders_.empty()) {
          queue_.pop_back();
          return {false, AdapterError{AdapterError::Kind::invalid,
                                      fmt::format("adapter '{}' could not be loaded now", name),
                                      fmt::format("adapter '{}': no loader thread: {}", name,
                                                  e.what())}};
        }
      }
    }
  }
  loading_.insert(name);
  wake_loader_.notify_one();
  return {};
}

void AdapterStore::loader_main() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    ++idle_loaders_;
    wake_loader_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    --idle_loaders_;
    if (stop_) return;
    auto [name, dir] = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    Loaded loaded;
    try {  // whatever goes wrong, a result reaches finished_: no request waits forever
      if (options_.before_load) options_.before_load(name);
      loaded = load_from_disk(name, dir);
    } catch (const std::exception& e) {
      loaded = AdapterError{AdapterError::Kind::invalid,
                            fmt::format("adapter '{}' could not be loaded", name),
                            fmt::format("adapter '{}' ({}): load failed: {}", name, dir, e.what())};
    }
    lock.lock();
    finished_.emplace_back(std::move(name), std::move(loaded));
    loaded_.notify_all();
  }
}

void AdapterStore::poll() {
  std::vector<std::pair<std::string, Loaded>> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done.swap(finished_);
  }
  failed_.clear();
  for (auto& [name, loaded] : done) {
    loading_.erase(name);
    if (auto* e = std::get_if<AdapterError>(&loaded))
      failed_[name] = std::move(*e);
    else
      keep_on_host(name, std::get<std::shared_ptr<const Adapter>>(std::move(loaded)));
  }
}

int64_t AdapterStore::loads_in_flight() const { return int64_t(loading_.size()); }

void AdapterStore::wait_for_load(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  loaded_.wait_for(lock, timeout, [&] { return !finished_.empty() || stop_; });
}

void AdapterStore::wait_for_all_loads() {
  std::unique_lock<std::mutex> lock(mu_);
  loaded_.wait(lock, [&] { return finished_.size() >= loading_.size() || stop_; });
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
  s = SlotState{};  // free from here on: an upload that throws leaves the slot so
  if (options_.before_upload) options_.before_upload(name);
  const auto t0 = std::chrono::steady_clock::now();
  slots_.assign(victim, *adapter);
  upload_seconds_ +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
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

int32_t AdapterStore::resident_slot(const std::string& name) const {
  auto r = resident_.find(name);
  return r == resident_.end() ? -1 : r->second;
}

int32_t AdapterStore::slot_to_drain() const {
  int32_t best = -1;
  for (size_t i = 0; i < slot_state_.size(); ++i) {
    const SlotState& s = slot_state_[i];
    if (s.pins == 0) return -1;
    if (best < 0) {
      best = int32_t(i);
      continue;
    }
    const SlotState& b = slot_state_[size_t(best)];
    if (s.pins < b.pins || (s.pins == b.pins && s.last_use < b.last_use)) best = int32_t(i);
  }
  return best;
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
