// Integer and decimal ranges (src/structured/number_ranges.cpp) against exact arithmetic on
// every number of a grid.
#include <gtest/gtest.h>

#include <random>

#include "structured/fsm.h"
#include "structured/json_schema.h"

namespace philora::structured {
namespace {

// Canonical JSON integer text (no "-0", no leading zeros).
bool canonical_int(const std::string& s) {
  size_t i = s[0] == '-' ? 1 : 0;
  if (i == s.size()) return false;
  for (size_t k = i; k < s.size(); ++k) {
    if (s[k] < '0' || s[k] > '9') return false;
  }
  if (s[i] == '0' && s.size() > i + 1) return false;
  return s != "-0";
}

TEST(StructuredRanges, IntegerRangesAreExact) {
  const std::vector<std::optional<int64_t>> bounds = {std::nullopt, -1000, -101, -100, -99, -10, -9, -1, 0, 1,
                                                      7, 9, 10, 11, 99, 100, 101, 199, 1000, 1099};
  std::vector<std::string> strings;
  for (int64_t n = -1200; n <= 1200; ++n) strings.push_back(std::to_string(n));
  for (const char* s : {"-0", "00", "01", "-01", "+1", "", "-", "1.0", "0x1", "10000", "-10000", "123456789012"}) {
    strings.push_back(s);
  }
  int checked = 0;
  for (const auto& lo : bounds) {
    for (const auto& hi : bounds) {
      if (lo && hi && *lo > *hi) continue;
      auto dfa = compile_expr(integer_range_expr(lo, hi), {});
      ASSERT_TRUE(dfa.ok()) << dfa.status().message();
      for (const std::string& s : strings) {
        bool expect = !s.empty() && canonical_int(s);
        if (expect) {
          const long long v = std::stoll(s);
          expect = (!lo || v >= *lo) && (!hi || v <= *hi);
        }
        ASSERT_EQ(dfa->matches(s), expect) << "[" << (lo ? std::to_string(*lo) : "-inf") << ", "
                                           << (hi ? std::to_string(*hi) : "inf") << "] " << s;
        ++checked;
      }
    }
  }
  // Extremes of int64.
  auto big = compile_expr(integer_range_expr(INT64_MIN, INT64_MAX), {});
  ASSERT_TRUE(big.ok());
  EXPECT_TRUE(big->matches("-9223372036854775808"));
  EXPECT_FALSE(big->matches("-9223372036854775809"));
  EXPECT_TRUE(big->matches("9223372036854775807"));
  EXPECT_FALSE(big->matches("9223372036854775808"));
  EXPECT_GT(checked, 100000);
}

// value * 10^8 of a plain decimal with at most 8 fraction digits (the grid has no more).
std::optional<__int128> scaled(const std::string& s) {
  size_t i = 0;
  bool neg = false;
  if (i < s.size() && s[i] == '-') {
    neg = true;
    ++i;
  }
  const size_t ib = i;
  while (i < s.size() && isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == ib) return std::nullopt;
  if (s[ib] == '0' && i - ib > 1) return std::nullopt;  // leading zero: not JSON
  __int128 v = 0;
  for (size_t k = ib; k < i; ++k) v = v * 10 + (s[k] - '0');
  int frac = 0;
  if (i < s.size() && s[i] == '.') {
    ++i;
    const size_t fb = i;
    while (i < s.size() && isdigit(static_cast<unsigned char>(s[i]))) {
      if (frac == 8) return std::nullopt;
      v = v * 10 + (s[i] - '0');
      ++frac;
      ++i;
    }
    if (i == fb) return std::nullopt;
  }
  if (i != s.size()) return std::nullopt;
  for (; frac < 8; ++frac) v *= 10;
  return neg ? -v : v;
}

int fraction_digits(const std::string& s) {
  const size_t dot = s.find('.');
  return dot == std::string::npos ? 0 : static_cast<int>(s.size() - dot - 1);
}

TEST(StructuredRanges, DecimalRangesAreExact) {
  const int kFrac = 3;
  const std::vector<std::string> values = {"-12.5", "-3", "-1.25", "-0.5", "-0.05", "0", "0.001", "0.25",
                                           "1", "1.5", "2.75", "10", "10.125"};
  // The grid: integer parts -13..13, fraction parts of 0 to 4 digits, both signs.
  std::vector<std::string> strings;
  const std::vector<std::string> fracs = {"", ".0", ".00", ".5", ".25", ".05", ".125", ".124", ".126", ".75",
                                          ".001", ".0001", ".9", ".999", ".9999", ".1", ".10", ".3", ".2501", ".499"};
  for (int ip = 0; ip <= 13; ++ip) {
    for (const auto& f : fracs) {
      strings.push_back(std::to_string(ip) + f);
      strings.push_back("-" + std::to_string(ip) + f);
    }
  }
  for (const char* s : {"", "-", ".5", "1.", "01", "-01.5", "1e2", "+1", "00.5"}) strings.push_back(s);
  int checked = 0, accepted = 0;
  for (int li = -1; li < static_cast<int>(values.size()); ++li) {
    for (int hi_i = -1; hi_i < static_cast<int>(values.size()); ++hi_i) {
      for (int strict = 0; strict < 4; ++strict) {
        std::optional<DecimalBound> lo, hi;
        if (li >= 0) lo = DecimalBound{values[li], (strict & 1) != 0};
        if (hi_i >= 0) hi = DecimalBound{values[hi_i], (strict & 2) != 0};
        auto e = number_range_expr(lo, hi, kFrac);
        ASSERT_TRUE(e.ok()) << e.status().message();
        auto dfa = compile_expr(*e, {});
        ASSERT_TRUE(dfa.ok()) << dfa.status().message();
        for (const std::string& s : strings) {
          bool expect = false;
          // Negative zero ("-0", "-0.00") is never written.
          if (auto v = scaled(s); v && fraction_digits(s) <= kFrac && !(s[0] == '-' && *v == 0)) {
            expect = true;
            if (lo) {
              const __int128 b = *scaled(lo->value);
              expect = expect && (lo->strict ? *v > b : *v >= b);
            }
            if (hi) {
              const __int128 b = *scaled(hi->value);
              expect = expect && (hi->strict ? *v < b : *v <= b);
            }
          }
          ASSERT_EQ(dfa->matches(s), expect)
              << (lo ? (lo->strict ? "(" : "[") + lo->value : std::string("(-inf")) << ", "
              << (hi ? hi->value + (hi->strict ? ")" : "]") : std::string("inf)")) << " " << s;
          ++checked;
          accepted += expect;
        }
      }
    }
  }
  EXPECT_GT(accepted, checked / 10);  // both outcomes are exercised
}

}  // namespace
}  // namespace philora::structured
