// Python's text operations on UTF-8 strings, for the Jinja subset: case mapping (simple Unicode
// mappings from the C.UTF-8 locale, plus ß -> SS), strip, split, title, capitalize.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace philora::tokenizer::jinja::text {

std::string upper(std::string_view s);
std::string lower(std::string_view s);
std::string capitalize(std::string_view s);   // str.capitalize()
std::string py_title(std::string_view s);     // str.title()
std::string jinja_title(std::string_view s);  // Jinja's |title filter
// str.strip / lstrip / rstrip; `chars` unset means whitespace.
std::string strip(std::string_view s, const std::optional<std::string>& chars, bool left,
                  bool right);
// str.split(sep, maxsplit); unset sep splits on whitespace runs.
std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep,
                               int64_t maxsplit);
// str.replace(old, new, count)
std::string replace(std::string_view s, std::string_view from, std::string_view to, int64_t count);

}  // namespace philora::tokenizer::jinja::text
