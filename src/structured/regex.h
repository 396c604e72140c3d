// Regular expressions in the ECMA-262 dialect that JSON Schema names, with the `u` flag's
// syntax and semantics (what ajv uses): characters are code points, matched as UTF-8 bytes.
//
// Supported: literals and escapes (\t \n \v \f \r \0 \cX \xHH \uHHHH, surrogate pairs,
// \u{H...}, escaped syntax characters and /), classes [...] and [^...] with ranges and
// \d \D \w \W \s \S (ECMA's sets; \b in a class is backspace), ., alternation, groups
// ((...), (?:...), (?<name>...) alike), quantifiers * + ? {m} {m,} {m,n} and their lazy forms
// (same language), ^ at the start and $ at the end of the pattern or of a top-level
// alternative. Refused with an error naming them: backreferences (\1, \k<name>), lookahead
// and lookbehind, word boundaries (\b \B), Unicode property escapes (\p \P), anchors anywhere
// else.
#pragma once

#include <string_view>

#include "core/status.h"
#include "structured/expr.h"
#include "structured/fsm.h"

namespace philora::structured {

// The parsed pattern, anchors still in it.
Expected<Expr> parse_regex(std::string_view pattern);

enum class RegexMatch {
  kFull,    // the whole text matches (vLLM's guided_regex); ^ and $ at the ends change nothing
  kSearch,  // RegExp.test: a match anywhere unless anchored (JSON Schema's "pattern")
};

// The pattern as an expression without anchors for `mode`; every class is restricted to
// `allowed` (code points a JSON string may hold unescaped, for example).
Expected<Expr> regex_expr(std::string_view pattern, RegexMatch mode,
                          const CodePointSet& allowed = {{0, kMaxCodePoint}});

// The pattern's DFA over bytes.
Expected<Dfa> compile_regex(std::string_view pattern, RegexMatch mode = RegexMatch::kFull,
                            const FsmLimits& limits = {});

}  // namespace philora::structured
