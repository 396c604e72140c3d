// Arbitrary text through the embedded model's tokenizer (byte-level BPE):
// every id is in the vocabulary, and decoding the ids gives the text back
// whenever it is valid UTF-8 and names no added token (those may strip
// whitespace around them, as HF's do). encode_with_offsets gives the same ids,
// each with a span inside the text (in code points of its UTF-8-repaired form).
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

const philora::tokenizer::Tokenizer& tokenizer() {
  static const std::unique_ptr<philora::tokenizer::Tokenizer> tok = [] {
    auto t = philora::tokenizer::Tokenizer::from_file(PHILORA_SOURCE_DIR
                                                      "/models/philora-tiny/tokenizer.json");
    if (!t.ok()) std::abort();
    return std::move(*t);
  }();
  return *tok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto& tok = tokenizer();
  const auto ids = tok.encode(text, false);
  for (int32_t id : ids)
    if (id < 0 || size_t(id) >= tok.vocab_size()) std::abort();
  const auto enc = tok.encode_with_offsets(text, false);
  if (enc.ids != ids || enc.offsets.size() != ids.size()) std::abort();
  const size_t chars = philora::tokenizer::unicode::count_chars(
      philora::tokenizer::unicode::to_valid_lossy(text));
  for (const auto& o : enc.offsets)
    if (o.begin > o.end || o.end > chars) std::abort();
  const std::string back = tok.decode(ids, false);
  if (philora::tokenizer::unicode::is_valid(text) && text.find("<|") == std::string_view::npos &&
      back != text)
    std::abort();
  return 0;
}
