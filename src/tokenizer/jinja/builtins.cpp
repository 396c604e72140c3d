#include "tokenizer/jinja/builtins.h"

#include <cmath>
#include <limits>
#include <ctime>

#include "tokenizer/jinja/text.h"
#include "tokenizer/unicode.h"

namespace philora::tokenizer::jinja {

Status undefined_error(const Value& v) {
  const std::string& n = v.undefined_name();
  if (n.empty()) return Status::error("undefined value");
  if (n.front() == '\'' || n.find(" has no ") != std::string::npos) return Status::error(n);
  return Status::errorf("'{}' is undefined", n);
}

namespace {

// ---- argument helpers ---------------------------------------------------------------------------

// Positional argument i, else keyword `name`, else nullptr.
const Value* arg(const CallArgs& a, size_t i, std::string_view name) {
  if (i < a.args.size()) return &a.args[i];
  return a.kwarg(name);
}

Expected<int64_t> int_arg(const CallArgs& a, size_t i, std::string_view name, int64_t def) {
  const Value* v = arg(a, i, name);
  if (!v || v->is_none()) return def;
  if (v->kind() != Value::Kind::kInt && v->kind() != Value::Kind::kBool) {
    return Status::errorf("argument '{}' must be an integer, not {}", name, v->type_name());
  }
  return v->as_int();
}

Expected<std::optional<std::string>> opt_str_arg(const CallArgs& a, size_t i,
                                                 std::string_view name) {
  const Value* v = arg(a, i, name);
  if (!v || v->is_none()) return std::optional<std::string>();
  if (!v->is_string())
    return Status::errorf("argument '{}' must be a string, not {}", name, v->type_name());
  return std::optional<std::string>(v->as_string());
}

Expected<std::string> str_arg(const CallArgs& a, size_t i, std::string_view name) {
  const Value* v = arg(a, i, name);
  if (!v || !v->is_string()) return Status::errorf("argument '{}' must be a string", name);
  return v->as_string();
}

// ---- string methods -----------------------------------------------------------------------------

Expected<Value> string_method(const std::string& s, const std::string& name, const CallArgs& a) {
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    PHILORA_ASSIGN_OR_RETURN(auto chars, opt_str_arg(a, 0, "chars"));
    return Value(text::strip(s, chars, name != "rstrip", name != "lstrip"));
  }
  if (name == "upper") return Value(text::upper(s));
  if (name == "lower") return Value(text::lower(s));
  if (name == "title") return Value(text::py_title(s));
  if (name == "capitalize") return Value(text::capitalize(s));
  if (name == "split" || name == "rsplit") {
    PHILORA_ASSIGN_OR_RETURN(auto sep, opt_str_arg(a, 0, "sep"));
    PHILORA_ASSIGN_OR_RETURN(int64_t maxsplit, int_arg(a, 1, "maxsplit", -1));
    if (sep && sep->empty()) return Status::error("split(): empty separator");
    if (name == "rsplit" && maxsplit >= 0)
      return Status::error("rsplit with maxsplit is not supported");
    std::vector<Value> items;
    for (auto& part : text::split(s, sep, maxsplit)) items.emplace_back(std::move(part));
    return Value::list(std::move(items));
  }
  if (name == "splitlines") {
    std::vector<Value> items;
    size_t pos = 0;
    while (pos < s.size()) {
      size_t e = s.find_first_of("\r\n", pos);
      if (e == std::string::npos) {
        items.emplace_back(s.substr(pos));
        break;
      }
      items.emplace_back(s.substr(pos, e - pos));
      pos = e + ((s[e] == '\r' && e + 1 < s.size() && s[e + 1] == '\n') ? 2 : 1);
    }
    return Value::list(std::move(items));
  }
  if (name == "startswith" || name == "endswith") {
    const Value* p = arg(a, 0, "prefix");
    if (!p) return Status::errorf("{}() takes one argument", name);
    std::vector<std::string> options;
    if (p->is_string()) {
      options.push_back(p->as_string());
    } else if (p->is_list()) {
      for (const Value& v : p->as_list().items) {
        if (!v.is_string()) return Status::errorf("{}(): tuple items must be strings", name);
        options.push_back(v.as_string());
      }
    } else {
      return Status::errorf("{}() argument must be str or a tuple of str, not {}", name,
                            p->type_name());
    }
    for (const auto& o : options)
      if (name == "startswith" ? s.starts_with(o) : s.ends_with(o)) return Value(true);
    return Value(false);
  }
  if (name == "replace") {
    PHILORA_ASSIGN_OR_RETURN(std::string from, str_arg(a, 0, "old"));
    PHILORA_ASSIGN_OR_RETURN(std::string to, str_arg(a, 1, "new"));
    PHILORA_ASSIGN_OR_RETURN(int64_t count, int_arg(a, 2, "count", -1));
    return Value(text::replace(s, from, to, count));
  }
  if (name == "find" || name == "count") {
    PHILORA_ASSIGN_OR_RETURN(std::string sub, str_arg(a, 0, "sub"));
    if (name == "find") {
      const size_t f = s.find(sub);
      if (f == std::string::npos) return Value(int64_t{-1});
      return Value(static_cast<int64_t>(unicode::count_chars(std::string_view(s).substr(0, f))));
    }
    if (sub.empty()) return Value(static_cast<int64_t>(unicode::count_chars(s) + 1));
    int64_t n = 0;
    for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
    return Value(n);
  }
  if (name == "join") {
    const Value* items = arg(a, 0, "iterable");
    if (!items) return Status::error("join() takes one argument");
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> parts, iterate(*items));
    std::string out;
    for (size_t i = 0; i < parts.size(); ++i) {
      if (!parts[i].is_string())
        return Status::errorf("join(): item {} is {}, not str", i, parts[i].type_name());
      if (i) out += s;
      out += parts[i].as_string();
    }
    return Value(out);
  }
  if (name == "isspace" || name == "isdigit" || name == "isalpha" || name == "isupper" ||
      name == "islower") {
    if (s.empty()) return Value(false);
    bool all = true;
    for (char32_t c : to_u32(s)) {
      if (name == "isspace") all = all && unicode::is_python_space(c);
      if (name == "isdigit") all = all && c >= '0' && c <= '9';
      if (name == "isalpha") all = all && ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
    }
    if (name == "isupper") return Value(text::upper(s) == s && text::lower(s) != s);
    if (name == "islower") return Value(text::lower(s) == s && text::upper(s) != s);
    return Value(all);
  }
  return Status::errorf("str method '{}' is not supported", name);
}

