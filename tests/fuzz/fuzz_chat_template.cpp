// Arbitrary chat-template source: ChatTemplate::from_string either refuses it
// with a message or gives a template that renders a fixed conversation, or
// refuses to with a message, without crashing.
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const nlohmann::ordered_json messages = nlohmann::ordered_json::parse(R"([
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What does \"zeal\" mean? \u00fc <|end|>"},
    {"role": "assistant", "content": "Eagerness."},
    {"role": "user", "content": ""}
  ])");
  auto t = philora::tokenizer::ChatTemplate::from_string(
      std::string(reinterpret_cast<const char*>(data), size));
  if (!t.ok()) {
    if (t.status().message().empty()) std::abort();
    return 0;
  }
  for (bool generation_prompt : {false, true}) {
    auto out = t->render(messages, generation_prompt, "<s>", "<|endoftext|>");
    if (!out.ok() && out.status().message().empty()) std::abort();
  }
  return 0;
}
