#include "engine/sampler.h"

#include <algorithm>

namespace philora::engine {

bool uses_counts(const SamplingParams& p) {
  return p.repetition_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
}

float draw_uniform(std::mt19937_64& rng) { return float(rng() >> 40) * 0x1p-24f; }

std::vector<int32_t> banned_bad_words(const std::vector<std::vector<int32_t>>& bad_words,
                                      const std::vector<int32_t>& output) {
  std::vector<int32_t> banned;
  for (const std::vector<int32_t>& w : bad_words) {
    if (w.empty() || w.size() - 1 > output.size()) continue;
    const size_t prefix = w.size() - 1;
    if (std::equal(w.begin(), w.end() - 1, output.end() - int64_t(prefix)))
      banned.push_back(w.back());
  }
  return banned;
}

TokenCounts::TokenCounts(Backend& backend, int64_t vocab, int64_t capacity)
    : backend_(backend), vocab_(vocab), capacity_(capacity) {
  for (int64_t r = capacity - 1; r >= 0; --r) free_.push_back(int32_t(r));
}

std::optional<int32_t> TokenCounts::acquire(const std::vector<int32_t>& tokens,
                                            int64_t prompt_len) {
  if (free_.empty()) return std::nullopt;
  if (table_.empty()) table_ = backend_.alloc(DType::i32, {capacity_, vocab_});
  const int32_t row = free_.back();
  free_.pop_back();
  backend_.reset_token_counts(table_, row, backend_.upload_i32(tokens), prompt_len);
  return row;
}

void TokenCounts::release(int32_t row) {
  if (row >= 0) free_.push_back(row);
}

}  // namespace philora::engine