bool is_string_method(const std::string& n) {
  static const char* kNames[] = {
      "strip",   "lstrip",     "rstrip",     "upper",    "lower",   "title", "capitalize", "split",
      "rsplit",  "splitlines", "startswith", "endswith", "replace", "find",  "count",      "join",
      "isspace", "isdigit",    "isalpha",    "isupper",  "islower", "format"};
  for (const char* k : kNames)
    if (n == k) return true;
  return false;
}

Expected<Value> dict_method(const Value& d, const std::string& name, const CallArgs& a) {
  const auto& items = d.as_dict().items;
  if (name == "items") {
    std::vector<Value> out;
    for (const auto& [k, v] : items) out.push_back(Value::list({Value(k), v}, /*tuple=*/true));
    return Value::sequence(std::move(out), SeqKind::kDictItems);
  }
  if (name == "keys" || name == "values") {
    std::vector<Value> out;
    for (const auto& [k, v] : items) out.push_back(name == "keys" ? Value(k) : v);
    return Value::sequence(std::move(out),
                           name == "keys" ? SeqKind::kDictKeys : SeqKind::kDictValues);
  }
  if (name == "get") {
    const Value* key = arg(a, 0, "key");
    if (!key) return Status::error("get() takes at least one argument");
    if (key->is_string())
      if (const Value* v = d.as_dict().find(key->as_string())) return *v;
    const Value* def = arg(a, 1, "default");
    return def ? *def : Value::none();
  }
  return Status::errorf("dict method '{}' is not supported", name);
}

