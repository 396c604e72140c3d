// A tokenizer.json of arbitrary text: Tokenizer::from_json_string either
// refuses it with a message or gives a tokenizer that encodes and decodes a
// fixed text without crashing, and whose ids are all in its vocabulary (and
// encode_with_offsets gives the same ids, each with a span inside the text).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto tok = philora::tokenizer::Tokenizer::from_json_string(text);
  if (!tok.ok()) {
    if (tok.status().message().empty()) std::abort();
    return 0;
  }
  for (std::string_view s : {std::string_view("Hello, world! <|end|> \xc3\xbcnicode\n\t 12345"),
                             std::string_view("\xff\xfe invalid utf-8 \xe2\x82")}) {
    for (bool special : {false, true}) {
      const auto ids = (*tok)->encode(s, special);
      for (int32_t id : ids)
        if (id < 0) std::abort();
      const auto enc = (*tok)->encode_with_offsets(s, special);
      if (enc.ids != ids || enc.offsets.size() != ids.size()) std::abort();
      for (const auto& o : enc.offsets)
        if (o.begin > o.end || o.end > s.size()) std::abort();
      (void)(*tok)->decode(ids, false);
      (void)(*tok)->decode(ids, true);
    }
  }
  return 0;
}
