// The "pattern" field shared by the Replace normalizer, the Split pre-tokenizer and the Replace
// decoder: {"String": "..."} (a literal) or {"Regex": "..."}.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"
#include "tokenizer/regex.h"

namespace philora::tokenizer {

class Pattern {
 public:
  static Expected<Pattern> from_json(const nlohmann::json& j, std::string_view owner);

  // Calls f(begin, end) for every non-overlapping match in `text`, left to right.
  template <typename F>
  void for_each(std::string_view text, F&& f) const {
    if (regex_) {
      regex_->for_each(text, f);
      return;
    }
    for (size_t pos = text.find(literal_); pos != std::string_view::npos;
         pos = text.find(literal_, pos + literal_.size())) {
      f(pos, pos + literal_.size());
    }
  }
  // Replaces every match by `content`.
  std::string replace_all(std::string_view text, std::string_view content) const;

 private:
  std::string literal_;                 // when a String pattern
  std::shared_ptr<const Regex> regex_;  // when a Regex pattern
};

}  // namespace philora::tokenizer