// A bound method as a callable value.
Value bound(const Value& self, const std::string& name,
            Expected<Value> (*impl)(const Value&, const std::string&, const CallArgs&)) {
  return Value::callable(name,
                         [self, name, impl](const CallArgs& a) { return impl(self, name, a); });
}

Expected<Value> string_method_on(const Value& self, const std::string& name, const CallArgs& a) {
  if (name == "format") return Status::error("str.format is not supported");
  return string_method(self.as_string(), name, a);
}

Expected<int64_t> normalize_index(int64_t i, int64_t n) { return i < 0 ? i + n : i; }

// Python's printf-style `format % args` for the conversions templates use: %s %r %d %i %f %x %%,
// with flags, width and precision.
Expected<Value> percent_format(const std::string& fmt, const Value& args) {
  std::vector<Value> list;
  const bool tuple = args.is_list() && args.as_list().kind == SeqKind::kTuple;
  if (tuple) list = args.as_list().items;
  // A single non-tuple argument; lists and dicts count as mappings, which Python lets go unused.
  const bool mapping = args.is_dict() || (args.is_list() && !tuple) || args.is_undefined();
  size_t next = 0;
  bool single_used = false;
  auto take = [&]() -> Expected<Value> {
    if (tuple) {
      if (next >= list.size()) return Status::error("not enough arguments for format string");
      return list[next++];
    }
    if (single_used) return Status::error("not enough arguments for format string");
    single_used = true;
    return args;
  };
  std::string out;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out.push_back(fmt[i]);
      continue;
    }
    if (++i >= fmt.size()) return Status::error("incomplete format");
    if (fmt[i] == '(') return Status::error("%(name) formatting is not supported");
    std::string flags;
    while (i < fmt.size() && std::string_view("-+ 0#").find(fmt[i]) != std::string_view::npos)
      flags.push_back(fmt[i++]);
    int width = 0, precision = -1;
    while (i < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[i])))
      width = width * 10 + (fmt[i++] - '0');
    if (i < fmt.size() && fmt[i] == '.') {
      precision = 0;
      ++i;
      while (i < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[i])))
        precision = precision * 10 + (fmt[i++] - '0');
    }
    if (i >= fmt.size()) return Status::error("incomplete format");
    const char conv = fmt[i];
    if (conv == '%') {
      out.push_back('%');
      continue;
    }
    PHILORA_ASSIGN_OR_RETURN(Value v, take());
    std::string piece;
    const bool left = flags.find('-') != std::string::npos;
    const bool zero = flags.find('0') != std::string::npos && !left;
    if (conv == 's' || conv == 'r') {
      piece = conv == 's' ? v.str() : v.repr();
      if (precision >= 0) piece = from_u32(to_u32(piece).substr(0, static_cast<size_t>(precision)));
    } else if (conv == 'd' || conv == 'i' || conv == 'x' || conv == 'X' || conv == 'o') {
      if (!v.is_number())
        return Status::errorf("%{} format: a real number is required, not {}", conv, v.type_name());
      const int64_t x = v.kind() == Value::Kind::kFloat
                            ? static_cast<int64_t>(std::trunc(v.as_double()))
                            : v.as_int();
      piece = conv == 'x'   ? fmt::format("{:x}", x < 0 ? -x : x)
              : conv == 'X' ? fmt::format("{:X}", x < 0 ? -x : x)
              : conv == 'o' ? fmt::format("{:o}", x < 0 ? -x : x)
                            : std::to_string(x < 0 ? -x : x);
      const std::string sign = x < 0                                  ? "-"
                               : flags.find('+') != std::string::npos ? "+"
                               : flags.find(' ') != std::string::npos ? " "
                                                                      : "";
      if (zero && static_cast<int>(piece.size() + sign.size()) < width)
        piece.insert(0, width - piece.size() - sign.size(), '0');
      piece = sign + piece;
    } else if (conv == 'f' || conv == 'F' || conv == 'e' || conv == 'g') {
      if (!v.is_number()) return Status::errorf("must be real number, not {}", v.type_name());
      const int p = precision < 0 ? 6 : precision;
      piece = conv == 'e'   ? fmt::format("{:.{}e}", v.as_double(), p)
              : conv == 'g' ? fmt::format("{:.{}g}", v.as_double(), p)
                            : fmt::format("{:.{}f}", v.as_double(), p);
      if (flags.find('+') != std::string::npos && v.as_double() >= 0) piece.insert(0, "+");
      if (zero && static_cast<int>(piece.size()) < width) {
        const size_t at = (piece[0] == '-' || piece[0] == '+') ? 1 : 0;
        piece.insert(at, width - piece.size(), '0');
      }
    } else {
      return Status::errorf("unsupported format character '{}'", conv);
    }
    const int len = static_cast<int>(unicode::count_chars(piece));
    if (len < width)
      piece = left ? piece + std::string(static_cast<size_t>(width - len), ' ')
                   : std::string(static_cast<size_t>(width - len), ' ') + piece;
    out += piece;
  }
  if ((tuple && next < list.size()) || (!tuple && !single_used && !mapping)) {
    return Status::error("not all arguments converted during string formatting");
  }
  return Value(out);
}

}  // namespace

