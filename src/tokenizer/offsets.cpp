// Tokenizer::encode_with_offsets: the ids of encode() and where each token came from in the input,
// in code points, as HF tokenizers reports them (Python's `encoding.offsets`).
//
// Each run of input between added tokens is encoded as encode() encodes it; its tokens are then
// aligned with the run. A token's bytes (token_bytes: byte-level tokens through the GPT-2 byte
// map, <0xNN> as its byte, SentencePiece's "▁" as a space) are matched left to right against the
// run; a space may also match a literal "▁" of the input (the normalizer turned spaces into "▁"
// and token_bytes turns every "▁" back into a space). A normalizer or pre-tokenizer may put one
// "▁" or space in front of the run (Prepend, Metaspace, add_prefix_space); the alignment tries
// without one first, then with one, which HF aligns with the run's first character. A token
// covers the characters its bytes fall in, so the byte-level pieces of one character all get
// that character's span, as in HF.
#include <algorithm>

#include "tokenizer/added_vocabulary.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace philora::tokenizer {

namespace {

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581

struct ByteSpan {
  size_t begin = 0, end = 0;  // bytes of the input
};

// Byte span of the character that holds byte `i` of `text`.
ByteSpan char_at(std::string_view text, size_t i) {
  size_t b = i;
  while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
  const size_t n = unicode::sequence_length(static_cast<unsigned char>(text[b]));
  return {b, std::min(text.size(), b + n)};
}

// A token's bytes as the alignment matches them. A token without bytes of its own (the unknown
// token, a special token) is `loose`: its content where the text has it, else one or more
// characters up to where the next token matches (the unknown characters it stands for).
struct RunToken {
  std::string bytes;
  bool loose = false;
};

// Whether `t` matches text at byte j (within end), and the bytes of text it takes.
size_t match_at(std::string_view text, size_t j, size_t end, const std::string& t) {
  size_t k = 0;
  for (char c : t) {
    if (k + j < end && text[j + k] == c) {
      ++k;
    } else if (c == ' ' && j + k + kMetaspace.size() <= end &&
               text.substr(j + k, kMetaspace.size()) == kMetaspace) {
      k += kMetaspace.size();
    } else {
      return SIZE_MAX;
    }
  }
  return k;
}

// Aligns `tokens` with text[begin, end), `inserted` leading bytes of the tokens being text put in
// front of the run. Fills `out` (one span per token) or returns false.
bool align_run(std::string_view text, size_t begin, size_t end, const std::vector<RunToken>& tokens,
               size_t inserted, std::vector<ByteSpan>& out) {
  out.assign(tokens.size(), ByteSpan{});
  size_t j = begin;
  for (size_t k = 0; k < tokens.size(); ++k) {
    size_t lo = SIZE_MAX, hi = 0;
    const auto cover = [&](size_t at) {
      const ByteSpan c = char_at(text, at);
      lo = std::min(lo, c.begin);
      hi = std::max(hi, c.end);
    };
    const RunToken& t = tokens[k];
    size_t taken = SIZE_MAX;
    if (t.loose && inserted == 0) taken = match_at(text, j, end, t.bytes);
    if (t.loose && inserted == 0 && taken == SIZE_MAX) {
      // Unknown characters: at least one, then up to where the next token matches.
      if (j >= end) return false;
      const bool last = k + 1 == tokens.size();
      do {
        cover(j);
        j = char_at(text, j).end;
      } while (j < end && (last || (!tokens[k + 1].loose &&
                                    match_at(text, j, end, tokens[k + 1].bytes) == SIZE_MAX)));
      out[k] = {lo, hi};
      continue;
    }
    for (char c : t.bytes) {
      if (inserted > 0) {  // put in front: HF aligns it with the run's first character
        --inserted;
        if (begin < end) cover(begin);
        continue;
      }
      const size_t n = match_at(text, j, end, std::string(1, c));
      if (n == SIZE_MAX) return false;
      cover(j);
      j += n;
    }
    if (lo == SIZE_MAX) {
      if (!t.bytes.empty()) return false;
      lo = hi = std::min(j, end);  // a token of no bytes sits where the text is
    }
    out[k] = {lo, hi};
  }
  return j == end;
}

}  // namespace

