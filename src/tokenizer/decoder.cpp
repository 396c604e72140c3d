#include "tokenizer/decoder.h"

#include <nlohmann/json.hpp>

#include "tokenizer/pattern.h"
#include "tokenizer/unicode.h"

namespace philora::tokenizer {

namespace {

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& d : steps_) d->decode_chain(tokens);
  }
  void token_bytes(std::string& token) const override {
    for (const auto& d : steps_) d->token_bytes(token);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

// Runs of <0xNN> tokens become the bytes they name; an ill-formed run becomes one U+FFFD per byte.
class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string bytes;
    auto flush = [&] {
      if (bytes.empty()) return;
      if (unicode::is_valid(bytes)) {
        out.push_back(bytes);
      } else {
        for (size_t k = 0; k < bytes.size(); ++k) out.push_back("\xEF\xBF\xBD");
      }
      bytes.clear();
    };
    for (auto& t : tokens) {
      int b = -1;
      if (t.size() == 6 && t.starts_with("<0x") && t.back() == '>') b = parse_hex(t[3], t[4]);
      if (b >= 0) {
        bytes.push_back(static_cast<char>(b));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
  void token_bytes(std::string& t) const override {
    if (t.size() == 6 && t.starts_with("<0x") && t.back() == '>') {
      const int b = parse_hex(t[3], t[4]);
      if (b >= 0) t.assign(1, static_cast<char>(b));
    }
  }

 private:
  static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static int parse_hex(char a, char b) {
    const int h = hex(a), l = hex(b);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
  void token_bytes(std::string&) const override {}
};

// Removes up to `start` leading and `stop` trailing copies of one character from every token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : c_(std::move(content)), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::string_view v = t;
      size_t b = 0;
      for (size_t k = 0; k < start_ && v.substr(b).starts_with(c_); ++k) b += c_.size();
      size_t e = v.size();
      for (size_t k = 0; k < stop_ && e >= b + c_.size() && v.substr(b, e - b).ends_with(c_); ++k)
        e -= c_.size();
      t = std::string(v.substr(b, e - b));
    }
  }
  // Strip acts on the ends of the decoded text (after Fuse), not on a token in the middle.
  void token_bytes(std::string&) const override {}

 private:
  std::string c_;
  size_t start_, stop_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(Pattern p, std::string content) : p_(std::move(p)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) t = p_.replace_all(t, content_);
  }
  void token_bytes(std::string& t) const override { t = p_.replace_all(t, content_); }

 private:
  Pattern p_;
  std::string content_;
};

// Maps byte-level alphabet characters back to bytes; a token with any other character keeps its
// own UTF-8 bytes. The bytes of all tokens are then read as UTF-8, ill-formed parts as U+FFFD.
class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) {
      const size_t mark = bytes.size();
      bool all = true;
      for (size_t i = 0; i < t.size();) {
        const int b = unicode::byte_level_byte(unicode::decode(t, i));
        if (b < 0) {
          all = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!all) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, unicode::is_valid(bytes) ? std::move(bytes) : unicode::to_valid_lossy(bytes));
  }
  void token_bytes(std::string& t) const override {
    std::string bytes;
    for (size_t i = 0; i < t.size();) {
      const int b = unicode::byte_level_byte(unicode::decode(t, i));
      if (b < 0) return;  // not a byte-level token: its own UTF-8 bytes
      bytes.push_back(static_cast<char>(b));
    }
    t = std::move(bytes);
  }
};

// "▁" becomes a space, except in the first token when a prefix space was prepended at encoding.
class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string rep, bool strip_first)
      : rep_(std::move(rep)), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      std::string out;
      out.reserve(t.size());
      size_t pos = 0;
      for (size_t f = t.find(rep_); f != std::string::npos; f = t.find(rep_, pos)) {
        out.append(t, pos, f - pos);
        if (!(i == 0 && strip_first_)) out.push_back(' ');
        pos = f + rep_.size();
      }
      out.append(t, pos, std::string::npos);
      t = std::move(out);
    }
  }
  void token_bytes(std::string& t) const override {
    std::string out;
    size_t pos = 0;
    for (size_t f = t.find(rep_); f != std::string::npos; f = t.find(rep_, pos)) {
      out.append(t, pos, f - pos);
      out.push_back(' ');
      pos = f + rep_.size();
    }
    out.append(t, pos, std::string::npos);
    t = std::move(out);
  }

 private:
  std::string rep_;
  bool strip_first_;
};

}  // namespace

Expected<std::unique_ptr<Decoder>> make_decoder(const nlohmann::json& j) {
  using Ptr = std::unique_ptr<Decoder>;
  if (j.is_null()) return Ptr();
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    return Status::errorf("decoder: expected an object with a \"type\", got {}", j.dump());
  }
  const std::string type = j["type"].get<std::string>();
  if (type == "Sequence") {
    std::vector<Ptr> steps;
    for (const auto& sub : j.value("decoders", nlohmann::json::array())) {
      PHILORA_ASSIGN_OR_RETURN(auto d, make_decoder(sub));
      if (d) steps.push_back(std::move(d));
    }
    return Ptr(new SequenceDecoder(std::move(steps)));
  }
  if (type == "ByteFallback") return Ptr(new ByteFallbackDecoder());
  if (type == "Fuse") return Ptr(new FuseDecoder());
  if (type == "ByteLevel") return Ptr(new ByteLevelDecoder());
  if (type == "Strip") {
    if (!j.contains("content") || !j["content"].is_string())
      return Status::error("decoder Strip: missing \"content\"");
    return Ptr(new StripDecoder(j["content"].get<std::string>(), j.value("start", size_t{0}),
                                j.value("stop", size_t{0})));
  }
  if (type == "Replace") {
    if (!j.contains("content") || !j["content"].is_string())
      return Status::error("decoder Replace: missing \"content\"");
    PHILORA_ASSIGN_OR_RETURN(
        Pattern p, Pattern::from_json(j.value("pattern", nlohmann::json()), "decoder Replace"));
    return Ptr(new ReplaceDecoder(std::move(p), j["content"].get<std::string>()));
  }
  if (type == "Metaspace") {
    if (!j.contains("replacement") || !j["replacement"].is_string()) {
      return Status::error("decoder Metaspace: missing \"replacement\"");
    }
    bool strip_first = true;
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
      strip_first = j["prepend_scheme"].get<std::string>() != "never";
    }
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean()) {
      strip_first = strip_first && j["add_prefix_space"].get<bool>();
    }
    return Ptr(new MetaspaceDecoder(j["replacement"].get<std::string>(), strip_first));
  }
  return Status::errorf(
      "decoder type {:?} is not supported (supported: Sequence, ByteFallback, Fuse, Strip, "
      "Replace, ByteLevel, "
      "Metaspace)",
      type);
}

}  // namespace philora::tokenizer
