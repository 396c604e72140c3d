// A compiled Unicode regular expression (PCRE2 with UTF, UCP and JIT) with the matching semantics
// HF tokenizers gets from Oniguruma: `\s`/`\S` mean Unicode White_Space, `\w`/`\W` mean letters,
// marks, decimal digits and connector punctuation. Matches are found left to right,
// non-overlapping; an empty match advances by one character.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/status.h"

namespace philora::tokenizer {

class Regex {
 public:
  // Compiles `pattern` (Oniguruma/Rust syntax as found in tokenizer.json).
  static Expected<std::shared_ptr<const Regex>> compile(std::string_view pattern);
  // Compiles a literal string.
  static Expected<std::shared_ptr<const Regex>> literal(std::string_view text);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls f(begin, end) for every match in `text` (valid UTF-8), left to right.
  template <typename F>
  void for_each(std::string_view text, F&& f) const {
    for_each_impl(
        text,
        [](void* ctx, size_t b, size_t e) {
          (*static_cast<std::remove_reference_t<F>*>(ctx))(b, e);
        },
        &f);
  }
  // Appends the [begin, end) byte ranges of all matches in `text` to `out`.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
    for_each(text, [&](size_t b, size_t e) { out.emplace_back(b, e); });
  }
  // True when the pattern matches at the very start of `text` (anchored).
  bool matches_at_start(std::string_view text) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  void for_each_impl(std::string_view text, void (*cb)(void*, size_t, size_t), void* ctx) const;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code*
  bool jit_ = false;
};

// Rewrites the Oniguruma-only escapes of `pattern` into PCRE2 syntax (exposed for tests).
Expected<std::string> translate_regex(std::string_view pattern);

}  // namespace philora::tokenizer