// ---- access -------------------------------------------------------------------------------------

Expected<Value> get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      return undefined_error(obj);
    case Value::Kind::kString:
      if (is_string_method(name)) return bound(obj, name, string_method_on);
      break;
    case Value::Kind::kDict:
      if (!obj.as_dict().is_namespace &&
          (name == "items" || name == "keys" || name == "values" || name == "get")) {
        return bound(obj, name, dict_method);
      }
      if (const Value* v = obj.as_dict().find(name)) return *v;
      break;
    case Value::Kind::kList:
      if (name == "append" || name == "extend" || name == "pop" || name == "insert" ||
          name == "remove" || name == "sort" || name == "reverse" || name == "clear") {
        return Status::errorf("access to attribute '{}' of 'list' object is unsafe", name);
      }
      break;
    default:
      break;
  }
  return Value::undefined(fmt::format(
      "'{}' has no attribute '{}'",
      obj.kind() == Value::Kind::kDict ? std::string("dict object") : obj.type_name() + " object",
      name));
}

Expected<Value> get_item(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      return undefined_error(obj);
    case Value::Kind::kDict:
      if (key.is_string()) {
        if (const Value* v = obj.as_dict().find(key.as_string())) return *v;
      }
      break;
    case Value::Kind::kList:
      if (const SeqKind k = obj.as_list().kind;
          k == SeqKind::kDictKeys || k == SeqKind::kDictValues || k == SeqKind::kDictItems) {
        return Status::errorf("'{}' object is not subscriptable", obj.type_name());
      }
      if (key.kind() == Value::Kind::kInt || key.kind() == Value::Kind::kBool) {
        const auto& items = obj.as_list().items;
        PHILORA_ASSIGN_OR_RETURN(int64_t i,
                                 normalize_index(key.as_int(), static_cast<int64_t>(items.size())));
        if (i >= 0 && i < static_cast<int64_t>(items.size())) return items[static_cast<size_t>(i)];
      }
      break;
    case Value::Kind::kString:
      if (key.kind() == Value::Kind::kInt || key.kind() == Value::Kind::kBool) {
        const std::u32string u = to_u32(obj.as_string());
        PHILORA_ASSIGN_OR_RETURN(int64_t i,
                                 normalize_index(key.as_int(), static_cast<int64_t>(u.size())));
        if (i >= 0 && i < static_cast<int64_t>(u.size()))
          return Value(from_u32(std::u32string_view(u).substr(static_cast<size_t>(i), 1)));
      }
      break;
    default:
      break;
  }
  if (key.is_string()) return get_attr(obj, key.as_string());
  return Value::undefined(fmt::format(
      "'{}' has no attribute {}",
      obj.kind() == Value::Kind::kDict ? std::string("dict object") : obj.type_name() + " object",
      key.is_string() ? "'" + key.as_string() + "'" : key.repr()));
}

