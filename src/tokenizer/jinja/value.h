// Values of the Jinja subset, with Python's semantics where a chat template can observe them:
// str() and repr() text, truthiness, equality (1 == 1.0 == True), ordering, `in`, and JSON.
// Lists and dicts are shared and immutable (HF renders in Jinja's immutable sandbox); only a
// namespace() object can be assigned to ({% set ns.x = ... %}).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace philora::tokenizer::jinja {

class Value;

// A Python sequence. Besides lists and tuples, dict views and ranges print, compare and index
// the way Python's do ("dict_items([...])", "range(0, 3)", views are not subscriptable).
enum class SeqKind { kList, kTuple, kDictKeys, kDictValues, kDictItems, kRange };

struct ListData {
  std::vector<Value> items;
  bool tuple = false;  // kind == kTuple (kept for brevity at call sites)
  SeqKind kind = SeqKind::kList;
  int64_t range_start = 0, range_stop = 0, range_step = 1;  // kind == kRange
};

// An insertion-ordered dict with string keys (what chat templates use).
struct DictData {
  std::vector<std::pair<std::string, Value>> items;
  bool is_namespace = false;  // namespace(): attributes may be assigned
  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value v);
};

// Arguments of a call: positional, then keyword.
struct CallArgs {
  std::vector<Value> args;
  std::vector<std::pair<std::string, Value>> kwargs;
  const Value* kwarg(std::string_view name) const;
};

struct CallableData {
  std::string name;
  std::function<Expected<Value>(const CallArgs&)> fn;
};

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kCallable };

  Value() = default;  // undefined
  static Value undefined(std::string name = {});
  static Value none();
  Value(bool b);                                    // NOLINT
  Value(int64_t i);                                 // NOLINT
  Value(int i) : Value(static_cast<int64_t>(i)) {}  // NOLINT
  Value(double d);                                  // NOLINT
  Value(std::string s);                             // NOLINT
  Value(const char* s) : Value(std::string(s)) {}   // NOLINT
  static Value list(std::vector<Value> items, bool tuple = false);
  static Value sequence(std::vector<Value> items, SeqKind kind);
  static Value range(int64_t start, int64_t stop, int64_t step);
  static Value dict(std::vector<std::pair<std::string, Value>> items = {});
  static Value namespace_object(std::vector<std::pair<std::string, Value>> items = {});
  static Value callable(std::string name, std::function<Expected<Value>(const CallArgs&)> fn);
  // JSON -> Value (objects keep their key order).
  static Value from_json(const nlohmann::ordered_json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_number() const {
    return kind_ == Kind::kInt || kind_ == Kind::kFloat || kind_ == Kind::kBool;
  }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_callable() const { return kind_ == Kind::kCallable; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return kind_ == Kind::kBool ? (b_ ? 1 : 0) : i_; }
  double as_double() const { return kind_ == Kind::kFloat ? f_ : static_cast<double>(as_int()); }
  const std::string& as_string() const { return *s_; }
  const ListData& as_list() const { return *list_; }
  const DictData& as_dict() const { return *dict_; }
  DictData& mutable_dict() const { return *dict_; }  // namespaces only
  const CallableData& as_callable() const { return *fn_; }
  // The name an undefined value was looked up by (for error messages).
  const std::string& undefined_name() const { return *s_; }

  // Python truthiness.
  bool truthy() const;
  // str(value) as Jinja prints it ({{ x }}); undefined prints as "".
  std::string str() const;
  // repr(value) (used inside list and dict text).
  std::string repr() const;
  // json.dumps(value, ensure_ascii=False, indent=..., separators=..., sort_keys=...).
  Expected<std::string> to_json(int indent, bool sort_keys, const std::string* item_sep,
                                const std::string* key_sep) const;
  // Python type name, for error messages ("str", "int", "dict", ...).
  std::string type_name() const;
  // Length in Python terms (code points for strings); error for other kinds.
  Expected<int64_t> length() const;

 private:
  Kind kind_ = Kind::kUndefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<const std::string> s_;
  std::shared_ptr<ListData> list_;
  std::shared_ptr<DictData> dict_;
  std::shared_ptr<CallableData> fn_;
};

// Python ==.
bool equals(const Value& a, const Value& b);
// Python <, or an error for unorderable kinds.
Expected<bool> less(const Value& a, const Value& b);
// Python's hash(): lists, dicts and dict views are unhashable (tuples are if their items are).
bool hashable(const Value& v);
// Python `needle in haystack`.
Expected<bool> contains(const Value& haystack, const Value& needle);

// Python float repr (shortest round trip: 1.0, 0.1, 1e-05, 1e+16).
std::string python_float_repr(double d);
// Python repr of a str ('it''s' -> "it's").
std::string python_string_repr(std::string_view s);

// Unicode helpers over UTF-8 text.
std::u32string to_u32(std::string_view s);
std::string from_u32(std::u32string_view s);

}  // namespace philora::tokenizer::jinja
