// The adapter store: disk (PEFT dirs) -> host cache (parsed, f32) -> device
// slots, LRU at both tiers. A slot is pinned while a running sequence uses it
// and is never evicted then.
#pragma once

#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "lora/adapter.h"
#include "lora/slots.h"

namespace philora::lora {

struct StoreOptions {
  std::string adapter_dir;     // NAME resolves to adapter_dir/NAME when not registered
  int64_t host_capacity = 64;  // adapters kept parsed in host memory
  // The base checkpoint, to check PEFT's copies of base weights against (load_adapter).
  const io::TensorSet* base_checkpoint = nullptr;
};

// Why an adapter could not be made resident.
struct AdapterError {
  enum class Kind : uint8_t {
    not_found,  // no such adapter (or a name that cannot be one)
    invalid,    // its directory exists but does not hold a loadable adapter
    no_slot,    // every slot is pinned by running sequences
  };
  Kind kind = Kind::not_found;
  std::string message;  // for a remote client: names the adapter, never a server path
  std::string detail;   // the full message, paths included, for the server's log
};

// A pinned slot, or why there is none.
class Acquired {
 public:
  Acquired(int32_t slot) : slot_(slot) {}             // NOLINT: implicit by design
  Acquired(AdapterError e) : error_(std::move(e)) {}  // NOLINT
  bool ok() const { return !error_; }
  int32_t operator*() const { return slot_; }
  const AdapterError& error() const { return *error_; }

 private:
  int32_t slot_ = -1;
  std::optional<AdapterError> error_;
};

class AdapterStore {
 public:
  AdapterStore(const model::Phi3Config& config, AdapterSlots& slots, StoreOptions options);

  // Makes NAME resolve to DIR (--adapter NAME=DIR).
  void register_dir(const std::string& name, const std::string& dir);
  // Loads NAME if needed, makes it resident in a slot and pins it; returns the
  // slot. Fails when NAME is unknown or bad, or every slot is pinned.
  Acquired acquire(const std::string& name);
  // Makes NAME resident now (acquire, then release): a bad adapter fails at
  // start, with its full message.
  Status preload(const std::string& name);
  // Whether acquire(name) would find a slot now (NAME resident, or a slot unpinned).
  bool slot_available(const std::string& name) const;
  void release(int32_t slot);
  // What the adapter resident in `slot` is, for the prefix cache: a hash of
  // its name and its content (Adapter::content_hash), never 0 (the base
  // model's). An adapter reloaded under the same name with other weights
  // gets another identity.
  uint64_t identity(int32_t slot) const { return slot_state_[size_t(slot)].identity; }

  int64_t resident_count() const;
  const AdapterSlots& slots() const { return slots_; }
  int64_t max_rank() const { return slots_.max_rank(); }
  int64_t loads_from_disk() const { return disk_loads_; }
  int64_t uploads_to_device() const { return uploads_; }
  // Counters per tier, for /metrics: adapters dropped from the host cache, and
  // resident adapters whose slot went to another adapter.
  int64_t host_evictions() const { return host_evictions_; }
  int64_t device_evictions() const { return device_evictions_; }
  int64_t host_count() const { return int64_t(host_.size()); }
  // Pins held now (one per running sequence with an adapter).
  int64_t pins() const;

 private:
  std::variant<std::shared_ptr<const Adapter>, AdapterError> host_adapter(const std::string& name);
  std::optional<AdapterError> check_name(const std::string& name) const;

  const model::Phi3Config& config_;
  AdapterSlots& slots_;
  StoreOptions options_;
  std::map<std::string, std::string> dirs_;  // registered NAME -> DIR
  // host tier: LRU list of names (front = most recent) and the parsed adapters
  std::list<std::string> host_lru_;
  std::map<std::string, std::pair<std::shared_ptr<const Adapter>, std::list<std::string>::iterator>>
      host_;
  // device tier
  struct SlotState {
    std::string name;  // empty = free
    int64_t pins = 0;
    uint64_t last_use = 0;
    uint64_t identity = 0;  // see identity()
  };
  std::vector<SlotState> slot_state_;        // [num_slots]
  std::map<std::string, int32_t> resident_;  // NAME -> slot
  uint64_t clock_ = 0;
  int64_t disk_loads_ = 0;
  int64_t uploads_ = 0;
  int64_t host_evictions_ = 0;
  int64_t device_evictions_ = 0;
};

}  // namespace philora::lora