Expected<Value> get_slice(const Value& obj, std::optional<int64_t> start,
                          std::optional<int64_t> stop, std::optional<int64_t> step) {
  const int64_t st = step.value_or(1);
  if (st == 0) return Status::error("slice step cannot be zero");
  // Python's slice.indices(n).
  auto bounds = [&](int64_t n) {
    auto clamp = [&](std::optional<int64_t> v, int64_t def) {
      if (!v) return def;
      const int64_t x = *v < 0 ? *v + n : *v;
      return st > 0 ? std::clamp<int64_t>(x, 0, n) : std::clamp<int64_t>(x, -1, n - 1);
    };
    return std::make_pair(clamp(start, st > 0 ? 0 : n - 1), clamp(stop, st > 0 ? n : -1));
  };
  auto indices = [&](int64_t n) {
    std::vector<size_t> idx;
    const auto [b, e] = bounds(n);
    for (int64_t i = b; st > 0 ? i < e : i > e; i += st) idx.push_back(static_cast<size_t>(i));
    return idx;
  };
  if (obj.is_string()) {
    const std::u32string u = to_u32(obj.as_string());
    std::u32string out;
    for (size_t i : indices(static_cast<int64_t>(u.size()))) out.push_back(u[i]);
    return Value(from_u32(out));
  }
  if (obj.is_list()) {
    const ListData& l = obj.as_list();
    if (l.kind == SeqKind::kDictKeys || l.kind == SeqKind::kDictValues ||
        l.kind == SeqKind::kDictItems) {
      return Status::errorf("'{}' object is not subscriptable", obj.type_name());
    }
    const auto n = static_cast<int64_t>(l.items.size());
    if (l.kind == SeqKind::kRange) {
      // range(a, b, s)[i:j:k] is range(a + i*s, a + j*s, s*k) (i, j from slice.indices).
      const auto [b, e] = bounds(n);
      return Value::range(l.range_start + b * l.range_step, l.range_start + e * l.range_step,
                          l.range_step * st);
    }
    std::vector<Value> out;
    for (size_t i : indices(n)) out.push_back(l.items[i]);
    return Value::list(std::move(out), l.tuple);
  }
  if (obj.is_undefined()) return undefined_error(obj);
  return Status::errorf("'{}' object is not subscriptable", obj.type_name());
}

Expected<std::vector<Value>> iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return std::vector<Value>{};
    case Value::Kind::kList:
      return v.as_list().items;
    case Value::Kind::kDict: {
      std::vector<Value> keys;
      for (const auto& [k, val] : v.as_dict().items) keys.emplace_back(k);
      return keys;
    }
    case Value::Kind::kString: {
      std::vector<Value> chars;
      for (char32_t c : to_u32(v.as_string())) chars.emplace_back(from_u32(std::u32string(1, c)));
      return chars;
    }
    default:
      return Status::errorf("'{}' object is not iterable", v.type_name());
  }
}

// ---- operators ----------------------------------------------------------------------------------

