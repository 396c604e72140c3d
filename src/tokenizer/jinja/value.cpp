#include "tokenizer/jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace philora::tokenizer::jinja {

// ---- containers ---------------------------------------------------------------------------------

const Value* DictData::find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

void DictData::set(const std::string& key, Value v) {
  for (auto& [k, old] : items) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  items.emplace_back(key, std::move(v));
}

const Value* CallArgs::kwarg(std::string_view name) const {
  for (const auto& [k, v] : kwargs)
    if (k == name) return &v;
  return nullptr;
}

// ---- construction -------------------------------------------------------------------------------

Value Value::undefined(std::string name) {
  Value v;
  v.s_ = std::make_shared<const std::string>(std::move(name));
  return v;
}

Value Value::none() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}

Value::Value(bool b) : kind_(Kind::kBool), b_(b) {}
Value::Value(int64_t i) : kind_(Kind::kInt), i_(i) {}
Value::Value(double d) : kind_(Kind::kFloat), f_(d) {}
Value::Value(std::string s)
    : kind_(Kind::kString), s_(std::make_shared<const std::string>(std::move(s))) {}

Value Value::list(std::vector<Value> items, bool tuple) {
  return sequence(std::move(items), tuple ? SeqKind::kTuple : SeqKind::kList);
}

Value Value::sequence(std::vector<Value> items, SeqKind kind) {
  Value v;
  v.kind_ = Kind::kList;
  v.list_ = std::make_shared<ListData>();
  v.list_->items = std::move(items);
  v.list_->kind = kind;
  v.list_->tuple = kind == SeqKind::kTuple;
  return v;
}

Value Value::range(int64_t start, int64_t stop, int64_t step) {
  std::vector<Value> items;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) items.emplace_back(i);
  Value v = sequence(std::move(items), SeqKind::kRange);
  v.list_->range_start = start;
  v.list_->range_stop = stop;
  v.list_->range_step = step;
  return v;
}

Value Value::dict(std::vector<std::pair<std::string, Value>> items) {
  Value v;
  v.kind_ = Kind::kDict;
  v.dict_ = std::make_shared<DictData>();
  v.dict_->items = std::move(items);
  return v;
}

Value Value::namespace_object(std::vector<std::pair<std::string, Value>> items) {
  Value v = dict(std::move(items));
  v.dict_->is_namespace = true;
  return v;
}

Value Value::callable(std::string name, std::function<Expected<Value>(const CallArgs&)> fn) {
  Value v;
  v.kind_ = Kind::kCallable;
  v.fn_ = std::make_shared<CallableData>(CallableData{std::move(name), std::move(fn)});
  return v;
}

Value Value::from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return none();
    case nlohmann::ordered_json::value_t::boolean:
      return Value(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
    case nlohmann::ordered_json::value_t::number_unsigned:
      return Value(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_float:
      return Value(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json(e));
      return list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      std::vector<std::pair<std::string, Value>> items;
      for (auto it = j.begin(); it != j.end(); ++it)
        items.emplace_back(it.key(), from_json(it.value()));
      return dict(std::move(items));
    }
    default:
      return none();
  }
}

// ---- Python text --------------------------------------------------------------------------------

std::u32string to_u32(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) out.push_back(unicode::decode(s, i));
  return out;
}

std::string from_u32(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) unicode::append_utf8(out, c);
  return out;
}

std::string python_float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // [-]d[.ddd]e[+-]xx
  const bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  const size_t epos = sci.find('e');
  std::string digits = sci.substr(0, epos);
  const int exp = std::stoi(sci.substr(epos + 1));
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  std::string out = neg ? "-" : "";
  if (exp >= -5 + 1 && exp < 16) {
    // Fixed notation, at least one digit after the point.
    if (exp < 0) {
      out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    } else if (static_cast<size_t>(exp) + 1 >= digits.size()) {
      out += digits + std::string(static_cast<size_t>(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, static_cast<size_t>(exp) + 1) + "." +
             digits.substr(static_cast<size_t>(exp) + 1);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  out += exp < 0 ? "e-" : "e+";
  const std::string e = std::to_string(std::abs(exp));
  out += (e.size() < 2 ? "0" : "") + e;
  return out;
}

namespace {

// Characters Python's repr() shows as escapes (str.isprintable() is false for them).
bool python_printable(uint32_t cp) {
  if (cp == ' ') return true;
  if (cp < 0x7F) return cp >= 0x20;
  static const auto re =
      Regex::compile("[\\p{Cc}\\p{Cf}\\p{Cs}\\p{Co}\\p{Cn}\\p{Zl}\\p{Zp}\\p{Zs}]");
  if (!re.ok()) return true;
  return !(*re)->matches_at_start(unicode::to_utf8(cp));
}

void append_json_string(std::string& out, std::string_view s) {
  out.push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
}

}  // namespace

std::string python_string_repr(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char q = has_single && !has_double ? '"' : '\'';
  std::string out(1, q);
  for (size_t i = 0; i < s.size();) {
    const uint32_t cp = unicode::decode(s, i);
    if (cp == static_cast<uint32_t>(q) || cp == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(cp));
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (!python_printable(cp)) {
      out += cp < 0x100     ? fmt::format("\\x{:02x}", cp)
             : cp < 0x10000 ? fmt::format("\\u{:04x}", cp)
                            : fmt::format("\\U{:08x}", cp);
    } else {
      unicode::append_utf8(out, cp);
    }
  }
  out.push_back(q);
  return out;
}

bool Value::truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return b_;
    case Kind::kInt:
      return i_ != 0;
    case Kind::kFloat:
      return f_ != 0;
    case Kind::kString:
      return !s_->empty();
    case Kind::kList:
      return !list_->items.empty();
    case Kind::kDict:
      return !dict_->items.empty();
    case Kind::kCallable:
      return true;
  }
  return false;
}

