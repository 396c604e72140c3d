// Random token walks through a constraint's masks on the embedded model's tokenizer.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "structured/matcher.h"
#include "tokenizer/tokenizer.h"

namespace philora::structured::test {

inline std::shared_ptr<const TokenVocabulary> tiny_vocab() {
  static std::shared_ptr<const TokenVocabulary> v = [] {
    auto tok = tokenizer::Tokenizer::from_model_dir(PHILORA_TINY_MODEL);
    if (!tok.ok()) {
      ADD_FAILURE() << tok.status().message();
      return std::shared_ptr<const TokenVocabulary>();
    }
    return TokenVocabulary::from_tokenizer(**tok);
  }();
  return v;
}

inline std::vector<int32_t> allowed_ids(std::span<const uint32_t> mask, size_t vocab) {
  std::vector<int32_t> out;
  for (size_t id = 0; id < vocab; ++id) {
    if (mask[id / 32] >> (id % 32) & 1u) out.push_back(static_cast<int32_t>(id));
  }
  return out;
}

struct Walk {
  std::string text;
  std::vector<int32_t> tokens;
  bool finished = false;                 // ended with a stop token
  std::vector<double> mask_us;           // time of each fill_mask
};

// Draws tokens uniformly among the allowed ones; after `soft_limit` tokens it prefers short
// tokens: half the time those that close things (quotes, brackets, digits) or the stop token,
// so walks end.
// `check(matcher, step)` runs before each step's mask. A step with nothing allowed fails.
inline Walk random_walk(const std::shared_ptr<const CompiledConstraint>& c, uint64_t seed, int max_tokens = 400,
                        int soft_limit = 60, const std::function<void(Matcher&, int)>& check = {}) {
  std::mt19937_64 rng(seed);
  Matcher m(c);
  Walk w;
  const TokenVocabulary& v = c->vocab();
  std::vector<uint32_t> mask(v.mask_words());
  for (int step = 0; step < max_tokens; ++step) {
    if (check) check(m, step);
    const auto t0 = std::chrono::steady_clock::now();
    m.fill_mask(mask);
    w.mask_us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    const std::vector<int32_t> allowed = allowed_ids(mask, v.size());
    if (allowed.empty()) {
      ADD_FAILURE() << "dead end: nothing allowed after " << nlohmann::json(w.text).dump();
      return w;
    }
    std::vector<int32_t> pool;
    if (step >= soft_limit) {
      // Half the time a closer (or the stop token), else any one-byte token: regexes that
      // need one particular character (an '@') get there too.
      const bool closers = rng() % 2 == 0;
      for (int32_t id : allowed) {
        if (v.is_stop(id)) {
          if (closers) {
            pool.assign(1, id);
            break;
          }
          continue;
        }
        const auto& b = v.bytes(id);
        if (!b || b->size() != 1) continue;
        if (!closers || std::string("\"]}0123456789").find((*b)[0]) != std::string::npos) pool.push_back(id);
      }
    }
    if (pool.empty()) pool = allowed;
    const int32_t id = pool[rng() % pool.size()];
    if (!m.accept_token(id)) {
      ADD_FAILURE() << "a token of the mask was refused: " << id;
      return w;
    }
    w.tokens.push_back(id);
    if (v.is_stop(id)) {
      w.finished = true;
      EXPECT_TRUE(m.is_terminated());
      return w;
    }
    w.text += *v.bytes(id);
  }
  return w;
}

}  // namespace philora::structured::test
