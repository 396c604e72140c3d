#include "tokenizer/jinja/lexer.h"

#include <algorithm>

#include "tokenizer/unicode.h"

namespace philora::tokenizer::jinja {

namespace {

// Jinja2 >= 3.0: "\r\n" and "\r" become "\n"; a final line break is dropped
// (keep_trailing_newline=False).
std::string normalize_source(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r') {
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
      out.push_back('\n');
    } else {
      out.push_back(s[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Python's \s (str patterns): Unicode whitespace.
bool is_space_at(std::string_view s, size_t i, size_t& next) {
  next = i;
  const uint32_t c = unicode::decode(s, next);
  return unicode::is_python_space(c);
}

std::string rstrip(std::string_view s) {
  size_t e = s.size();
  while (e > 0) {
    size_t b = e - 1;
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    size_t n;
    if (!is_space_at(s, b, n)) break;
    e = b;
  }
  return std::string(s.substr(0, e));
}

size_t skip_spaces(std::string_view s, size_t i) {
  size_t n;
  while (i < s.size() && is_space_at(s, i, n)) i = n;
  return i;
}

bool all_spaces(std::string_view s) { return skip_spaces(s, 0) == s.size(); }

// Decodes a string literal body the way Jinja2 does (Python's unicode-escape codec).
std::string unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out.push_back(s[i]);
      continue;
    }
    const char e = s[++i];
    auto hex = [&](size_t n) -> long {
      long v = 0;
      for (size_t k = 1; k <= n; ++k) {
        if (i + k >= s.size()) return -1;
        const char c = s[i + k];
        const int d = c >= '0' && c <= '9'   ? c - '0'
                      : c >= 'a' && c <= 'f' ? c - 'a' + 10
                      : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                             : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
      }
      return v;
    };
    switch (e) {
      case '\n':
        break;  // line continuation
      case '\\':
        out.push_back('\\');
        break;
      case '\'':
        out.push_back('\'');
        break;
      case '"':
        out.push_back('"');
        break;
      case 'a':
        out.push_back('\a');
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case 'n':
        out.push_back('\n');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'v':
        out.push_back('\v');
        break;
      case 'x':
      case 'u':
      case 'U': {
        const size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
        const long v = hex(n);
        if (v < 0 || v > 0x10FFFF) {
          out.push_back('\\');
          out.push_back(e);
        } else {
          unicode::append_utf8(out, static_cast<uint32_t>(v));
          i += n;
        }
        break;
      }
      default:
        if (e >= '0' && e <= '7') {
          uint32_t v = static_cast<uint32_t>(e - '0');
          for (int k = 0; k < 2 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7'; ++k)
            v = v * 8 + static_cast<uint32_t>(s[++i] - '0');
          unicode::append_utf8(out, v);
        } else {
          out.push_back('\\');
          out.push_back(e);
        }
    }
  }
  return out;
}

constexpr std::string_view kOperators[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/",
                                           "*",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                           ">",  "<",  "=",  ".",  ":",  "|",  ",", ";"};

}  // namespace

Expected<std::vector<Token>> lex(std::string_view raw) {
  const std::string src = normalize_source(raw);
  const std::string_view s = src;
  std::vector<Token> out;
  size_t pos = 0;
  int line = 1;
  bool line_starting = true;
  auto count_lines = [&](size_t from, size_t to) {
    line += static_cast<int>(std::count(s.begin() + static_cast<ptrdiff_t>(from),
                                        s.begin() + static_cast<ptrdiff_t>(to), '\n'));
  };

  while (pos < s.size()) {
    // Next tag opener.
    size_t open = std::string_view::npos;
    for (size_t p = s.find('{', pos); p != std::string_view::npos; p = s.find('{', p + 1)) {
      if (p + 1 < s.size() && (s[p + 1] == '{' || s[p + 1] == '%' || s[p + 1] == '#')) {
        open = p;
        break;
      }
    }
    if (open == std::string_view::npos) {
      out.push_back({Tok::kData, std::string(s.substr(pos)), line});
      break;
    }
    const char kind = s[open + 1];
    const char sign =
        open + 2 < s.size() && (s[open + 2] == '-' || s[open + 2] == '+') ? s[open + 2] : 0;
    std::string text(s.substr(pos, open - pos));
    if (sign == '-') {
      text = rstrip(text);
    } else if (sign != '+' && kind != '{') {
      // lstrip_blocks: drop the spaces before a block or comment tag that starts its line.
      const size_t l_pos = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
      if ((l_pos > 0 || line_starting) && l_pos < text.size() &&
          all_spaces(std::string_view(text).substr(l_pos))) {
        text.resize(l_pos);
      }
    }
    if (!text.empty()) out.push_back({Tok::kData, text, line});
    count_lines(pos, open);
    size_t p = open + 2 + (sign ? 1 : 0);

    if (kind == '#') {
      const size_t close = s.find("#}", p);
      if (close == std::string_view::npos)
        return Status::errorf("line {}: missing end of comment tag", line);
      count_lines(p, close + 2);
      size_t end = close + 2;
      const char csign =
          close > p && (s[close - 1] == '-' || s[close - 1] == '+') ? s[close - 1] : 0;
      if (csign == '-') {
        end = skip_spaces(s, end);
      } else if (csign != '+' && end < s.size() && s[end] == '\n') {
        ++end;  // trim_blocks
      }
      count_lines(close + 2, end);
      line_starting = end > 0 && s[end - 1] == '\n';
      pos = end;
      continue;
    }

    // {% raw %} ... {% endraw %}
    if (kind == '%') {
      size_t q = skip_spaces(s, p);
      if (s.substr(q, 3) == "raw") {
        size_t r = skip_spaces(s, q + 3);
        const bool minus = s.substr(r, 3) == "-%}";
        if (minus || s.substr(r, 2) == "%}") {
          size_t body = r + (minus ? 3 : 2);
          if (minus) body = skip_spaces(s, body);
          // Find {%[-+]? endraw [-+]?%}
          for (size_t e = s.find("{%", body); e != std::string_view::npos;
               e = s.find("{%", e + 2)) {
            size_t k = e + 2;
            const char esign = k < s.size() && (s[k] == '-' || s[k] == '+') ? s[k] : 0;
            if (esign) ++k;
            k = skip_spaces(s, k);
            if (s.substr(k, 6) != "endraw") continue;
            k = skip_spaces(s, k + 6);
            size_t end;
            char closing_sign = 0;
            if (s.substr(k, 3) == "-%}" || s.substr(k, 3) == "+%}") {
              closing_sign = s[k];
              end = k + 3;
            } else if (s.substr(k, 2) == "%}") {
              end = k + 2;
            } else {
              continue;
            }
            std::string raw_text(s.substr(body, e - body));
            if (esign == '-') {
              raw_text = rstrip(raw_text);
            } else if (esign != '+') {
              const size_t l_pos =
                  raw_text.rfind('\n') == std::string::npos ? 0 : raw_text.rfind('\n') + 1;
              if (l_pos > 0 && l_pos < raw_text.size() &&
                  all_spaces(std::string_view(raw_text).substr(l_pos))) {
                raw_text.resize(l_pos);
              }
            }
            if (!raw_text.empty()) out.push_back({Tok::kData, raw_text, line});
            if (closing_sign == '-') {
              end = skip_spaces(s, end);
            } else if (closing_sign != '+' && end < s.size() && s[end] == '\n') {
              ++end;
            }
            count_lines(p, end);
            line_starting = s[end - 1] == '\n';
            pos = end;
            goto next_tag;
          }
          return Status::errorf("line {}: missing end of raw directive", line);
        }
      }
    }

    out.push_back({kind == '{' ? Tok::kVarBegin : Tok::kBlockBegin, "", line});
    {
      std::vector<char> balance;
      while (true) {
        const size_t before = p;
        p = skip_spaces(s, p);
        count_lines(before, p);
        if (p >= s.size())
          return Status::errorf("line {}: unexpected end of template inside a tag", line);
        // End of the tag (only when brackets balance).
        if (balance.empty()) {
          if (kind == '{') {
            if (s.substr(p, 3) == "-}}") {
              size_t end = skip_spaces(s, p + 3);
              count_lines(p, end);
              out.push_back({Tok::kVarEnd, "", line});
              line_starting = s[end - 1] == '\n';
              pos = end;
              break;
            }
            if (s.substr(p, 2) == "}}") {
              out.push_back({Tok::kVarEnd, "", line});
              line_starting = false;
              pos = p + 2;
              break;
            }
          } else {
            size_t end = 0;
            if (s.substr(p, 3) == "+%}") {
              end = p + 3;
            } else if (s.substr(p, 3) == "-%}") {
              end = skip_spaces(s, p + 3);
            } else if (s.substr(p, 2) == "%}") {
              end = p + 2;
              if (end < s.size() && s[end] == '\n') ++end;  // trim_blocks
            }
            if (end) {
              count_lines(p, end);
              out.push_back({Tok::kBlockEnd, "", line});
              line_starting = s[end - 1] == '\n';
              pos = end;
              break;
            }
          }
        }
        const char c = s[p];
        if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
          size_t e = p + 1;
          while (e < s.size() && (std::isalnum(static_cast<unsigned char>(s[e])) || s[e] == '_'))
            ++e;
          out.push_back({Tok::kName, std::string(s.substr(p, e - p)), line});
          p = e;
          continue;
        }
        if (std::isdigit(static_cast<unsigned char>(c))) {
          size_t e = p;
          while (e < s.size() && (std::isdigit(static_cast<unsigned char>(s[e])) || s[e] == '_'))
            ++e;
          bool is_float = false;
          if (e + 1 < s.size() && s[e] == '.' &&
              std::isdigit(static_cast<unsigned char>(s[e + 1]))) {
            is_float = true;
            ++e;
            while (e < s.size() && (std::isdigit(static_cast<unsigned char>(s[e])) || s[e] == '_'))
              ++e;
          }
          if (e < s.size() && (s[e] == 'e' || s[e] == 'E')) {
            size_t f = e + 1;
            if (f < s.size() && (s[f] == '+' || s[f] == '-')) ++f;
            if (f < s.size() && std::isdigit(static_cast<unsigned char>(s[f]))) {
              is_float = true;
              e = f;
              while (e < s.size() && std::isdigit(static_cast<unsigned char>(s[e]))) ++e;
            }
          }
          std::string num(s.substr(p, e - p));
          num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
          out.push_back({is_float ? Tok::kFloat : Tok::kInteger, num, line});
          p = e;
          continue;
        }
        if (c == '\'' || c == '"') {
          size_t e = p + 1;
          while (e < s.size() && s[e] != c) e += s[e] == '\\' ? 2 : 1;
          if (e >= s.size()) return Status::errorf("line {}: unterminated string", line);
          out.push_back({Tok::kString, unescape(s.substr(p + 1, e - p - 1)), line});
          count_lines(p, e);
          p = e + 1;
          continue;
        }
        bool matched = false;
        for (std::string_view op : kOperators) {
          if (s.substr(p, op.size()) == op) {
            if (op == "(" || op == "[" || op == "{")
              balance.push_back(op[0] == '(' ? ')' : op[0] == '[' ? ']' : '}');
            if (op == ")" || op == "]" || op == "}") {
              if (balance.empty() || balance.back() != op[0])
                return Status::errorf("line {}: unexpected '{}'", line, op);
              balance.pop_back();
            }
            out.push_back({Tok::kOperator, std::string(op), line});
            p += op.size();
            matched = true;
            break;
          }
        }
        if (!matched)
          return Status::errorf("line {}: unexpected character {:?}", line, std::string(1, c));
      }
    }
  next_tag:;
  }
  out.push_back({Tok::kEof, "", line});
  return out;
}

}  // namespace philora::tokenizer::jinja
