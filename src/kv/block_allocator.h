// The KV page allocator: a free list with reference counts (pages shared by a
// prefix cache are released by their last holder).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace philora::kv {

class BlockAllocator {
 public:
  explicit BlockAllocator(int32_t num_blocks);

  std::optional<int32_t> allocate();  // refcount 1, or nullopt when none is free
  void retain(int32_t block);         // one more holder
  void release(int32_t block);        // the last release frees it
  int32_t num_free() const { return int32_t(free_.size()); }
  int32_t num_blocks() const { return int32_t(refcount_.size()); }
  int32_t refcount(int32_t block) const { return refcount_[size_t(block)]; }

 private:
  std::vector<int32_t> free_;      // stack of free block ids
  std::vector<int32_t> refcount_;  // [num_blocks]
};

}  // namespace philora::kv
