#include "tokenizer/normalizer.h"

#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/pattern.h"
#include "tokenizer/unicode.h"

namespace philora::tokenizer {

namespace {

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void normalize(NormalizedText& s) const override {
    for (const auto& n : steps_) n->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

// Prepends a string to non-empty text.
class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prepend)
      : prepend_(std::move(prepend)), chars_(unicode::count_chars(prepend_)) {}
  void normalize(NormalizedText& s) const override {
    if (s.text.empty()) return;
    s.text.insert(0, prepend_);
    s.prefix_chars += chars_;
  }

 private:
  std::string prepend_;
  size_t chars_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(Pattern pattern, std::string content, bool char_for_char)
      : pattern_(std::move(pattern)), content_(std::move(content)), char_for_char_(char_for_char) {}
  void normalize(NormalizedText& s) const override {
    s.text = pattern_.replace_all(s.text, content_);
    // Character counts of the inserted prefix only survive a one-for-one character replacement.
    if (!char_for_char_) s.prefix_chars = 0;
  }

 private:
  Pattern pattern_;
  std::string content_;
  bool char_for_char_;
};

// Removes leading and/or trailing Unicode whitespace.
class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(NormalizedText& s) const override {
    const std::string& t = s.text;
    size_t b = 0, e = t.size();
    if (left_) {
      while (b < e) {
        size_t i = b;
        if (!unicode::is_white_space(unicode::decode(t, i))) break;
        b = i;
      }
    }
    if (right_) {
      while (e > b) {
        size_t start = e - 1;
        while (start > b && (static_cast<unsigned char>(t[start]) & 0xC0) == 0x80) --start;
        size_t i = start;
        if (!unicode::is_white_space(unicode::decode(t, i))) break;
        e = start;
      }
    }
    if (b > 0) s.prefix_chars = 0;
    s.text = t.substr(b, e - b);
  }

 private:
  bool left_, right_;
};

}  // namespace

Expected<std::unique_ptr<Normalizer>> make_normalizer(const nlohmann::json& j) {
  if (j.is_null()) return std::unique_ptr<Normalizer>();
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    return Status::errorf("normalizer: expected an object with a \"type\", got {}", j.dump());
  }
  const std::string type = j["type"].get<std::string>();
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const auto& sub : j.value("normalizers", nlohmann::json::array())) {
      PHILORA_ASSIGN_OR_RETURN(auto n, make_normalizer(sub));
      if (n) steps.push_back(std::move(n));
    }
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(steps)));
  }
  if (type == "Prepend") {
    if (!j.contains("prepend") || !j["prepend"].is_string())
      return Status::error("normalizer Prepend: missing \"prepend\"");
    return std::unique_ptr<Normalizer>(new PrependNormalizer(j["prepend"].get<std::string>()));
  }
  if (type == "Replace") {
    if (!j.contains("content") || !j["content"].is_string())
      return Status::error("normalizer Replace: missing \"content\"");
    PHILORA_ASSIGN_OR_RETURN(
        Pattern p, Pattern::from_json(j.value("pattern", nlohmann::json()), "normalizer Replace"));
    const std::string content = j["content"].get<std::string>();
    const auto& pat = j["pattern"];
    const bool one_for_one = pat.contains("String") &&
                             unicode::count_chars(pat["String"].get<std::string>()) == 1 &&
                             unicode::count_chars(content) == 1;
    return std::unique_ptr<Normalizer>(new ReplaceNormalizer(std::move(p), content, one_for_one));
  }
  if (type == "Strip") {
    return std::unique_ptr<Normalizer>(
        new StripNormalizer(j.value("strip_left", true), j.value("strip_right", true)));
  }
  return Status::errorf(
      "normalizer type {:?} is not supported (supported: Sequence, Prepend, Replace, Strip)", type);
}

}  // namespace philora::tokenizer