Expected<Value> binary_op(const std::string& op, const Value& a, const Value& b) {
  // str % anything: Python's str.__mod__ runs first (an undefined argument counts as a mapping).
  if (op == "%" && a.is_string()) return percent_format(a.as_string(), b);
  if (a.is_undefined()) return undefined_error(a);
  if (b.is_undefined()) return undefined_error(b);
  const bool ints = (a.kind() == Value::Kind::kInt || a.kind() == Value::Kind::kBool) &&
                    (b.kind() == Value::Kind::kInt || b.kind() == Value::Kind::kBool);
  const bool nums = a.is_number() && b.is_number();
  auto type_error = [&] {
    return Status::errorf("unsupported operand type(s) for {}: '{}' and '{}'", op, a.type_name(),
                          b.type_name());
  };
  // Python's integers do not overflow; ours are 64-bit: an overflow is an error, never UB.
  auto checked = [&](bool overflowed, int64_t v) -> Expected<Value> {
    if (overflowed) return Status::errorf("integer overflow in {} (64-bit integers)", op);
    return Value(v);
  };
  if (op == "+") {
    if (ints) {
      int64_t v = 0;
      const bool over = __builtin_add_overflow(a.as_int(), b.as_int(), &v);
      return checked(over, v);
    }
    if (nums) return Value(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) return Value(a.as_string() + b.as_string());
    if (a.is_list() && b.is_list() && a.as_list().kind == b.as_list().kind &&
        (a.as_list().kind == SeqKind::kList || a.as_list().kind == SeqKind::kTuple)) {
      std::vector<Value> items = a.as_list().items;
      items.insert(items.end(), b.as_list().items.begin(), b.as_list().items.end());
      return Value::list(std::move(items), a.as_list().tuple);
    }
    return type_error();
  }
  if (op == "-") {
    if (ints) {
      int64_t v = 0;
      const bool over = __builtin_sub_overflow(a.as_int(), b.as_int(), &v);
      return checked(over, v);
    }
    if (nums) return Value(a.as_double() - b.as_double());
    return type_error();
  }
  if (op == "*") {
    if (ints) {
      int64_t v = 0;
      const bool over = __builtin_mul_overflow(a.as_int(), b.as_int(), &v);
      return checked(over, v);
    }
    if (nums) return Value(a.as_double() * b.as_double());
    const Value* seq = a.is_string() || a.is_list() ? &a : &b;
    const Value* n = seq == &a ? &b : &a;
    const bool repeatable =
        seq->is_string() || (seq->is_list() && (seq->as_list().kind == SeqKind::kList ||
                                                seq->as_list().kind == SeqKind::kTuple));
    if (repeatable && (n->kind() == Value::Kind::kInt || n->kind() == Value::Kind::kBool)) {
      const int64_t k = std::max<int64_t>(0, n->as_int());
      if (seq->is_string()) {
        std::string out;
        for (int64_t i = 0; i < k; ++i) out += seq->as_string();
        return Value(out);
      }
      std::vector<Value> items;
      for (int64_t i = 0; i < k; ++i)
        items.insert(items.end(), seq->as_list().items.begin(), seq->as_list().items.end());
      return Value::list(std::move(items), seq->as_list().tuple);
    }
    return type_error();
  }
  if (op == "/") {
    if (!nums) return type_error();
    if (b.as_double() == 0) return Status::error("division by zero");
    return Value(a.as_double() / b.as_double());
  }
  if (op == "//" || op == "%") {
    if (op == "%" && a.is_string()) return percent_format(a.as_string(), b);
    if (!nums) return type_error();
    if (b.as_double() == 0) return Status::error("integer division or modulo by zero");
    if (ints) {
      const int64_t x = a.as_int(), y = b.as_int();
      if (x == std::numeric_limits<int64_t>::min() && y == -1) return checked(true, 0);
      int64_t q = x / y, r = x % y;
      if (r != 0 && ((r < 0) != (y < 0))) {
        --q;
        r += y;
      }
      return op == "//" ? Value(q) : Value(r);
    }
    const double x = a.as_double(), y = b.as_double();
    const double q = std::floor(x / y);
    if (op == "//") return Value(q);
    double r = std::fmod(x, y);
    if (r != 0 && ((r < 0) != (y < 0))) r += y;
    return Value(r);
  }
  if (op == "**") {
    if (ints && b.as_int() >= 0) {
      int64_t r = 1, base = a.as_int();  // by squaring: O(log b) steps
      bool over = false;
      for (int64_t e = b.as_int(); e > 0 && !over; e >>= 1) {
        if (e & 1) over = __builtin_mul_overflow(r, base, &r);
        if (e > 1 && !over) over = __builtin_mul_overflow(base, base, &base);
      }
      return checked(over, r);
    }
    if (nums) return Value(std::pow(a.as_double(), b.as_double()));
    return type_error();
  }
  return Status::errorf("unknown operator {}", op);
}

