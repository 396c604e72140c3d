#include "tokenizer/jinja/text.h"

#include <locale.h>
#include <clocale>
#include <cwctype>

#include "tokenizer/jinja/value.h"
#include "tokenizer/unicode.h"

namespace philora::tokenizer::jinja::text {

namespace {

// The C.UTF-8 locale for Unicode case mapping (immutable once created).
locale_t utf8_locale() {
  static const locale_t loc = [] {
    locale_t l = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(0));
    if (!l) l = newlocale(LC_CTYPE_MASK, "C.utf8", static_cast<locale_t>(0));
    return l;
  }();
  return loc;
}

char32_t up(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
  locale_t l = utf8_locale();
  return l ? static_cast<char32_t>(towupper_l(static_cast<wint_t>(c), l)) : c;
}

char32_t down(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  locale_t l = utf8_locale();
  return l ? static_cast<char32_t>(towlower_l(static_cast<wint_t>(c), l)) : c;
}

bool cased(char32_t c) { return up(c) != c || down(c) != c; }

void append_upper(std::u32string& out, char32_t c) {
  if (c == 0xDF) {  // ß: full mapping
    out += U"SS";
    return;
  }
  out.push_back(up(c));
}

}  // namespace

std::string upper(std::string_view s) {
  std::u32string out;
  for (char32_t c : to_u32(s)) append_upper(out, c);
  return from_u32(out);
}

std::string lower(std::string_view s) {
  std::u32string u = to_u32(s);
  for (char32_t& c : u) c = down(c);
  return from_u32(u);
}

std::string capitalize(std::string_view s) {
  std::u32string u = to_u32(s);
  std::u32string out;
  for (size_t i = 0; i < u.size(); ++i) {
    if (i == 0) {
      append_upper(out, u[i]);
    } else {
      out.push_back(down(u[i]));
    }
  }
  return from_u32(out);
}

std::string py_title(std::string_view s) {
  std::u32string out;
  bool prev_cased = false;
  for (char32_t c : to_u32(s)) {
    if (prev_cased) {
      out.push_back(down(c));
    } else {
      append_upper(out, c);
    }
    prev_cased = cased(c);
  }
  return from_u32(out);
}

std::string jinja_title(std::string_view s) {
  // Words start after runs of [-\s({\[<]; each word: first char upper, rest lower.
  std::u32string u = to_u32(s);
  std::u32string out;
  bool word_start = true;
  for (char32_t c : u) {
    const bool sep =
        c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || unicode::is_python_space(c);
    if (sep) {
      out.push_back(c);
      word_start = true;
    } else if (word_start) {
      append_upper(out, c);
      word_start = false;
    } else {
      out.push_back(down(c));
    }
  }
  return from_u32(out);
}

std::string strip(std::string_view s, const std::optional<std::string>& chars, bool left,
                  bool right) {
  std::u32string u = to_u32(s);
  std::u32string set;
  if (chars) set = to_u32(*chars);
  auto strippable = [&](char32_t c) {
    return chars ? set.find(c) != std::u32string::npos : unicode::is_python_space(c);
  };
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && strippable(u[b])) ++b;
  if (right)
    while (e > b && strippable(u[e - 1])) --e;
  return from_u32(std::u32string_view(u).substr(b, e - b));
}

std::vector<std::string> split(std::string_view s, const std::optional<std::string>& sep,
                               int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep) {
    size_t pos = 0;
    while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
      const size_t f = s.find(*sep, pos);
      if (f == std::string_view::npos) break;
      out.emplace_back(s.substr(pos, f - pos));
      pos = f + sep->size();
    }
    out.emplace_back(s.substr(pos));
    return out;
  }
  std::u32string u = to_u32(s);
  size_t i = 0;
  while (i < u.size()) {
    while (i < u.size() && unicode::is_python_space(u[i])) ++i;
    if (i == u.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      size_t e = u.size();
      while (e > i && unicode::is_python_space(u[e - 1])) --e;
      out.push_back(from_u32(std::u32string_view(u).substr(i, e - i)));
      break;
    }
    size_t j = i;
    while (j < u.size() && !unicode::is_python_space(u[j])) ++j;
    out.push_back(from_u32(std::u32string_view(u).substr(i, j - i)));
    i = j;
  }
  return out;
}

std::string replace(std::string_view s, std::string_view from, std::string_view to, int64_t count) {
  std::string out;
  if (from.empty()) {
    // Python inserts `to` between characters (and at both ends).
    std::u32string u = to_u32(s);
    int64_t n = 0;
    for (size_t i = 0; i <= u.size(); ++i) {
      if (count < 0 || n < count) {
        out += to;
        ++n;
      }
      if (i < u.size()) out += from_u32(std::u32string_view(u).substr(i, 1));
    }
    return out;
  }
  size_t pos = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    const size_t f = s.find(from, pos);
    if (f == std::string_view::npos) break;
    out.append(s.substr(pos, f - pos));
    out.append(to);
    pos = f + from.size();
    ++n;
  }
  out.append(s.substr(pos));
  return out;
}

}  // namespace philora::tokenizer::jinja::text
