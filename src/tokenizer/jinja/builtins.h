// Operators, attribute and item access, filters, tests, methods and globals of the Jinja subset,
// following Jinja2 3.1 in the environment HF renders chat templates in (its own tojson filter,
// raise_exception, strftime_now, loop controls). An unsupported filter, test or method is an
// error naming it.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace philora::tokenizer::jinja {

// obj.name: methods and attributes first, then the item `name` (Jinja's environment.getattr).
Expected<Value> get_attr(const Value& obj, const std::string& name);
// obj[key]: the item first, then the attribute for a string key (environment.getitem).
Expected<Value> get_item(const Value& obj, const Value& key);
// obj[start:stop:step] on strings and lists.
Expected<Value> get_slice(const Value& obj, std::optional<int64_t> start,
                          std::optional<int64_t> stop, std::optional<int64_t> step);

// Python arithmetic and concatenation: + - * / // % **.
Expected<Value> binary_op(const std::string& op, const Value& a, const Value& b);
// Python comparison: == != < > <= >= in notin.
Expected<bool> compare_op(const std::string& op, const Value& a, const Value& b);
// The items a for loop visits: list items, dict keys, string characters; undefined is empty.
Expected<std::vector<Value>> iterate(const Value& v);

Expected<Value> call_filter(const std::string& name, const Value& subject, const CallArgs& args);
Expected<bool> call_test(const std::string& name, const Value& subject, const CallArgs& args);

// range, dict, namespace, raise_exception, strftime_now.
std::vector<std::pair<std::string, Value>> default_globals();

// Error for using an undefined value (Jinja's UndefinedError text).
Status undefined_error(const Value& v);

}  // namespace philora::tokenizer::jinja