std::string Value::str() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "";
    case Kind::kString:
      return *s_;
    default:
      return repr();
  }
}

std::string Value::repr() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return b_ ? "True" : "False";
    case Kind::kInt:
      return std::to_string(i_);
    case Kind::kFloat:
      return python_float_repr(f_);
    case Kind::kString:
      return python_string_repr(*s_);
    case Kind::kList: {
      if (list_->kind == SeqKind::kRange) {
        std::string r = fmt::format("range({}, {}", list_->range_start, list_->range_stop);
        if (list_->range_step != 1) r += fmt::format(", {}", list_->range_step);
        return r + ")";
      }
      std::string out = list_->tuple ? "(" : "[";
      for (size_t i = 0; i < list_->items.size(); ++i) {
        if (i) out += ", ";
        out += list_->items[i].repr();
      }
      if (list_->tuple && list_->items.size() == 1) out += ",";
      out += list_->tuple ? ")" : "]";
      switch (list_->kind) {
        case SeqKind::kDictKeys:
          return "dict_keys(" + out + ")";
        case SeqKind::kDictValues:
          return "dict_values(" + out + ")";
        case SeqKind::kDictItems:
          return "dict_items(" + out + ")";
        default:
          return out;
      }
    }
    case Kind::kDict: {
      if (dict_->is_namespace) return "<Namespace>";
      std::string out = "{";
      for (size_t i = 0; i < dict_->items.size(); ++i) {
        if (i) out += ", ";
        out += python_string_repr(dict_->items[i].first) + ": " + dict_->items[i].second.repr();
      }
      return out + "}";
    }
    case Kind::kCallable:
      return "<function " + fn_->name + ">";
  }
  return "";
}

std::string Value::type_name() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kList:
      return list_->tuple ? "tuple" : "list";
    case Kind::kDict:
      return dict_->is_namespace ? "Namespace" : "dict";
    case Kind::kCallable:
      return "function";
  }
  return "?";
}

Expected<int64_t> Value::length() const {
  switch (kind_) {
    case Kind::kString:
      return static_cast<int64_t>(unicode::count_chars(*s_));
    case Kind::kList:
      return static_cast<int64_t>(list_->items.size());
    case Kind::kDict:
      return static_cast<int64_t>(dict_->items.size());
    case Kind::kUndefined:
      return int64_t{0};
    default:
      return Status::errorf("object of type '{}' has no len()", type_name());
  }
}

Expected<std::string> Value::to_json(int indent, bool sort_keys, const std::string* item_sep,
                                     const std::string* key_sep) const {
  const std::string isep = item_sep ? *item_sep : (indent >= 0 ? "," : ", ");
  const std::string ksep = key_sep ? *key_sep : ": ";
  std::string out;
  std::function<Status(const Value&, int)> emit = [&](const Value& v, int depth) -> Status {
    auto newline = [&](int d) {
      if (indent < 0) return;
      out.push_back('\n');
      out.append(static_cast<size_t>(indent * d), ' ');
    };
    switch (v.kind_) {
      case Kind::kNone:
        out += "null";
        return Status();
      case Kind::kBool:
        out += v.b_ ? "true" : "false";
        return Status();
      case Kind::kInt:
        out += std::to_string(v.i_);
        return Status();
      case Kind::kFloat:
        if (std::isnan(v.f_)) {
          out += "NaN";
        } else if (std::isinf(v.f_)) {
          out += v.f_ > 0 ? "Infinity" : "-Infinity";
        } else {
          out += python_float_repr(v.f_);
        }
        return Status();
      case Kind::kString:
        append_json_string(out, *v.s_);
        return Status();
      case Kind::kList: {
        if (v.list_->kind != SeqKind::kList && v.list_->kind != SeqKind::kTuple) {
          return Status::errorf("Object of type {} is not JSON serializable", v.type_name());
        }
        if (v.list_->items.empty()) {
          out += "[]";
          return Status();
        }
        out.push_back('[');
        for (size_t i = 0; i < v.list_->items.size(); ++i) {
          if (i) out += isep;
          newline(depth + 1);
          PHILORA_RETURN_IF_ERROR(emit(v.list_->items[i], depth + 1));
        }
        newline(depth);
        out.push_back(']');
        return Status();
      }
      case Kind::kDict: {
        if (v.dict_->items.empty()) {
          out += "{}";
          return Status();
        }
        std::vector<const std::pair<std::string, Value>*> items;
        for (const auto& kv : v.dict_->items) items.push_back(&kv);
        if (sort_keys) {
          std::stable_sort(items.begin(), items.end(),
                           [](auto* a, auto* b) { return a->first < b->first; });
        }
        out.push_back('{');
        for (size_t i = 0; i < items.size(); ++i) {
          if (i) out += isep;
          newline(depth + 1);
          append_json_string(out, items[i]->first);
          out += ksep;
          PHILORA_RETURN_IF_ERROR(emit(items[i]->second, depth + 1));
        }
        newline(depth);
        out.push_back('}');
        return Status();
      }
      case Kind::kUndefined:
        return Status::errorf("tojson: '{}' is undefined", *v.s_);
      case Kind::kCallable:
        return Status::error("tojson: a function is not JSON serializable");
    }
    return Status();
  };
  PHILORA_RETURN_IF_ERROR(emit(*this, 0));
  return out;
}

