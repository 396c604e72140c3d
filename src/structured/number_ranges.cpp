// Exact ranges of JSON integers and decimals as expressions, digit by digit (the way one
// compares two decimal strings: by length, then by the first differing digit).
#include <string>

#include "structured/json_schema.h"

namespace philora::structured {

namespace {

Expr digit() { return Expr::cls({{'0', '9'}}); }
Expr digit_range(int lo, int hi) {
  return Expr::cls({{static_cast<uint32_t>('0' + lo), static_cast<uint32_t>('0' + hi)}});
}
Expr nothing() { return Expr::alt({}); }

// Strings of a.size() digits s with a <= s <= b (same length, a <= b).
Expr digits_between(const std::string& a, const std::string& b) {
  if (a.empty()) return Expr::empty();
  const size_t rest = a.size() - 1;
  if (a.find_first_not_of('0') == std::string::npos && b.find_first_not_of('9') == std::string::npos) {
    return Expr::repeat(digit(), static_cast<int>(a.size()), static_cast<int>(a.size()));  // keeps it linear
  }
  if (a[0] == b[0]) return Expr::seq({Expr::ch(static_cast<uint32_t>(a[0])), digits_between(a.substr(1), b.substr(1))});
  std::vector<Expr> alts;
  alts.push_back(Expr::seq({Expr::ch(static_cast<uint32_t>(a[0])), digits_between(a.substr(1), std::string(rest, '9'))}));
  if (a[0] + 1 <= b[0] - 1) {
    alts.push_back(Expr::seq({digit_range(a[0] - '0' + 1, b[0] - '0' - 1),
                              Expr::repeat(digit(), static_cast<int>(rest), static_cast<int>(rest))}));
  }
  alts.push_back(Expr::seq({Expr::ch(static_cast<uint32_t>(b[0])), digits_between(std::string(rest, '0'), b.substr(1))}));
  return Expr::alt(std::move(alts));
}

// Unsigned integers lo <= n <= hi (hi open unless `bounded`), no leading zeros.
Expr uint_range(uint64_t lo, bool bounded, uint64_t hi) {
  if (bounded && hi < lo) return nothing();
  const std::string ls = std::to_string(lo);
  const size_t lmax = bounded ? std::to_string(hi).size() : ls.size();
  std::vector<Expr> alts;
  for (size_t len = ls.size(); len <= lmax; ++len) {
    const std::string low = len == ls.size() ? ls : (len == 1 ? "0" : "1" + std::string(len - 1, '0'));
    const std::string high = bounded && len == lmax ? std::to_string(hi) : std::string(len, '9');
    alts.push_back(digits_between(low, high));
  }
  if (!bounded) alts.push_back(Expr::seq({digit_range(1, 9), Expr::repeat(digit(), static_cast<int>(lmax), -1)}));
  return alts.size() == 1 ? std::move(alts[0]) : Expr::alt(std::move(alts));
}

uint64_t magnitude(int64_t v) {
  return v < 0 ? static_cast<uint64_t>(-(v + 1)) + 1 : static_cast<uint64_t>(v);
}

// A decimal bound split into its magnitude's integer and fraction digits.
struct Decimal {
  bool negative = false;  // strictly below zero
  uint64_t int_part = 0;
  std::string frac;       // fraction digits, no trailing zeros
  bool strict = false;
};

Expected<Decimal> parse_decimal(const DecimalBound& b) {
  const std::string& s = b.value;
  size_t i = 0;
  bool minus = false;
  if (i < s.size() && s[i] == '-') {
    minus = true;
    ++i;
  }
  const size_t int_begin = i;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  std::string int_digits = s.substr(int_begin, i - int_begin);
  std::string frac;
  if (i < s.size() && s[i] == '.') {
    ++i;
    const size_t f = i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    frac = s.substr(f, i - f);
    if (frac.empty()) return Status::errorf("bound {:?} is not a plain decimal", s);
  }
  if (int_digits.empty() || i != s.size()) return Status::errorf("bound {:?} is not a plain decimal", s);
  while (!frac.empty() && frac.back() == '0') frac.pop_back();
  while (int_digits.size() > 1 && int_digits[0] == '0') int_digits.erase(0, 1);
  if (int_digits.size() > 18) return Status::errorf("bound {:?} is too large", s);
  Decimal d;
  d.int_part = std::stoull(int_digits);
  d.frac = frac;
  d.negative = minus && (d.int_part != 0 || !frac.empty());
  d.strict = b.strict;
  return d;
}

// A bound on the rest of a fraction's digits: 0.G compared with 0.`digits`.
struct FracBound {
  std::string digits;
  bool strict = false;
};

// Ending the fraction here (the rest all zeros) satisfies both bounds.
bool zero_ok(const std::optional<FracBound>& lo, const std::optional<FracBound>& hi) {
  const bool lo_ok = !lo || (lo->digits.empty() && !lo->strict);
  const bool hi_ok = !hi || !hi->digits.empty() || !hi->strict;
  return lo_ok && hi_ok;
}

// Digit strings G (at most `room` digits) with lo (<, <=) 0.G (<, <=) hi.
Expr frac_digits(const std::optional<FracBound>& lo, const std::optional<FracBound>& hi, int room,
                 bool allow_empty) {
  std::vector<Expr> alts;
  if (allow_empty && zero_ok(lo, hi)) alts.push_back(Expr::empty());
  if (room > 0) {
    if (!lo && !hi) {
      alts.push_back(Expr::repeat(digit(), 1, room));
    } else {
      const int dl = lo ? (lo->digits.empty() ? 0 : lo->digits[0] - '0') : 0;
      const int dh = hi ? (hi->digits.empty() ? 0 : hi->digits[0] - '0') : 9;
      auto rest = [](const std::optional<FracBound>& b) {
        FracBound r = *b;
        if (!r.digits.empty()) r.digits.erase(0, 1);
        return r;
      };
      if (dl == dh) {
        alts.push_back(Expr::seq({digit_range(dl, dl),
                                  frac_digits(lo ? std::optional(rest(lo)) : std::nullopt,
                                              hi ? std::optional(rest(hi)) : std::nullopt, room - 1, true)}));
      } else if (dl < dh) {
        alts.push_back(Expr::seq({digit_range(dl, dl),
                                  frac_digits(lo ? std::optional(rest(lo)) : std::nullopt, std::nullopt, room - 1, true)}));
        if (dl + 1 <= dh - 1) {
          alts.push_back(Expr::seq({digit_range(dl + 1, dh - 1), frac_digits(std::nullopt, std::nullopt, room - 1, true)}));
        }
        alts.push_back(Expr::seq({digit_range(dh, dh),
                                  frac_digits(std::nullopt, hi ? std::optional(rest(hi)) : std::nullopt, room - 1, true)}));
      }
    }
  }
  return alts.size() == 1 ? std::move(alts[0]) : Expr::alt(std::move(alts));
}

// The optional fraction part ("" or "." digits) of a number whose integer part is fixed.
Expr frac_part(const std::optional<FracBound>& lo, const std::optional<FracBound>& hi, int room) {
  std::vector<Expr> alts;
  if (zero_ok(lo, hi)) alts.push_back(Expr::empty());
  if (room > 0) alts.push_back(Expr::seq({Expr::lit("."), frac_digits(lo, hi, room, false)}));
  return Expr::alt(std::move(alts));
}

// Magnitudes m (no sign) with a (<, <=) m (<, <=) b.
Expr magnitude_range(const std::optional<Decimal>& a, const std::optional<Decimal>& b, int room) {
  std::vector<Expr> alts;
  const Expr any_frac = frac_part(std::nullopt, std::nullopt, room);
  // Integer parts strictly between the bounds' integer parts: any fraction.
  const uint64_t lo_i = a ? a->int_part + 1 : 0;
  const bool hi_open = !b;
  if (hi_open || b->int_part >= 1) {
    const uint64_t hi_i = hi_open ? 0 : b->int_part - 1;
    if (hi_open || hi_i >= lo_i) alts.push_back(Expr::seq({uint_range(lo_i, !hi_open, hi_i), any_frac}));
  }
  auto fb = [](const Decimal& d) { return FracBound{d.frac, d.strict}; };
  if (a && b && a->int_part == b->int_part) {
    alts.push_back(Expr::seq({Expr::lit(std::to_string(a->int_part)), frac_part(fb(*a), fb(*b), room)}));
  } else {
    if (a && (!b || a->int_part < b->int_part)) {
      alts.push_back(Expr::seq({Expr::lit(std::to_string(a->int_part)), frac_part(fb(*a), std::nullopt, room)}));
    }
    if (b && (!a || a->int_part < b->int_part)) {
      alts.push_back(Expr::seq({Expr::lit(std::to_string(b->int_part)), frac_part(std::nullopt, fb(*b), room)}));
    }
  }
  return Expr::alt(std::move(alts));
}

}  // namespace

Expr integer_range_expr(std::optional<int64_t> lo, std::optional<int64_t> hi) {
  std::vector<Expr> alts;
  if (!hi || *hi >= 0) {
    const uint64_t a = lo && *lo > 0 ? static_cast<uint64_t>(*lo) : 0;
    alts.push_back(uint_range(a, hi.has_value(), hi ? static_cast<uint64_t>(*hi) : 0));
  }
  if (!lo || *lo < 0) {
    const uint64_t mlo = hi && *hi < 0 ? magnitude(*hi) : 1;
    alts.push_back(Expr::seq({Expr::lit("-"), uint_range(mlo, lo.has_value(), lo ? magnitude(*lo) : 0)}));
  }
  return Expr::alt(std::move(alts));
}

Expected<Expr> number_range_expr(const std::optional<DecimalBound>& lo,
                                 const std::optional<DecimalBound>& hi, int max_fraction_digits) {
  std::optional<Decimal> l, h;
  if (lo) {
    PHILORA_ASSIGN_OR_RETURN(l, parse_decimal(*lo));
  }
  if (hi) {
    PHILORA_ASSIGN_OR_RETURN(h, parse_decimal(*hi));
  }
  std::vector<Expr> alts;
  // x >= 0 written without '-': x is its magnitude.
  if (!h || !h->negative) {
    std::optional<Decimal> a = l && !l->negative ? l : std::nullopt;
    alts.push_back(magnitude_range(a, h, max_fraction_digits));
  }
  // x written with '-' (x <= 0): x = -m, so m's upper bound is -lo and its lower bound -hi.
  if (!l || l->negative) {
    // m > 0: negative zero ("-0", "-0.0") is never written.
    Decimal positive;
    positive.strict = true;
    const Decimal a = h && h->negative ? *h : positive;
    alts.push_back(Expr::seq({Expr::lit("-"), magnitude_range(a, l, max_fraction_digits)}));
  }
  return Expr::alt(std::move(alts));
}

}  // namespace philora::structured
