#include "kv/block_allocator.h"

#include <cassert>

namespace philora::kv {

BlockAllocator::BlockAllocator(int32_t num_blocks) : refcount_(size_t(num_blocks), 0) {
  free_.reserve(size_t(num_blocks));
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);  // hand out 0 first
}

std::optional<int32_t> BlockAllocator::allocate() {
  if (free_.empty()) return std::nullopt;
  const int32_t b = free_.back();
  free_.pop_back();
  refcount_[size_t(b)] = 1;
  return b;
}

void BlockAllocator::retain(int32_t block) {
  assert(refcount_[size_t(block)] > 0);
  ++refcount_[size_t(block)];
}

void BlockAllocator::release(int32_t block) {
  assert(refcount_[size_t(block)] > 0);
  if (--refcount_[size_t(block)] == 0) free_.push_back(block);
}

}  // namespace philora::kv