Expected<bool> compare_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "in" || op == "notin") {
    PHILORA_ASSIGN_OR_RETURN(bool in, contains(b, a));
    return op == "in" ? in : !in;
  }
  if (a.is_undefined()) return undefined_error(a);
  if (b.is_undefined()) return undefined_error(b);
  if (op == "<") return less(a, b);
  if (op == ">") return less(b, a);
  if (op == "<=") {
    PHILORA_ASSIGN_OR_RETURN(bool gt, less(b, a));
    return !gt;
  }
  if (op == ">=") {
    PHILORA_ASSIGN_OR_RETURN(bool lt, less(a, b));
    return !lt;
  }
  return Status::errorf("unknown comparison {}", op);
}

// ---- tests --------------------------------------------------------------------------------------

Expected<bool> call_test(const std::string& name, const Value& v, const CallArgs& a) {
  using K = Value::Kind;
  const Value* other = arg(a, 0, "other");
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.kind() == K::kBool;
  if (name == "true") return v.kind() == K::kBool && v.as_bool();
  if (name == "false") return v.kind() == K::kBool && !v.as_bool();
  if (name == "integer") return v.kind() == K::kInt;
  if (name == "float") return v.kind() == K::kFloat;
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
  if (name == "sequence") {
    if (v.is_undefined()) return true;  // Jinja's Undefined has __len__ and __getitem__
    if (v.is_list()) {
      const SeqKind k = v.as_list().kind;
      return k == SeqKind::kList || k == SeqKind::kTuple || k == SeqKind::kRange;
    }
    return v.is_string() || v.is_dict();
  }
  if (name == "callable") return v.is_callable();
  if (name == "lower" || name == "upper") {
    // str(value).islower() / isupper(): some cased character, and all of them in that case.
    const std::string t = v.str();
    const std::string lo = text::lower(t), up = text::upper(t);
    return name == "lower" ? (lo == t && up != t) : (up == t && lo != t);
  }
  if (name == "escaped") return false;
  if (name == "odd" || name == "even") {
    // value % 2: numbers only (a string would be printf-formatted and fail).
    if (!v.is_number())
      return Status::errorf("test '{}' needs a number, not {}", name, v.type_name());
    PHILORA_ASSIGN_OR_RETURN(Value r, binary_op("%", v, Value(int64_t{2})));
    return name == "odd" ? equals(r, Value(int64_t{1})) : equals(r, Value(int64_t{0}));
  }
  if (name == "divisibleby") {
    if (!other || !v.is_number() || !other->is_number())
      return Status::error("test 'divisibleby' needs numbers");
    if (other->as_double() == 0) return Status::error("division by zero");
    return std::fmod(v.as_double(), other->as_double()) == 0;
  }
  if (name == "eq" || name == "equalto" || name == "==" || name == "ne" || name == "!=" ||
      name == "lt" || name == "lessthan" || name == "<" || name == "le" || name == "<=" ||
      name == "gt" || name == "greaterthan" || name == ">" || name == "ge" || name == ">=" ||
      name == "in") {
    if (!other) return Status::errorf("test '{}' needs an argument", name);
    std::string op = name;
    if (name == "eq" || name == "equalto") op = "==";
    if (name == "ne") op = "!=";
    if (name == "lt" || name == "lessthan") op = "<";
    if (name == "le") op = "<=";
    if (name == "gt" || name == "greaterthan") op = ">";
    if (name == "ge") op = ">=";
    return compare_op(op, v, *other);
  }
  if (name == "sameas") {
    if (!other) return Status::error("test 'sameas' needs an argument");
    if (v.kind() != other->kind()) return false;
    if (v.is_list()) return &v.as_list() == &other->as_list();
    if (v.is_dict()) return &v.as_dict() == &other->as_dict();
    return equals(v, *other);
  }
  return Status::errorf("test '{}' is not supported", name);
}

