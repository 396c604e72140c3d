// A 64-bit non-cryptographic hash for keys built from many words: the prefix
// cache's page keys (kv/page_manager.h) and an adapter's content
// (lora/adapter.h). Each word goes through splitmix64's finaliser, so a change
// of one bit anywhere changes the whole result.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace philora {

// splitmix64's finaliser: a bijection of 64-bit words that mixes every bit.
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The hash h extended by the word v (order matters).
inline uint64_t hash_combine(uint64_t h, uint64_t v) {
  return mix64(h ^ mix64(v + 0x9e3779b97f4a7c15ull));
}

// The hash h extended by n bytes at p, 8 at a time (the tail zero-padded), then the length.
inline uint64_t hash_bytes(uint64_t h, const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, b + i, 8);
    h = hash_combine(h, w);
  }
  if (i < n) {
    uint64_t w = 0;
    std::memcpy(&w, b + i, n - i);
    h = hash_combine(h, w);
  }
  return hash_combine(h, uint64_t(n));
}

inline uint64_t hash_string(uint64_t h, std::string_view s) {
  return hash_bytes(h, s.data(), s.size());
}

}  // namespace philora
