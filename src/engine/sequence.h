// A sequence as the engine sees it: token accounting plus its KV pages.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kv/page_manager.h"

namespace philora::engine {

struct Sequence {
  std::string id;
  std::vector<int32_t> tokens;  // prompt followed by generated tokens, from first_token on
  // The position of tokens[0]: 0, but for a tree-speculation alternative,
  // which holds only the tokens its step computes (engine::Engine::Live::DraftPath).
  int64_t first_token = 0;
  int64_t prompt_len = 0;
  int64_t num_computed = 0;  // tokens whose K/V are in the cache
  int32_t lora_slot = -1;    // adapter slot, -1 = base model
  bool rope_long = false;    // LongRoPE long factors, decided at admission
  kv::PageTable pages;       // its KV pages in order (and their prefix-cache keys)
};

}  // namespace philora::engine
