// Parser of the Jinja subset chat templates use:
//   statements: if / elif / else, for (with tuple targets, loop filters, else, loop.*), set (also
//     ns.attr and block set), macro, filter blocks, break / continue, raw, comments, generation;
//   expressions: literals, lists, tuples, dicts, names, .attr, [index], slices, calls with keyword
//     arguments, filters, `is` tests, not / and / or, comparisons, in / not in, + - * / // % **,
//     ~, unary minus, `a if b else c`.
// Anything else (extends, include, import, call blocks, ...) is a parse error naming it.
#pragma once

#include <string_view>

#include "core/status.h"
#include "tokenizer/jinja/ast.h"

namespace philora::tokenizer::jinja {

Expected<Body> parse(std::string_view source);

}  // namespace philora::tokenizer::jinja
