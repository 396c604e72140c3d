#include "tokenizer/incremental_detokenizer.h"

#include "tokenizer/tokenizer.h"

namespace philora::tokenizer {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens,
                                               std::span<const int32_t> context_ids)
    : tok_(tokenizer),
      skip_special_(skip_special_tokens),
      ids_(context_ids.begin(), context_ids.end()) {
  context_ = ids_.size();
  prefix_ = 0;
  read_ = ids_.size();
}

std::string IncrementalDetokenizer::decode_range(size_t begin, size_t end) const {
  return tok_.decode(std::span<const int32_t>(ids_).subspan(begin, end - begin), skip_special_);
}

std::string IncrementalDetokenizer::push(int32_t id) {
  ids_.push_back(id);
  const std::string before = decode_range(prefix_, read_);
  const std::string now = decode_range(prefix_, ids_.size());
  // Wait while the text ends in an incomplete character (decoders render it as U+FFFD).
  if (now.size() <= before.size() || now.ends_with(kReplacement)) return {};
  size_t common = before.size();
  if (now.compare(0, before.size(), before) != 0) {
    // Only ill-formed byte runs rewrite earlier text; emit from where the two texts part.
    common = 0;
    while (common < before.size() && now[common] == before[common]) ++common;
    while (common > 0 && (static_cast<unsigned char>(now[common]) & 0xC0) == 0x80) --common;
  }
  prefix_ = read_;
  read_ = ids_.size();
  return now.substr(common);
}

std::string IncrementalDetokenizer::flush() {
  const std::string before = decode_range(prefix_, read_);
  const std::string now = decode_range(prefix_, ids_.size());
  prefix_ = read_ = ids_.size();
  size_t common = 0;
  while (common < before.size() && common < now.size() && now[common] == before[common]) ++common;
  while (common > 0 && common < now.size() &&
         (static_cast<unsigned char>(now[common]) & 0xC0) == 0x80)
    --common;
  return now.substr(common);
}

}  // namespace philora::tokenizer