// ---- comparisons --------------------------------------------------------------------------------

bool equals(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.kind() == K::kFloat || b.kind() == K::kFloat) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::kUndefined:
    case K::kNone:
      return true;
    case K::kString:
      return a.as_string() == b.as_string();
    case K::kList: {
      const auto& x = a.as_list().items;
      const auto& y = b.as_list().items;
      const SeqKind ka = a.as_list().kind, kb = b.as_list().kind;
      if (ka != kb) return false;
      if (ka == SeqKind::kDictValues)
        return &a.as_list() == &b.as_list();  // values views: identity
      if (x.size() != y.size()) return false;
      if (ka == SeqKind::kDictKeys || ka == SeqKind::kDictItems) {  // set-like
        for (const Value& e : x)
          if (std::none_of(y.begin(), y.end(), [&](const Value& f) { return equals(e, f); }))
            return false;
        return true;
      }
      for (size_t i = 0; i < x.size(); ++i)
        if (!equals(x[i], y[i])) return false;
      return true;
    }
    case K::kDict: {
      const auto& x = a.as_dict().items;
      const auto& y = b.as_dict();
      if (x.size() != y.items.size()) return false;
      for (const auto& [k, v] : x) {
        const Value* w = y.find(k);
        if (!w || !equals(v, *w)) return false;
      }
      return true;
    }
    case K::kCallable:
      return &a.as_callable() == &b.as_callable();
    default:
      return false;
  }
}

Expected<bool> less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind() == Value::Kind::kFloat || b.kind() == Value::Kind::kFloat)
      return a.as_double() < b.as_double();
    return a.as_int() < b.as_int();
  }
  if (a.is_string() && b.is_string())
    return a.as_string() < b.as_string();  // UTF-8 order is code point order
  if (a.is_list() && b.is_list() && a.as_list().kind == b.as_list().kind &&
      (a.as_list().kind == SeqKind::kList || a.as_list().kind == SeqKind::kTuple)) {
    const auto& x = a.as_list().items;
    const auto& y = b.as_list().items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (equals(x[i], y[i])) continue;
      return less(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  return Status::errorf("'<' not supported between instances of '{}' and '{}'", a.type_name(),
                        b.type_name());
}

bool hashable(const Value& v) {
  if (v.is_dict()) return false;
  if (!v.is_list()) return true;
  const ListData& l = v.as_list();
  if (l.kind == SeqKind::kRange) return true;
  if (l.kind != SeqKind::kTuple) return false;
  for (const Value& e : l.items)
    if (!hashable(e)) return false;
  return true;
}

Expected<bool> contains(const Value& haystack, const Value& needle) {
  switch (haystack.kind()) {
    case Value::Kind::kString:
      if (!needle.is_string()) {
        return Status::errorf("'in <string>' requires string as left operand, not {}",
                              needle.type_name());
      }
      return haystack.as_string().find(needle.as_string()) != std::string::npos;
    case Value::Kind::kList:
      for (const Value& v : haystack.as_list().items)
        if (equals(v, needle)) return true;
      return false;
    case Value::Kind::kDict:
      if (!hashable(needle)) return Status::errorf("unhashable type: '{}'", needle.type_name());
      return needle.is_string() && haystack.as_dict().find(needle.as_string()) != nullptr;
    case Value::Kind::kUndefined:
      return false;  // Jinja's Undefined iterates as empty
    default:
      return Status::errorf("argument of type '{}' is not iterable", haystack.type_name());
  }
}

}  // namespace philora::tokenizer::jinja
