#include "tokenizer/pattern.h"

#include <nlohmann/json.hpp>

namespace philora::tokenizer {

Expected<Pattern> Pattern::from_json(const nlohmann::json& j, std::string_view owner) {
  Pattern p;
  if (j.is_object() && j.contains("String") && j["String"].is_string()) {
    p.literal_ = j["String"].get<std::string>();
    if (p.literal_.empty())
      return Status::errorf("{}: empty String pattern is not supported", owner);
    return p;
  }
  if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    auto re = Regex::compile(j["Regex"].get<std::string>());
    if (!re.ok()) return re.status().with_context(std::string(owner));
    p.regex_ = std::move(re).value();
    return p;
  }
  return Status::errorf("{}: pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}, got {}",
                        owner, j.dump());
}

std::string Pattern::replace_all(std::string_view text, std::string_view content) const {
  std::string out;
  size_t last = 0;
  for_each(text, [&](size_t b, size_t e) {
    if (out.empty()) out.reserve(text.size() + text.size() / 8 + content.size());
    out.append(text.substr(last, b - last));
    out.append(content);
    last = e;
  });
  if (last == 0 && out.empty()) return std::string(text);
  out.append(text.substr(last));
  return out;
}

}  // namespace philora::tokenizer
