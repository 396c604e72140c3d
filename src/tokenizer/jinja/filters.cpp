// The filters of the Jinja subset (see builtins.h).
#include <algorithm>
#include <charconv>
#include <cmath>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/text.h"
#include "tokenizer/unicode.h"

namespace philora::tokenizer::jinja {

namespace {

const Value* arg(const CallArgs& a, size_t i, std::string_view name) {
  if (i < a.args.size()) return &a.args[i];
  return a.kwarg(name);
}

bool bool_arg(const CallArgs& a, size_t i, std::string_view name, bool def) {
  const Value* v = arg(a, i, name);
  return v ? v->truthy() : def;
}

// Follows a dotted attribute path ("a.b" or "0"), as Jinja's make_attrgetter does.
Expected<Value> attribute_path(const Value& v, const std::string& path) {
  Value cur = v;
  size_t pos = 0;
  while (true) {
    const size_t dot = path.find('.', pos);
    const std::string part =
        path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    int64_t index = 0;
    const auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), index);
    Value key = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit) &&
                        ec == std::errc() && end == part.data() + part.size()
                    ? Value(index)
                    : Value(part);
    PHILORA_ASSIGN_OR_RETURN(cur, get_item(cur, key));
    if (dot == std::string::npos) return cur;
    pos = dot + 1;
  }
}

// A test applied by select/reject/selectattr/rejectattr: args[first] names it, the rest are its
// arguments; without a name, truthiness.
Expected<bool> run_test(const Value& v, const CallArgs& a, size_t first) {
  if (a.args.size() <= first) return v.truthy();
  if (!a.args[first].is_string()) return Status::error("the test name must be a string");
  CallArgs rest;
  rest.args.assign(a.args.begin() + static_cast<ptrdiff_t>(first) + 1, a.args.end());
  return call_test(a.args[first].as_string(), v, rest);
}

std::string html_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

Expected<std::vector<Value>> sorted(std::vector<Value> items, bool reverse, bool case_sensitive,
                                    const Value* attribute) {
  std::vector<std::pair<Value, Value>> keyed;  // (key, item)
  for (Value& v : items) {
    Value key = v;
    if (attribute && attribute->is_string()) {
      PHILORA_ASSIGN_OR_RETURN(key, attribute_path(v, attribute->as_string()));
    }
    if (!case_sensitive && key.is_string()) key = Value(text::lower(key.as_string()));
    keyed.emplace_back(std::move(key), std::move(v));
  }
  Status error;
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    auto r = reverse ? less(y.first, x.first) : less(x.first, y.first);
    if (!r.ok()) {
      error = r.status();
      return false;
    }
    return *r;
  });
  if (!error.ok()) return error;
  std::vector<Value> out;
  for (auto& kv : keyed) out.push_back(std::move(kv.second));
  return out;
}

}  // namespace

