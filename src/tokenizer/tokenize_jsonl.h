// The line format of `philora tokenize` (DESIGN.md): input {"id": ..., "text": "..."}, output
// {"id": ..., "ids": [...], "decoded": "..."}. `decoded` keeps special tokens; special tokens are
// added to `ids` only with add_special_tokens.
#pragma once

#include <string>
#include <string_view>

#include "core/status.h"

namespace philora::tokenizer {

class Tokenizer;

// Tokenizes one input line and returns the output line (without a newline). The "id" is copied
// as it is (any JSON value). A line that is not an object with a string "text" is an error
// naming the problem.
Expected<std::string> tokenize_json_line(const Tokenizer& tokenizer, std::string_view line,
                                         bool add_special_tokens);

}  // namespace philora::tokenizer
