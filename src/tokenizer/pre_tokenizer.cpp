#include "tokenizer/pre_tokenizer.h"

#include <nlohmann/json.hpp>

#include "tokenizer/pattern.h"
#include "tokenizer/unicode.h"

namespace philora::tokenizer {

void PreTokenized::materialize_byte_level() {
  if (!raw_bytes) return;
  const auto& alphabet = unicode::byte_level_alphabet();
  for (Piece& p : pieces) {
    std::string mapped;
    mapped.reserve(p.text.size() * 2);
    for (char c : p.text) mapped += alphabet[static_cast<unsigned char>(c)];
    p.text = keep(std::move(mapped));
    p.prefix_bytes = 0;
  }
  raw_bytes = false;
}

void split_piece(const Piece& piece, const std::vector<std::pair<size_t, size_t>>& matches,
                 SplitBehavior behavior, bool invert, std::vector<Piece>& out) {
  const std::string_view t = piece.text;
  // Ranges covering the whole text, each flagged as a match or not.
  struct Range {
    size_t b, e;
    bool match;
  };
  std::vector<Range> ranges;
  ranges.reserve(matches.size() * 2 + 1);
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev != b) ranges.push_back({prev, b, invert});
    ranges.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != t.size()) ranges.push_back({prev, t.size(), invert});

  std::vector<Range> merged;
  merged.reserve(ranges.size());
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Range& r : ranges)
        if (!r.match) merged.push_back(r);
      break;
    case SplitBehavior::kIsolated:
      merged = ranges;
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Range& r : ranges) {
        if (r.match && !previous_match && !merged.empty()) {
          merged.back().e = r.e;
        } else {
          merged.push_back(r);
        }
        previous_match = r.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (size_t k = ranges.size(); k-- > 0;) {
        const Range& r = ranges[k];
        if (r.match && !previous_match && !merged.empty()) {
          merged.back().b = r.b;
        } else {
          merged.push_back(r);
        }
        previous_match = r.match;
      }
      std::reverse(merged.begin(), merged.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Range& r : ranges) {
        if (r.match == previous_match && !merged.empty()) {
          merged.back().e = r.e;
        } else {
          merged.push_back(r);
        }
        previous_match = r.match;
      }
      break;
    }
  }
  for (const Range& r : merged) {
    if (r.e == r.b) continue;
    Piece p;
    p.text = t.substr(r.b, r.e - r.b);
    p.at_start = piece.at_start && r.b <= piece.prefix_bytes;
    p.prefix_bytes = r.b < piece.prefix_bytes ? piece.prefix_bytes - r.b : 0;
    out.push_back(p);
  }
}

namespace {

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void pre_tokenize(PreTokenized& p) const override {
    for (const auto& s : steps_) {
      p.materialize_byte_level();
      s->pre_tokenize(p);
    }
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Pattern pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(PreTokenized& p) const override {
    std::vector<Piece> out;
    out.reserve(p.pieces.size() * 4);
    std::vector<std::pair<size_t, size_t>> m;
    for (const Piece& piece : p.pieces) {
      m.clear();
      pattern_.find_all(piece.text, m);
      split_piece(piece, m, behavior_, invert_, out);
    }
    p.pieces.swap(out);
  }

 private:
  Pattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::shared_ptr<const Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  void pre_tokenize(PreTokenized& p) const override {
    if (add_prefix_space_) {
      for (Piece& piece : p.pieces) {
        if (!piece.text.empty() && piece.text.front() != ' ') {
          piece.text = p.keep(" " + std::string(piece.text));
          piece.prefix_bytes += 1;
        }
      }
    }
    if (regex_) {
      std::vector<Piece> out;
      out.reserve(p.pieces.size() * 4);
      std::vector<std::pair<size_t, size_t>> m;
      for (const Piece& piece : p.pieces) {
        m.clear();
        regex_->find_all(piece.text, m);
        split_piece(piece, m, SplitBehavior::kIsolated, false, out);
      }
      p.pieces.swap(out);
    }
    p.raw_bytes = true;
  }

 private:
  bool add_prefix_space_;
  std::shared_ptr<const Regex> regex_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : rep_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void pre_tokenize(PreTokenized& p) const override {
    std::vector<Piece> out;
    out.reserve(p.pieces.size() * 4);
    std::vector<std::pair<size_t, size_t>> m;
    for (const Piece& piece : p.pieces) {
      std::string s;
      s.reserve(piece.text.size() + rep_.size() * 4);
      size_t prefix = piece.prefix_bytes;
      const bool starts_with_rep = piece.text.starts_with(rep_) || piece.text.starts_with(' ');
      if (!starts_with_rep && (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && piece.at_start))) {
        s += rep_;
        prefix += rep_.size();
      }
      for (char c : piece.text) {
        if (c == ' ') {
          s += rep_;
        } else {
          s.push_back(c);
        }
      }
      Piece rewritten{p.keep(std::move(s)), piece.at_start, prefix};
      if (!split_) {
        out.push_back(rewritten);
        continue;
      }
      m.clear();
      for (size_t pos = 0; (pos = rewritten.text.find(rep_, pos)) != std::string_view::npos; pos += rep_.size()) {
        m.emplace_back(pos, pos + rep_.size());
      }
      split_piece(rewritten, m, SplitBehavior::kMergedWithNext, false, out);
    }
    p.pieces.swap(out);
  }

