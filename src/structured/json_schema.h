// JSON Schema -> Grammar, for the subset OpenAI's strict mode accepts and a little more (the
// full list, and what each keyword enforces, is in docs/STRUCTURED.md).
//
// Objects list their properties in schema order (as XGrammar and vLLM do): required ones
// always, optional ones may be left out; no other properties (strict mode:
// additionalProperties false is assumed when properties are given). Arrays honour
// minItems / maxItems / prefixItems; strings minLength / maxLength / pattern / format
// (date, time, date-time, email, uuid, ipv4); integers and numbers exact bounds (numbers under
// bounds are written without exponent and with at most 6 fraction digits). enum, const,
// anyOf (oneOf as anyOf), allOf of one schema, $ref into the document ($defs, definitions,
// recursion allowed), type arrays, nullable. Anything else is an error naming the keyword.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/status.h"
#include "structured/grammar.h"

namespace philora::structured {

struct JsonOptions {
  // Whitespace policy: between any two JSON tokens (and before and after the value) at most
  // this many of JSON's whitespace characters [ \t\n\r]; 0 is compact JSON.
  int max_whitespace = 8;
  std::string key() const { return "ws" + std::to_string(max_whitespace); }
};

// The grammar of the values `schema` (JSON text) admits.
Expected<Grammar> json_schema_grammar(std::string_view schema, const JsonOptions& opts = {});
// The grammar of any JSON object (OpenAI's response_format json_object).
Grammar json_object_grammar(const JsonOptions& opts = {});

// Decimal integers n with lo <= n <= hi (either side open when absent), as JSON writes them
// (no leading zeros, no "-0"); exposed for tests.
Expr integer_range_expr(std::optional<int64_t> lo, std::optional<int64_t> hi);

// JSON numbers x with lo (<, <=) x (<, <=) hi written without exponent and with at most
// `max_fraction_digits` fraction digits. Bounds are decimal strings ("-12.5", "3"); an empty
// optional is an open side. Exposed for tests.
struct DecimalBound {
  std::string value;    // "-12.5"
  bool strict = false;  // exclusive
};
Expected<Expr> number_range_expr(const std::optional<DecimalBound>& lo,
                                 const std::optional<DecimalBound>& hi, int max_fraction_digits);

}  // namespace philora::structured
