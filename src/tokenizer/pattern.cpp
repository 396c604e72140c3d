#include "tokenizer/pattern.h"

#include <nlohmann/json.hpp>

namespace philora::tokenizer {

Expected<Pattern> Pattern::from_json(const nlohmann::json& j, std::string_view owner) {
  Pattern p;
  if (j.is_object() && j.contains("String") && j["String"].is_string()) {
    p.literal_ = j["String"].get<std::string>();
    if (p.literal_.empty()) return Status::errorf("{}: empty String pattern is not supported", owner);
    return p;
  }
  if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    auto re = Regex::compile(j["Regex"].get<std::string>());
    if (!re.ok()) return re.status().with_context(std::string(owner));
    p.regex_ = std::move(re).value();
    return p;
  }
  return Status::errorf("{}: pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}, got {}", owner,
                        j.dump());
}

void Pattern::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  if (regex_) {
    regex_->find_all(text, out);
    return;
  }
  size_t pos = 0;
  while ((pos = text.find(literal_, pos)) != std::string_view::npos) {
    out.emplace_back(pos, pos + literal_.size());
    pos += literal_.size();
  }
}

std::string Pattern::replace_all(std::string_view text, std::string_view content) const {
  std::vector<std::pair<size_t, size_t>> m;
  find_all(text, m);
  if (m.empty()) return std::string(text);
  std::string out;
  out.reserve(text.size() + m.size() * content.size());
  size_t last = 0;
  for (auto [b, e] : m) {
    out.append(text.substr(last, b - last));
    out.append(content);
    last = e;
  }
  out.append(text.substr(last));
  return out;
}

}  // namespace philora::tokenizer