// ---- globals ------------------------------------------------------------------------------------

std::vector<std::pair<std::string, Value>> default_globals() {
  std::vector<std::pair<std::string, Value>> g;
  g.emplace_back("range", Value::callable("range", [](const CallArgs& a) -> Expected<Value> {
                   if (a.args.empty() || a.args.size() > 3)
                     return Status::error("range() takes 1 to 3 arguments");
                   for (const Value& v : a.args)
                     if (v.kind() != Value::Kind::kInt && v.kind() != Value::Kind::kBool)
                       return Status::error("range() needs integers");
                   int64_t start = 0, stop, step = 1;
                   if (a.args.size() == 1) {
                     stop = a.args[0].as_int();
                   } else {
                     start = a.args[0].as_int();
                     stop = a.args[1].as_int();
                     if (a.args.size() == 3) step = a.args[2].as_int();
                   }
                   if (step == 0) return Status::error("range() arg 3 must not be zero");
                   const int64_t n = step > 0
                                         ? (stop > start ? (stop - start + step - 1) / step : 0)
                                         : (start > stop ? (start - stop - step - 1) / -step : 0);
                   if (n > 100000)
                     return Status::error("range too big (the sandbox allows 100000 items)");
                   return Value::range(start, stop, step);
                 }));
  g.emplace_back("dict", Value::callable("dict", [](const CallArgs& a) -> Expected<Value> {
                   if (!a.args.empty())
                     return Status::error("dict() with positional arguments is not supported");
                   std::vector<std::pair<std::string, Value>> items(a.kwargs.begin(),
                                                                    a.kwargs.end());
                   return Value::dict(std::move(items));
                 }));
  g.emplace_back("namespace",
                 Value::callable("namespace", [](const CallArgs& a) -> Expected<Value> {
                   std::vector<std::pair<std::string, Value>> items;
                   for (const Value& v : a.args) {
                     if (!v.is_dict())
                       return Status::error("namespace() positional arguments must be dicts");
                     items.insert(items.end(), v.as_dict().items.begin(), v.as_dict().items.end());
                   }
                   items.insert(items.end(), a.kwargs.begin(), a.kwargs.end());
                   return Value::namespace_object(std::move(items));
                 }));
  g.emplace_back("raise_exception",
                 Value::callable("raise_exception", [](const CallArgs& a) -> Expected<Value> {
                   return Status::errorf("template raised an exception: {}",
                                         a.args.empty() ? std::string() : a.args[0].str());
                 }));
  g.emplace_back(
      "strftime_now", Value::callable("strftime_now", [](const CallArgs& a) -> Expected<Value> {
        if (a.args.empty() || !a.args[0].is_string())
          return Status::error("strftime_now() needs a format string");
        const std::time_t now = std::time(nullptr);
        std::tm tm{};
        localtime_r(&now, &tm);
        char buf[256];
        const size_t n = std::strftime(buf, sizeof(buf), a.args[0].as_string().c_str(), &tm);
        return Value(std::string(buf, n));
      }));
  return g;
}

}  // namespace philora::tokenizer::jinja
