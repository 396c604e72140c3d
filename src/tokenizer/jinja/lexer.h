// Lexer of the Jinja subset, with the whitespace rules of the environment HF renders chat
// templates in (trim_blocks=True, lstrip_blocks=True) and Jinja2's defaults otherwise: newlines
// of the source normalized to "\n", one trailing newline dropped, `-` and `+` modifiers on tags.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace philora::tokenizer::jinja {

enum class Tok {
  kData,        // template text (already whitespace-processed)
  kVarBegin,    // {{
  kVarEnd,      // }}
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kName,
  kString,  // value: the decoded string
  kInteger,
  kFloat,
  kOperator,  // value: the operator text
  kEof,
};

struct Token {
  Tok type;
  std::string value;
  int line = 1;
};

// Tokenizes a template; errors name the line.
Expected<std::vector<Token>> lex(std::string_view source);

}  // namespace philora::tokenizer::jinja