Expected<Value> call_filter(const std::string& name, const Value& v, const CallArgs& a) {
  using K = Value::Kind;
  // Filters that accept undefined values.
  if (name == "default" || name == "d") {
    const Value* def = arg(a, 0, "default_value");
    const bool boolean = bool_arg(a, 1, "boolean", false);
    if (v.is_undefined() || (boolean && !v.truthy())) return def ? *def : Value(std::string());
    return v;
  }
  if (name == "string") return Value(v.str());
  if (name == "length" || name == "count") {
    PHILORA_ASSIGN_OR_RETURN(int64_t n, v.length());
    return Value(n);
  }
  if (name == "safe") return Value(v.str());  // Markup(str(value))
  if (name == "list") {
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
    return Value::list(std::move(items));
  }
  if (name == "trim") {
    const Value* chars = arg(a, 0, "chars");
    std::optional<std::string> set;
    if (chars && chars->is_string()) set = chars->as_string();
    return Value(text::strip(v.str(), set, true, true));
  }
  if (name == "upper") return Value(text::upper(v.str()));
  if (name == "lower") return Value(text::lower(v.str()));
  if (name == "capitalize") return Value(text::capitalize(v.str()));
  if (name == "title") return Value(text::jinja_title(v.str()));
  if (name == "e" || name == "escape") return Value(html_escape(v.str()));
  if (name == "replace") {
    const Value* from = arg(a, 0, "old");
    const Value* to = arg(a, 1, "new");
    const Value* count = arg(a, 2, "count");
    if (!from || !to) return Status::error("replace() needs two arguments");
    return Value(text::replace(v.str(), from->str(), to->str(),
                               count && !count->is_none() ? count->as_int() : -1));
  }
  if (name == "indent") {
    if (v.is_undefined()) return undefined_error(v);
    if (!v.is_string()) return Status::errorf("indent needs a string, not {}", v.type_name());
    const Value* width = arg(a, 0, "width");
    const bool first = bool_arg(a, 1, "first", false);
    const bool blank = bool_arg(a, 2, "blank", false);
    const std::string pad =
        !width ? std::string(4, ' ')
        : width->is_string()
            ? width->as_string()
            : std::string(static_cast<size_t>(std::max<int64_t>(0, width->as_int())), ' ');
    std::string s = v.str();
    std::string out;
    size_t pos = 0;
    bool first_line = true;
    while (true) {
      const size_t nl = s.find('\n', pos);
      const std::string line =
          s.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
      const bool indent = first_line ? first : (blank || !line.empty());
      out += (indent && !(first_line && !first) ? pad : std::string()) + line;
      if (nl == std::string::npos) break;
      out += "\n";
      pos = nl + 1;
      first_line = false;
    }
    return Value(out);
  }
  if (name == "tojson") {
    const Value* indent = arg(a, 1, "indent");
    const Value* separators = a.kwarg("separators");
    const bool sort_keys = a.kwarg("sort_keys") ? a.kwarg("sort_keys")->truthy() : false;
    if (const Value* ea = arg(a, 0, "ensure_ascii"); ea && ea->truthy())
      return Status::error("tojson(ensure_ascii=True) is not supported");
    int ind = -1;
    if (indent && !indent->is_none()) {
      if (indent->kind() != K::kInt) return Status::error("tojson: indent must be an integer");
      ind = static_cast<int>(indent->as_int());
    }
    std::string item_sep, key_sep;
    const std::string* isep = nullptr;
    const std::string* ksep = nullptr;
    if (separators && !separators->is_none()) {
      if (!separators->is_list() || separators->as_list().items.size() != 2)
        return Status::error("tojson: separators must be a pair");
      item_sep = separators->as_list().items[0].str();
      key_sep = separators->as_list().items[1].str();
      isep = &item_sep;
      ksep = &key_sep;
    }
    PHILORA_ASSIGN_OR_RETURN(std::string json, v.to_json(ind, sort_keys, isep, ksep));
    return Value(json);
  }

  // Undefined iterates as empty (first, last, min, max, sum, join, sort, unique, map, select, ...);
  // the filters that need a value fail on it.
  if (v.is_undefined() &&
      (name == "int" || name == "float" || name == "abs" || name == "round" || name == "dictsort" ||
       name == "indent" || name == "center" || name == "attr")) {
    return undefined_error(v);
  }

  if (name == "first" || name == "last") {
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
    if (items.empty()) return Value::undefined("No first item, sequence was empty.");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "reverse") {
    if (v.is_string()) {
      std::u32string u = to_u32(v.as_string());
      std::reverse(u.begin(), u.end());
      return Value(from_u32(u));
    }
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
  }
  if (name == "join") {
    const Value* sep = arg(a, 0, "d");
    const Value* attribute = arg(a, 1, "attribute");
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i && sep) out += sep->str();
      Value item = items[i];
      if (attribute && attribute->is_string()) {
        PHILORA_ASSIGN_OR_RETURN(item, attribute_path(item, attribute->as_string()));
      }
      out += item.str();
    }
    return Value(out);
  }
  if (name == "int") {
    const Value* def = arg(a, 0, "default");
    if (v.kind() == K::kInt || v.kind() == K::kBool) return Value(v.as_int());
    if (v.kind() == K::kFloat) return Value(static_cast<int64_t>(std::trunc(v.as_double())));
    if (v.is_string()) {
      try {
        size_t used = 0;
        const std::string s = text::strip(v.as_string(), std::nullopt, true, true);
        const long long x = std::stoll(s, &used, 10);
        if (used == s.size()) return Value(static_cast<int64_t>(x));
        const double d = std::stod(s, &used);
        if (used == s.size()) return Value(static_cast<int64_t>(std::trunc(d)));
      } catch (...) {
      }
    }
    return def ? *def : Value(int64_t{0});
  }
  if (name == "float") {
    const Value* def = arg(a, 0, "default");
    if (v.is_number()) return Value(v.as_double());
    if (v.is_string()) {
      try {
        size_t used = 0;
        const std::string s = text::strip(v.as_string(), std::nullopt, true, true);
        const double d = std::stod(s, &used);
        if (used == s.size()) return Value(d);
      } catch (...) {
      }
    }
    return def ? *def : Value(0.0);
  }
  if (name == "abs") {
    if (v.kind() == K::kInt || v.kind() == K::kBool) return Value(std::abs(v.as_int()));
    if (v.kind() == K::kFloat) return Value(std::fabs(v.as_double()));
    return Status::errorf("bad operand type for abs(): '{}'", v.type_name());
  }
  if (name == "round") {
    if (!v.is_number())
      return Status::errorf("type {} doesn't define __round__ method", v.type_name());
    const Value* precision = arg(a, 0, "precision");
    const Value* method = arg(a, 1, "method");
    const std::string m = method ? method->str() : "common";
    const int64_t p = precision && !precision->is_none() ? precision->as_int() : 0;
    if (m == "ceil" || m == "floor") {
      const double scale = std::pow(10.0, static_cast<double>(p));
      const double x = v.as_double() * scale;
      return Value((m == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
    }
    if (m != "common") return Status::error("method must be 'common', 'ceil' or 'floor'");
    if (v.kind() != Value::Kind::kFloat) {
      // Python's round() of an int is an int; a negative precision rounds to tens, hundreds, ...
      const int64_t x = v.as_int();
      if (p >= 0) return Value(x);
      int64_t unit = 1;
      for (int64_t k = 0; k < -p && unit < (int64_t{1} << 60); ++k) unit *= 10;
      int64_t down = (x / unit) * unit;
      if (x % unit < 0) down -= unit;
      const int64_t rem = x - down;
      if (2 * rem > unit || (2 * rem == unit && ((down / unit) % 2 != 0))) down += unit;
      return Value(down);
    }
    if (p >= 0) {
      // Correctly rounded to p decimals, halves to even: what Python's round(float, p) does.
      return Value(std::stod(fmt::format("{:.{}f}", v.as_double(), p)));
    }
    const double scale = std::pow(10.0, static_cast<double>(-p));
    return Value(std::nearbyint(v.as_double() / scale) * scale);
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::list({});
    if (!v.is_dict()) return Status::errorf("items filter needs a mapping, not {}", v.type_name());
    std::vector<Value> out;
    for (const auto& [k, val] : v.as_dict().items)
      out.push_back(Value::list({Value(k), val}, true));
    return Value::list(std::move(out));
  }
  if (name == "dictsort") {
    if (!v.is_dict()) return Status::errorf("dictsort needs a mapping, not {}", v.type_name());
    std::vector<Value> pairs;
    for (const auto& [k, val] : v.as_dict().items)
      pairs.push_back(Value::list({Value(k), val}, true));
    const bool case_sensitive = bool_arg(a, 0, "case_sensitive", false);
    const Value* by = arg(a, 1, "by");
    const bool reverse = bool_arg(a, 2, "reverse", false);
    const Value attribute(by && by->str() == "value" ? "1" : "0");
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> out,
                             sorted(std::move(pairs), reverse, case_sensitive, &attribute));
    return Value::list(std::move(out));
  }
  if (name == "sort") {
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
    PHILORA_ASSIGN_OR_RETURN(
        std::vector<Value> out,
        sorted(std::move(items), bool_arg(a, 0, "reverse", false),
               bool_arg(a, 1, "case_sensitive", false), arg(a, 2, "attribute")));
    return Value::list(std::move(out));
  }
  if (name == "unique") {
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
    const bool case_sensitive = bool_arg(a, 0, "case_sensitive", false);
    const Value* attribute = arg(a, 1, "attribute");
    std::vector<Value> out, seen;
    for (const Value& item : items) {
      Value key = item;
      if (attribute && attribute->is_string()) {
        PHILORA_ASSIGN_OR_RETURN(key, attribute_path(item, attribute->as_string()));
      }
      if (!case_sensitive && key.is_string()) key = Value(text::lower(key.as_string()));
      if (!hashable(key)) return Status::errorf("unhashable type: '{}'", key.type_name());
      if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); })) {
        seen.push_back(key);
        out.push_back(item);
      }
    }
    return Value::list(std::move(out));
  }
  if (name == "min" || name == "max") {
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
    if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> out, sorted(std::move(items), name == "max",
                                                            bool_arg(a, 0, "case_sensitive", false),
                                                            arg(a, 1, "attribute")));
    return out.front();
  }
  if (name == "sum") {
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
    const Value* attribute = arg(a, 0, "attribute");
    const Value* start = arg(a, 1, "start");
    Value total = start ? *start : Value(int64_t{0});
    for (const Value& item : items) {
      Value x = item;
      if (attribute && attribute->is_string()) {
        PHILORA_ASSIGN_OR_RETURN(x, attribute_path(item, attribute->as_string()));
      }
      PHILORA_ASSIGN_OR_RETURN(total, binary_op("+", total, x));
    }
    return total;
  }
  if (name == "map") {
    if (!v.truthy()) return Value::list({});  // Jinja: `if value:` before iterating
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
    std::vector<Value> out;
    if (const Value* attribute = a.kwarg("attribute")) {
      const Value* def = a.kwarg("default");
      for (const Value& item : items) {
        PHILORA_ASSIGN_OR_RETURN(Value x, attribute_path(item, attribute->str()));
        out.push_back(x.is_undefined() && def ? *def : x);
      }
      return Value::list(std::move(out));
    }
    if (a.args.empty() || !a.args[0].is_string())
      return Status::error("map() needs a filter name or attribute=");
    CallArgs rest;
    rest.args.assign(a.args.begin() + 1, a.args.end());
    rest.kwargs = a.kwargs;
    for (const Value& item : items) {
      PHILORA_ASSIGN_OR_RETURN(Value x, call_filter(a.args[0].as_string(), item, rest));
      out.push_back(std::move(x));
    }
    return Value::list(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    if (!v.truthy()) return Value::list({});  // Jinja: `if value:` before iterating
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(v));
    const bool by_attr = name.ends_with("attr");
    const bool keep_if = name.starts_with("select");
    if (by_attr && (a.args.empty() || !a.args[0].is_string()))
      return Status::errorf("{}() needs an attribute name", name);
    std::vector<Value> out;
    for (const Value& item : items) {
      Value subject = item;
      if (by_attr) {
        PHILORA_ASSIGN_OR_RETURN(subject, attribute_path(item, a.args[0].as_string()));
      }
      PHILORA_ASSIGN_OR_RETURN(bool pass, run_test(subject, a, by_attr ? 1 : 0));
      if (pass == keep_if) out.push_back(item);
    }
    return Value::list(std::move(out));
  }
  if (name == "attr") {
    const Value* n = arg(a, 0, "name");
    if (!n || !n->is_string()) return Status::error("attr() needs a name");
    return get_attr(v, n->as_string());
  }
  if (name == "wordcount")
    return Value(static_cast<int64_t>(text::split(v.str(), std::nullopt, -1).size()));
  if (name == "center") {
    if (!v.is_string())
      return Status::errorf("'{}' object has no attribute 'center'", v.type_name());
    const int64_t width = arg(a, 0, "width") ? arg(a, 0, "width")->as_int() : 80;
    const std::string s = v.str();
    const int64_t n = static_cast<int64_t>(unicode::count_chars(s));
    if (n >= width) return Value(s);
    const int64_t total = width - n;
    const int64_t left = total / 2 + (total & width & 1);
    return Value(std::string(static_cast<size_t>(left), ' ') + s +
                 std::string(static_cast<size_t>(total - left), ' '));
  }
  return Status::errorf("filter '{}' is not supported", name);
}

}  // namespace philora::tokenizer::jinja