Tokenizer::Encoding Tokenizer::encode_with_offsets(std::string_view text,
                                                   bool add_special_tokens) const {
  std::string repaired;
  if (!unicode::is_valid(text)) {
    repaired = unicode::to_valid_lossy(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  std::vector<ByteSpan> spans;  // [ids.size()] bytes of `text`
  std::vector<Segment> segments;
  added_->split(text, /*normalized_set=*/false, segments);
  std::vector<int32_t> run_ids;
  std::vector<RunToken> run_bytes;
  std::vector<ByteSpan> run_spans;
  for (const Segment& s : segments) {
    if (s.id >= 0) {
      ids.push_back(s.id);
      spans.push_back({s.begin, s.end});
      continue;
    }
    if (s.end <= s.begin) continue;
    run_ids.clear();
    encode_segment(text.substr(s.begin, s.end - s.begin), s.begin == 0, run_ids);
    run_bytes.clear();
    for (int32_t id : run_ids) {
      if (std::optional<std::string> b = token_bytes(id)) {
        run_bytes.push_back({std::move(*b), false});
      } else {  // the unknown token, or a special token matched inside the normalized text
        run_bytes.push_back({id_to_token(id).value_or(std::string()), true});
      }
    }
    bool aligned = false;
    for (size_t inserted = 0; inserted <= 1 && !aligned; ++inserted) {
      if (inserted > 0 && (run_bytes.empty() || run_bytes[0].loose ||
                           run_bytes[0].bytes.empty() || run_bytes[0].bytes[0] != ' '))
        break;
      aligned = align_run(text, s.begin, s.end, run_bytes, inserted, run_spans);
    }
    if (!aligned) run_spans.assign(run_ids.size(), ByteSpan{s.begin, s.end});
    ids.insert(ids.end(), run_ids.begin(), run_ids.end());
    spans.insert(spans.end(), run_spans.begin(), run_spans.end());
  }

  // [text.size() + 1] code points before each byte (spans start and end on characters).
  std::vector<size_t> char_index(text.size() + 1, 0);
  for (size_t i = 0; i < text.size(); ++i)
    char_index[i + 1] = char_index[i] + ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80);
  Encoding enc;
  enc.ids = ids;
  enc.offsets.reserve(ids.size());
  for (const ByteSpan& b : spans)
    enc.offsets.push_back({char_index[b.begin], char_index[b.end]});

  // The post-processor's special tokens: run it over stand-ins (-1, -2, ...) for our tokens and
  // give what it added (0, 0).
  if (post_processor_) {
    std::vector<int32_t> marks(ids.size());
    for (size_t i = 0; i < marks.size(); ++i) marks[i] = -1 - static_cast<int32_t>(i);
    std::vector<int32_t> processed = marks;
    post_processor_->process(processed, add_special_tokens);
    Encoding out;
    out.ids.reserve(processed.size());
    out.offsets.reserve(processed.size());
    for (int32_t m : processed) {
      if (m < 0) {
        out.ids.push_back(enc.ids[static_cast<size_t>(-1 - m)]);
        out.offsets.push_back(enc.offsets[static_cast<size_t>(-1 - m)]);
      } else {
        out.ids.push_back(m);
        out.offsets.push_back({0, 0});
      }
    }
    enc = std::move(out);
  }

  // HF's ByteLevel post-processor with trim_offsets: leading and trailing spaces of a token
  // ("Ġ" or white space in its vocabulary string) leave its span; on the first token with
  // add_prefix_space one leading space stays (it may be the one that was added).
  if (trim_offsets_) {
    for (size_t i = 0; i < enc.ids.size(); ++i) {
      const std::optional<std::string> tok = id_to_token(enc.ids[i]);
      if (!tok) continue;
      std::vector<uint32_t> cps;
      for (size_t p = 0; p < tok->size();) {
        if (p + unicode::sequence_length(static_cast<unsigned char>((*tok)[p])) > tok->size()) break;
        cps.push_back(unicode::decode(*tok, p));
      }
      const auto is_space = [&](uint32_t cp) {
        return cp == 0x120 || unicode::is_white_space(cp);
      };
      size_t leading = 0, trailing = 0;
      while (leading < cps.size() && is_space(cps[leading])) ++leading;
      while (trailing < cps.size() && is_space(cps[cps.size() - 1 - trailing])) ++trailing;
      Offsets& o = enc.offsets[i];
      if (leading > 0) {
        const bool is_first = i == 0 || o.begin == 0;
        if (is_first && trim_add_prefix_space_ && leading == 1) leading = 0;
        o.begin = std::min(o.begin + leading, o.end);
      }
      if (trailing > 0 && o.end >= trailing) o.end = std::max(o.end - trailing, o.begin);
    }
  }
  return enc;
}

}  // namespace philora::tokenizer
