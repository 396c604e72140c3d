// UTF-8 and the few Unicode properties the tokenizer needs (whitespace, the GPT-2 byte alphabet).
// Property tests that need the full Unicode database go through PCRE2 (regex.h).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace philora::tokenizer::unicode {

inline constexpr uint32_t kReplacementChar = 0xFFFD;

// Number of bytes of the UTF-8 sequence that starts with `lead` (1 for a stray byte).
inline size_t sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}

// Decodes the code point at s[i] and advances i. `s` must be valid UTF-8.
inline uint32_t decode(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  const size_t n = sequence_length(b0);
  uint32_t cp = n == 2 ? (b0 & 0x1F) : n == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp);
inline std::string to_utf8(uint32_t cp) {
  std::string s;
  append_utf8(s, cp);
  return s;
}

// Number of code points in valid UTF-8.
size_t count_chars(std::string_view s);

// Length of the longest prefix of `s` that is well-formed UTF-8.
size_t valid_prefix_length(std::string_view s);
inline bool is_valid(std::string_view s) { return valid_prefix_length(s) == s.size(); }

// Replaces every maximal ill-formed subsequence by U+FFFD (Unicode 15 §3.9 "substitution of
// maximal subparts": what Rust's String::from_utf8_lossy and Python's errors="replace" do).
std::string to_valid_lossy(std::string_view s);

// The Unicode White_Space property (what `\s` means in Rust's regex and in Oniguruma).
bool is_white_space(uint32_t cp);

// Python's str.isspace() (used by Jinja's `trim` and str.strip()).
bool is_python_space(uint32_t cp);

// GPT-2's reversible byte -> printable character map ("bytes_to_unicode"), as UTF-8 strings.
const std::array<std::string, 256>& byte_level_alphabet();
// Inverse map: code point -> byte, or -1 when the code point is not in the alphabet.
int byte_level_byte(uint32_t cp);

}  // namespace philora::tokenizer::unicode
