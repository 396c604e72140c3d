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

  // Appends the byte ranges of all non-overlapping matches in `text`, left to right.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;
  // Replaces every match by `content`.
  std::string replace_all(std::string_view text, std::string_view content) const;

 private:
  std::string literal_;                  // when a String pattern
  std::shared_ptr<const Regex> regex_;   // when a Regex pattern
};

}  // namespace philora::tokenizer
