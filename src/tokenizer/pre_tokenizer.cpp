#include "tokenizer/pre_tokenizer.h"

#include <nlohmann/json.hpp>

#include "tokenizer/pattern.h"
#include "tokenizer/unicode.h"

namespace philora::tokenizer {

namespace {

// Turns the ranges of one piece ([b, e), flagged match or not, in order and covering it) into
// output pieces according to a split behavior, as HF's NormalizedString::split does.
class Splitter {
 public:
  Splitter(const Piece& piece, SplitBehavior behavior, bool invert, const PieceSink& sink)
      : piece_(piece), behavior_(behavior), invert_(invert), sink_(sink) {}

  void range(size_t b, size_t e, bool match) {
    if (e == b) return;
    match = match != invert_;
    switch (behavior_) {
      case SplitBehavior::kRemoved:
        if (!match) emit(b, e);
        break;
      case SplitBehavior::kIsolated:
        emit(b, e);
        break;
      case SplitBehavior::kMergedWithPrevious:
        // A match joins the piece before it, unless that one was a match too.
        if (match && has_pending_ && !pending_match_) {
          pending_e_ = e;
        } else {
          flush();
          hold(b, e);
        }
        pending_match_ = match;
        break;
      case SplitBehavior::kMergedWithNext:
        // A match joins the piece after it, unless that one is a match too.
        if (has_pending_ && pending_match_ && !match) {
          pending_e_ = e;
          pending_match_ = false;
          flush();
        } else {
          flush();
          hold(b, e);
          pending_match_ = match;
        }
        break;
      case SplitBehavior::kContiguous:
        if (has_pending_ && match == pending_match_) {
          pending_e_ = e;
        } else {
          flush();
          hold(b, e);
          pending_match_ = match;
        }
        break;
    }
  }
  void finish() { flush(); }

 private:
  void hold(size_t b, size_t e) {
    has_pending_ = true;
    pending_b_ = b;
    pending_e_ = e;
  }
  void flush() {
    if (has_pending_) emit(pending_b_, pending_e_);
    has_pending_ = false;
  }
  void emit(size_t b, size_t e) {
    Piece p;
    p.text = piece_.text.substr(b, e - b);
    p.at_start = piece_.at_start && b <= piece_.prefix_bytes;
    p.prefix_bytes = b < piece_.prefix_bytes ? piece_.prefix_bytes - b : 0;
    p.raw_bytes = piece_.raw_bytes;
    sink_(p);
  }

  const Piece& piece_;
  SplitBehavior behavior_;
  bool invert_;
  const PieceSink& sink_;
  bool has_pending_ = false, pending_match_ = false;
  size_t pending_b_ = 0, pending_e_ = 0;
};

// Feeds the gaps between `matches` and the matches themselves to a Splitter.
template <typename ForEachMatch>
void split_with(const Piece& piece, SplitBehavior behavior, bool invert, const PieceSink& sink,
                ForEachMatch&& for_each_match) {
  Splitter s(piece, behavior, invert, sink);
  size_t prev = 0;
  for_each_match([&](size_t b, size_t e) {
    s.range(prev, b, false);
    s.range(b, e, true);
    prev = e;
  });
  s.range(prev, piece.text.size(), false);
  s.finish();
}

// Maps raw bytes through the GPT-2 alphabet when a later step needs the text itself.
Piece materialize(const Piece& p, std::string& storage) {
  if (!p.raw_bytes) return p;
  const auto& alphabet = unicode::byte_level_alphabet();
  storage.clear();
  for (char c : p.text) storage += alphabet[static_cast<unsigned char>(c)];
  Piece q = p;
  q.text = storage;
  q.raw_bytes = false;
  q.prefix_bytes = 0;
  return q;
}

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void pre_tokenize(const Piece& piece, const PieceSink& sink) const override {
    run(0, piece, sink);
  }