 private:
  std::string rep_;
  PrependScheme scheme_;
  bool split_;
};

class DigitsPreTokenizer final : public PreTokenizer {
 public:
  DigitsPreTokenizer(std::shared_ptr<const Regex> digit, bool individual) : digit_(std::move(digit)), individual_(individual) {}
  void pre_tokenize(PreTokenized& p) const override {
    std::vector<Piece> out;
    std::vector<std::pair<size_t, size_t>> m;
    for (const Piece& piece : p.pieces) {
      m.clear();
      digit_->find_all(piece.text, m);
      split_piece(piece, m, individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, false, out);
    }
    p.pieces.swap(out);
  }

 private:
  std::shared_ptr<const Regex> digit_;
  bool individual_;
};

Expected<SplitBehavior> parse_behavior(const std::string& s) {
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (s == "Contiguous") return SplitBehavior::kContiguous;
  return Status::errorf("pre_tokenizer Split: unknown behavior {:?}", s);
}

}  // namespace

Expected<std::unique_ptr<PreTokenizer>> make_pre_tokenizer(const nlohmann::json& j) {
  using Ptr = std::unique_ptr<PreTokenizer>;
  if (j.is_null()) return Ptr();
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    return Status::errorf("pre_tokenizer: expected an object with a \"type\", got {}", j.dump());
  }
  const std::string type = j["type"].get<std::string>();
  if (type == "Sequence") {
    std::vector<Ptr> steps;
    for (const auto& sub : j.value("pretokenizers", nlohmann::json::array())) {
      PHILORA_ASSIGN_OR_RETURN(auto s, make_pre_tokenizer(sub));
      if (s) steps.push_back(std::move(s));
    }
    return Ptr(new SequencePreTokenizer(std::move(steps)));
  }
  if (type == "Split") {
    PHILORA_ASSIGN_OR_RETURN(Pattern pat, Pattern::from_json(j.value("pattern", nlohmann::json()), "pre_tokenizer Split"));
    PHILORA_ASSIGN_OR_RETURN(SplitBehavior b, parse_behavior(j.value("behavior", std::string("Isolated"))));
    return Ptr(new SplitPreTokenizer(std::move(pat), b, j.value("invert", false)));
  }
  if (type == "ByteLevel") {
    std::shared_ptr<const Regex> re;
    if (j.value("use_regex", true)) {
      PHILORA_ASSIGN_OR_RETURN(re, Regex::compile(kGpt2Pattern));
    }
    return Ptr(new ByteLevelPreTokenizer(j.value("add_prefix_space", true), std::move(re)));
  }
  if (type == "Metaspace") {
    if (!j.contains("replacement") || !j["replacement"].is_string()) {
      return Status::error("pre_tokenizer Metaspace: missing \"replacement\"");
    }
    PrependScheme scheme = PrependScheme::kAlways;
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
      const std::string s = j["prepend_scheme"].get<std::string>();
      if (s == "always") scheme = PrependScheme::kAlways;
      else if (s == "first") scheme = PrependScheme::kFirst;
      else if (s == "never") scheme = PrependScheme::kNever;
      else return Status::errorf("pre_tokenizer Metaspace: unknown prepend_scheme {:?}", s);
    }
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() && !j["add_prefix_space"].get<bool>()) {
      scheme = PrependScheme::kNever;
    }
    return Ptr(new MetaspacePreTokenizer(j["replacement"].get<std::string>(), scheme, j.value("split", true)));
  }
  if (type == "Digits") {
    PHILORA_ASSIGN_OR_RETURN(auto re, Regex::compile("\\p{N}"));
    return Ptr(new DigitsPreTokenizer(std::move(re), j.value("individual_digits", false)));
  }
  return Status::errorf(
      "pre_tokenizer type {:?} is not supported (supported: Sequence, Split, ByteLevel, Metaspace, Digits)", type);
}

}  // namespace philora::tokenizer
