// The adapter store: disk (PEFT dirs) -> host cache (parsed, f32) -> device
// slots, LRU at both tiers. A slot is pinned while a running sequence uses it
// and is never evicted then.
//
// Loads for the engine run on the store's loader threads (prepare / poll; up
// to kLoaderThreads at once, so that one slow adapter does not hold up the
// others): a request waits for its adapter while steps go on; the upload
// into a device slot (acquire) stays on the caller's thread. The host tier is bounded by
// adapters and by bytes; adapters are kept there in f32, as parsed (the CPU
// backend computes in f32; the CUDA backend converts to bf16 at upload).
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
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
  // Bytes of parsed adapters (their A and B) the host tier keeps, least
  // recently used dropped first; 0: no bound by bytes. The adapter loaded
  // last stays even when it alone is larger.
  int64_t host_memory_bytes = 0;
  // An adapter with a module of a larger rank is refused at load; 0: any rank.
  int64_t max_rank = 0;
  // The dtype of A and B in the host tier (f32 or bf16); default: bf16 when
  // the slots' backend computes in bf16 (CUDA: half the host memory, and the
  // host -> device swap a plain copy), else f32. Adapters made in memory
  // (register_adapter) are converted to it.
  std::optional<DType> host_dtype = std::nullopt;
  // Test hook: runs on the loader thread before a background load of NAME
  // reads the disk (a test makes one adapter's load slow with it).
  std::function<void(const std::string& name)> before_load = {};
  // Test hook: runs on the caller's thread (the engine's) just before NAME is uploaded into a
  // device slot; a test throws from it to stand for a device failure in the middle of a step.
  std::function<void(const std::string& name)> before_upload = {};
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

// Whether an adapter can be acquired now (prepare).
struct Preparation {
  bool ready = false;                 // resident, or parsed in host memory
  std::optional<AdapterError> error;  // its load failed (not_found / invalid)
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
  static constexpr int64_t kLoaderThreads = 4;
  AdapterStore(const model::Phi3Config& config, AdapterSlots& slots, StoreOptions options);
  ~AdapterStore();
  AdapterStore(const AdapterStore&) = delete;
  AdapterStore& operator=(const AdapterStore&) = delete;

  // Makes NAME resolve to DIR (--adapter NAME=DIR).
  void register_dir(const std::string& name, const std::string& dir);
  // Serves NAME from `adapter`, made in memory (philora bench --workload's synthetic adapters): it
  // is always on the host (held by the store, outside the host tier's bounds, never read from
  // disk) and goes to device slots as any other. Checked against the model and max_rank as a
  // load from disk is. A and B in f32 or bf16: kept as given when in host_dtype(), else
  // converted to it (a copy; the adapter's content_hash stays the caller's).
  Status register_adapter(const std::string& name, std::shared_ptr<const Adapter> adapter);
  // Without blocking: ready when NAME is resident or on the host; else its
  // load from disk starts on the loader thread (once however often asked)
  // and it is not ready yet; or the error of a load that failed (reported to
  // every prepare until the next poll; a later prepare loads again).
  Preparation prepare(const std::string& name);
  // Takes in the loads the loader thread has finished (the host tier, or
  // their errors); the engine calls it once a step.
  void poll();
  // Background loads queued or running.
  int64_t loads_in_flight() const;
  // Waits until a background load finishes or `timeout` passes (an engine
  // with nothing else to do).
  void wait_for_load(std::chrono::milliseconds timeout);
  // Waits until every background load asked for has finished (poll takes
  // them in).
  void wait_for_all_loads();
  // Loads NAME if needed (from disk on this thread when it is not on the
  // host), makes it resident in a slot and pins it; returns the slot. Fails
  // when NAME is unknown or bad, or every slot is pinned.
  Acquired acquire(const std::string& name);
  // Makes NAME resident now (acquire, then release): a bad adapter fails at
  // start, with its full message.
  Status preload(const std::string& name);
  // Whether acquire(name) would find a slot now (NAME resident, or a slot unpinned).
  bool slot_available(const std::string& name) const;
  // The slot NAME is resident in, or -1.
  int32_t resident_slot(const std::string& name) const;
  // The pinned slot that should go to the next adapter waiting for one: the
  // one with the fewest pins (then the least recently used); -1 when a slot
  // is unpinned.
  int32_t slot_to_drain() const;
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
  // Seconds the caller's thread spent in uploads into device slots (AdapterSlots::assign), all
  // of them: the host -> device swap time of an adapter is this over uploads_to_device().
  double upload_seconds() const { return upload_seconds_; }
  // The dtype of A and B in the host tier (StoreOptions::host_dtype, resolved).
  DType host_dtype() const { return host_dtype_; }
  // Counters per tier, for /metrics: adapters dropped from the host cache, and
  // resident adapters whose slot went to another adapter.
  int64_t host_evictions() const { return host_evictions_; }
  int64_t device_evictions() const { return device_evictions_; }
  int64_t host_count() const { return int64_t(host_.size()); }
  int64_t host_bytes() const { return host_bytes_; }
  // Pins held now (one per running sequence with an adapter).
  int64_t pins() const;

 private:
  using Loaded = std::variant<std::shared_ptr<const Adapter>, AdapterError>;
  Loaded host_adapter(const std::string& name);
  std::optional<AdapterError> check_name(const std::string& name) const;
  std::string dir_of(const std::string& name) const;
  // Reads and checks NAME from `dir` (any thread: touches no member state but options_).
  Loaded load_from_disk(const std::string& name, const std::string& dir) const;
  void keep_on_host(const std::string& name, std::shared_ptr<const Adapter> adapter);
  void loader_main();

  const model::Phi3Config& config_;
  AdapterSlots& slots_;
  StoreOptions options_;
  DType host_dtype_;  // options_.host_dtype, resolved
  std::map<std::string, std::string> dirs_;  // registered NAME -> DIR
  std::map<std::string, std::shared_ptr<const Adapter>> in_memory_;  // register_adapter
  // host tier: LRU list of names (front = most recent) and the parsed adapters
  std::list<std::string> host_lru_;
  std::map<std::string, std::pair<std::shared_ptr<const Adapter>, std::list<std::string>::iterator>>
      host_;
  int64_t host_bytes_ = 0;
  // background loads: names asked for and not taken in by poll yet; the
  // errors of the last poll
  std::set<std::string> loading_;
  std::map<std::string, AdapterError> failed_;
  // shared with the loader thread, under mu_
  mutable std::mutex mu_;
  std::condition_variable wake_loader_, loaded_;
  std::deque<std::pair<std::string, std::string>> queue_;  // (name, dir) to load
  std::vector<std::pair<std::string, Loaded>> finished_;   // loads done, not polled
  bool stop_ = false;
  int64_t idle_loaders_ = 0;
  std::vector<std::thread> loaders_;  // started as loads need them, up to kLoaderThreads
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
  double upload_seconds_ = 0;
  int64_t host_evictions_ = 0;
  int64_t device_evictions_ = 0;
};

}  // namespace philora::lora