 private:
  void run(size_t k, const Piece& piece, const PieceSink& sink) const {
    if (k == steps_.size()) {
      sink(piece);
      return;
    }
    std::string storage;
    const Piece in = materialize(piece, storage);
    auto next = [&](const Piece& p) { run(k + 1, p, sink); };
    steps_[k]->pre_tokenize(in, PieceSink(next));
  }
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Pattern pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(const Piece& piece, const PieceSink& sink) const override {
    split_with(piece, behavior_, invert_, sink,
               [&](auto&& on_match) { pattern_.for_each(piece.text, on_match); });
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
  void pre_tokenize(const Piece& piece, const PieceSink& sink) const override {
    Piece p = piece;
    std::string prefixed;
    if (add_prefix_space_ && !p.text.empty() && p.text.front() != ' ') {
      prefixed = " ";
      prefixed += p.text;
      p.text = prefixed;
      p.prefix_bytes += 1;
    }
    p.raw_bytes = true;
    if (!regex_) {
      sink(p);
      return;
    }
    split_with(p, SplitBehavior::kIsolated, false, sink,
               [&](auto&& on_match) { regex_->for_each(p.text, on_match); });
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
  void pre_tokenize(const Piece& piece, const PieceSink& sink) const override {
    std::string s;
    s.reserve(piece.text.size() + rep_.size() * 4);
    size_t prefix = piece.prefix_bytes;
    const bool starts_with_rep = piece.text.starts_with(rep_) || piece.text.starts_with(' ');
    if (!starts_with_rep && (scheme_ == PrependScheme::kAlways ||
                             (scheme_ == PrependScheme::kFirst && piece.at_start))) {
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
    const Piece rewritten{s, piece.at_start, prefix, false};
    if (!split_) {
      sink(rewritten);
      return;
    }
    const std::string_view t = rewritten.text;
    split_with(rewritten, SplitBehavior::kMergedWithNext, false, sink, [&](auto&& on_match) {
      for (size_t pos = t.find(rep_); pos != std::string_view::npos;
           pos = t.find(rep_, pos + rep_.size())) {
        on_match(pos, pos + rep_.size());
      }
    });
  }

 private:
  std::string rep_;
  PrependScheme scheme_;
  bool split_;
};

class DigitsPreTokenizer final : public PreTokenizer {
 public:
  DigitsPreTokenizer(std::shared_ptr<const Regex> digit, bool individual)
      : digit_(std::move(digit)), individual_(individual) {}
  void pre_tokenize(const Piece& piece, const PieceSink& sink) const override {
    split_with(piece, individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, false,
               sink, [&](auto&& on_match) { digit_->for_each(piece.text, on_match); });
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

std::vector<Piece> split_piece(const Piece& piece,
                               const std::vector<std::pair<size_t, size_t>>& matches,
                               SplitBehavior behavior, bool invert) {
  std::vector<Piece> out;
  auto collect = [&](const Piece& p) { out.push_back(p); };
  split_with(piece, behavior, invert, PieceSink(collect), [&](auto&& on_match) {
    for (auto [b, e] : matches) on_match(b, e);
  });
  return out;
}

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
    PHILORA_ASSIGN_OR_RETURN(Pattern pat, Pattern::from_json(j.value("pattern", nlohmann::json()),
                                                             "pre_tokenizer Split"));
    PHILORA_ASSIGN_OR_RETURN(SplitBehavior b,
                             parse_behavior(j.value("behavior", std::string("Isolated"))));
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
      if (s == "always") {
        scheme = PrependScheme::kAlways;
      } else if (s == "first") {
        scheme = PrependScheme::kFirst;
      } else if (s == "never") {
        scheme = PrependScheme::kNever;
      } else {
        return Status::errorf("pre_tokenizer Metaspace: unknown prepend_scheme {:?}", s);
      }
    }
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() &&
        !j["add_prefix_space"].get<bool>()) {
      scheme = PrependScheme::kNever;
    }
    return Ptr(new MetaspacePreTokenizer(j["replacement"].get<std::string>(), scheme,
                                         j.value("split", true)));
  }
  if (type == "Digits") {
    PHILORA_ASSIGN_OR_RETURN(auto re, Regex::compile("\\p{N}"));
    return Ptr(new DigitsPreTokenizer(std::move(re), j.value("individual_digits", false)));
  }
  return Status::errorf(
      "pre_tokenizer type {:?} is not supported (supported: Sequence, Split, ByteLevel, Metaspace, "
      "Digits)",
      type);
}

}  // namespace philora::tokenizer
