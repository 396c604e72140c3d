// Errors are values: library code returns Status or Expected<T> and never exits.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace philora {

// A failed operation carries one human-readable message naming what went wrong
// (file, tensor, expected vs found).
class Status {
 public:
  Status() = default;
  static Status error(std::string message) { return Status(std::move(message)); }
  template <typename... Args>
  static Status errorf(fmt::format_string<Args...> f, Args&&... args) {
    return Status(fmt::format(f, std::forward<Args>(args)...));
  }

  bool ok() const { return !message_.has_value(); }
  explicit operator bool() const { return ok(); }
  const std::string& message() const {
    static const std::string kOk = "ok";
    return message_ ? *message_ : kOk;
  }
  // Prefixes context onto an error ("loading adapter x: ...").
  Status with_context(const std::string& context) const {
    return ok() ? *this : Status(context + ": " + *message_);
  }

 private:
  explicit Status(std::string m) : message_(std::move(m)) {}
  std::optional<std::string> message_;
};

// A value or an error (std::expected is C++23; this is the subset we need).
template <typename T>
class Expected {
 public:
  Expected(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Expected(Status error) : v_(std::move(error)) { assert(!std::get<Status>(v_).ok()); }  // NOLINT

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace philora

// Propagates an error Status from an expression returning Status.
#define PHILORA_RETURN_IF_ERROR(expr) \
  do {                                \
    ::philora::Status _st = (expr);   \
    if (!_st.ok()) return _st;        \
  } while (0)

#define PHILORA_CONCAT_INNER(a, b) a##b
#define PHILORA_CONCAT(a, b) PHILORA_CONCAT_INNER(a, b)
// `PHILORA_ASSIGN_OR_RETURN(auto x, f())`: binds the value or returns the error.
#define PHILORA_ASSIGN_OR_RETURN(decl, expr) \
  PHILORA_ASSIGN_OR_RETURN_IMPL(PHILORA_CONCAT(_exp_, __LINE__), decl, expr)
#define PHILORA_ASSIGN_OR_RETURN_IMPL(tmp, decl, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return tmp.status();                  \
  decl = std::move(tmp).value()
