#include "tokenizer/jinja/interpreter.h"

#include <unordered_map>
#include <unordered_set>

#include "tokenizer/jinja/builtins.h"

namespace philora::tokenizer::jinja {

namespace {

enum class Flow { kNormal, kBreak, kContinue };

class Interpreter {
 public:
  explicit Interpreter(std::vector<std::pair<std::string, Value>> vars) {
    scopes_.emplace_back();
    for (auto& [k, v] : vars) scopes_.back()[k] = std::move(v);
  }
  // A namespace assigned a value that reaches it (`{% set ns.x = ns %}`, or
  // through a list or another namespace) holds itself; Python's collector
  // frees such cycles, shared pointers do not: the namespaces assigned to are
  // emptied when the render ends, which breaks every cycle.
  ~Interpreter() {
    for (const Value& ns : assigned_namespaces_) ns.mutable_dict().items.clear();
  }
  Interpreter(const Interpreter&) = delete;
  Interpreter& operator=(const Interpreter&) = delete;

  Expected<Flow> exec(const Body& body, std::string& out) {
    for (const StmtPtr& s : body) {
      auto flow = exec(*s, out);
      if (!flow.ok()) return flow.status();
      if (*flow != Flow::kNormal) return *flow;
    }
    return Flow::kNormal;
  }

 private:
  using Scope = std::unordered_map<std::string, Value>;

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return Value::undefined(name);
  }

  Expected<Flow> exec(const Stmt& s, std::string& out) {
    auto r = exec_inner(s, out);
    if (!r.ok() && r.status().message().rfind("line ", 0) != 0) {
      return r.status().with_context(fmt::format("line {}", s.line));
    }
    return r;
  }

  Expected<Flow> exec_inner(const Stmt& s, std::string& out) {
    switch (s.kind) {
      case Stmt::Kind::kText:
        out += s.text;
        return Flow::kNormal;
      case Stmt::Kind::kPrint: {
        PHILORA_ASSIGN_OR_RETURN(Value v, eval(*s.expr));
        out += v.str();
        return Flow::kNormal;
      }
      case Stmt::Kind::kIf:
        for (size_t i = 0; i < s.conds.size(); ++i) {
          PHILORA_ASSIGN_OR_RETURN(Value c, eval(*s.conds[i]));
          if (c.truthy()) return exec(s.bodies[i], out);
        }
        return exec(s.else_body, out);
      case Stmt::Kind::kFor:
        return exec_for(s, out);
      case Stmt::Kind::kSet: {
        PHILORA_ASSIGN_OR_RETURN(Value v, eval(*s.expr));
        PHILORA_RETURN_IF_ERROR(assign(s.targets, std::move(v)));
        return Flow::kNormal;
      }
      case Stmt::Kind::kSetBlock: {
        std::string captured;
        PHILORA_ASSIGN_OR_RETURN(Flow f, exec(s.bodies[0], captured));
        (void)f;
        Value v(std::move(captured));
        if (s.expr) {
          PHILORA_ASSIGN_OR_RETURN(v, apply_filters(*s.expr, std::move(v)));
        }
        PHILORA_RETURN_IF_ERROR(assign(s.targets, std::move(v)));
        return Flow::kNormal;
      }
      case Stmt::Kind::kFilterBlock: {
        std::string captured;
        PHILORA_ASSIGN_OR_RETURN(Flow f, exec(s.bodies[0], captured));
        PHILORA_ASSIGN_OR_RETURN(Value v, apply_filters(*s.expr, Value(std::move(captured))));
        out += v.str();
        return f;
      }
      case Stmt::Kind::kMacro:
        scopes_.back()[s.name] = make_macro(s);
        return Flow::kNormal;
      case Stmt::Kind::kBreak:
        if (loop_depth_ == 0) return Status::error("'break' outside a loop");
        return Flow::kBreak;
      case Stmt::Kind::kContinue:
        if (loop_depth_ == 0) return Status::error("'continue' outside a loop");
        return Flow::kContinue;
      case Stmt::Kind::kScope:
        return exec(s.bodies[0], out);
    }
    return Flow::kNormal;
  }

  Status assign(const std::vector<std::string>& targets, Value v) {
    if (targets.size() == 1) {
      scopes_.back()[targets[0]] = std::move(v);
      return Status();
    }
    Value ns = lookup(targets[0]);
    if (!ns.is_dict() || !ns.as_dict().is_namespace) {
      return Status::errorf("cannot assign attribute on non-namespace object '{}'", targets[0]);
    }
    if (assigned_.insert(&ns.mutable_dict()).second) assigned_namespaces_.push_back(ns);
    ns.mutable_dict().set(targets[1], std::move(v));
    return Status();
  }

  // Binds the loop targets of `s` to `item` in the innermost scope.
  Status bind_targets(const Stmt& s, const Value& item) {
    if (s.targets.size() == 1) {
      scopes_.back()[s.targets[0]] = item;
      return Status();
    }
    if (!item.is_list() || item.as_list().items.size() != s.targets.size()) {
      return Status::errorf("cannot unpack {} into {} loop variables", item.repr(),
                            s.targets.size());
    }
    for (size_t k = 0; k < s.targets.size(); ++k)
      scopes_.back()[s.targets[k]] = item.as_list().items[k];
    return Status();
  }

  Expected<Flow> exec_for(const Stmt& s, std::string& out) {
    PHILORA_ASSIGN_OR_RETURN(Value seq, eval(*s.expr));
    PHILORA_ASSIGN_OR_RETURN(std::vector<Value> items, iterate(seq));
    if (s.cond) {
      std::vector<Value> kept;
      for (const Value& item : items) {
        scopes_.emplace_back();
        Status st = bind_targets(s, item);
        auto c = st.ok() ? eval(*s.cond) : Expected<Value>(st);
        scopes_.pop_back();
        if (!c.ok()) return c.status();
        if (c->truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return exec(s.else_body, out);
    const auto n = static_cast<int64_t>(items.size());
    ++loop_depth_;
    Flow result = Flow::kNormal;
    for (int64_t i = 0; i < n; ++i) {
      scopes_.emplace_back();
      Value loop =
          Value::dict({{"index", Value(i + 1)},
                       {"index0", Value(i)},
                       {"revindex", Value(n - i)},
                       {"revindex0", Value(n - i - 1)},
                       {"first", Value(i == 0)},
                       {"last", Value(i == n - 1)},
                       {"length", Value(n)},
                       {"depth", Value(int64_t{1})},
                       {"depth0", Value(int64_t{0})},
                       {"previtem", i > 0 ? items[static_cast<size_t>(i - 1)]
                                          : Value::undefined("there is no previous item")},
                       {"nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)]
                                              : Value::undefined("there is no next item")}});
      const int64_t index = i;
      loop.mutable_dict().set(
          "cycle", Value::callable("cycle", [index](const CallArgs& a) -> Expected<Value> {
            if (a.args.empty()) return Status::error("loop.cycle() needs arguments");
            return a.args[static_cast<size_t>(index) % a.args.size()];
          }));
      scopes_.back()["loop"] = loop;
      Status st = bind_targets(s, items[static_cast<size_t>(i)]);
      if (!st.ok()) {
        scopes_.pop_back();
        --loop_depth_;
        return st;
      }
      auto flow = exec(s.bodies[0], out);
      scopes_.pop_back();
      if (!flow.ok()) {
        --loop_depth_;
        return flow.status();
      }
      if (*flow == Flow::kBreak) break;
    }
    --loop_depth_;
    return result;
  }

  Value make_macro(const Stmt& s) {
    const Stmt* def = &s;
    return Value::callable(s.name, [this, def](const CallArgs& a) -> Expected<Value> {
      if (a.args.size() > def->params.size())
        return Status::errorf("macro '{}' takes {} arguments", def->name, def->params.size());
      Scope scope;
      for (size_t k = 0; k < def->params.size(); ++k) {
        if (k < a.args.size()) {
          scope[def->params[k]] = a.args[k];
        } else if (const Value* kw = a.kwarg(def->params[k])) {
          scope[def->params[k]] = *kw;
        } else if (def->defaults[k]) {
          PHILORA_ASSIGN_OR_RETURN(Value d, eval(*def->defaults[k]));
          scope[def->params[k]] = d;
        } else {
          scope[def->params[k]] = Value::undefined(def->params[k]);
        }
      }
      for (const auto& [k, v] : a.kwargs) {
        if (std::find(def->params.begin(), def->params.end(), k) == def->params.end()) {
          return Status::errorf("macro '{}' has no argument '{}'", def->name, k);
        }
      }
      // Python stops runaway recursion with a RecursionError; so do we, sooner.
      if (call_depth_ >= kMaxCallDepth)
        return Status::errorf("macro '{}': calls nested more than {} deep", def->name,
                              kMaxCallDepth);
      ++call_depth_;
      struct Leave {
        int& depth;
        ~Leave() { --depth; }
      } leave{call_depth_};
      // A macro sees the template's top-level variables and its arguments.
      std::vector<Scope> saved(scopes_.begin() + 1, scopes_.end());
      scopes_.resize(1);
      scopes_.push_back(std::move(scope));
      const int saved_depth = loop_depth_;
      loop_depth_ = 0;
      std::string out;
      auto flow = exec(def->bodies[0], out);
      loop_depth_ = saved_depth;
      scopes_.resize(1);
      for (auto& sc : saved) scopes_.push_back(std::move(sc));
      if (!flow.ok()) return flow.status();
      return Value(std::move(out));
    });
  }

  // Applies a filter chain whose innermost subject is null to `v`.
  Expected<Value> apply_filters(const Expr& chain, Value v) {
    if (chain.kind != Expr::Kind::kFilter) return Status::error("expected a filter");
    if (chain.args[0]) {
      PHILORA_ASSIGN_OR_RETURN(v, apply_filters(*chain.args[0], std::move(v)));
    }
    PHILORA_ASSIGN_OR_RETURN(CallArgs args, eval_args(chain, 1));
    return call_filter(chain.name, v, args);
  }

  Expected<CallArgs> eval_args(const Expr& e, size_t first) {
    CallArgs a;
    for (size_t i = first; i < e.args.size(); ++i) {
      PHILORA_ASSIGN_OR_RETURN(Value v, eval(*e.args[i]));
      a.args.push_back(std::move(v));
    }
    for (const auto& [k, x] : e.kwargs) {
      PHILORA_ASSIGN_OR_RETURN(Value v, eval(*x));
      a.kwargs.emplace_back(k, std::move(v));
    }
    return a;
  }

  Expected<Value> eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kConst:
        return e.value;
      case Expr::Kind::kName:
        return lookup(e.name);
      case Expr::Kind::kList:
      case Expr::Kind::kTuple: {
        std::vector<Value> items;
        for (const ExprPtr& x : e.args) {
          PHILORA_ASSIGN_OR_RETURN(Value v, eval(*x));
          items.push_back(std::move(v));
        }
        return Value::list(std::move(items), e.kind == Expr::Kind::kTuple);
      }
      case Expr::Kind::kDict: {
        Value d = Value::dict();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          PHILORA_ASSIGN_OR_RETURN(Value k, eval(*e.args[i]));
          PHILORA_ASSIGN_OR_RETURN(Value v, eval(*e.args[i + 1]));
          if (!k.is_string())
            return Status::errorf("line {}: dict keys must be strings here, not {}", e.line,
                                  k.type_name());
          d.mutable_dict().set(k.as_string(), std::move(v));
        }
        return d;
      }
      case Expr::Kind::kGetattr: {
        PHILORA_ASSIGN_OR_RETURN(Value obj, eval(*e.args[0]));
        return get_attr(obj, e.name);
      }
      case Expr::Kind::kGetitem: {
        PHILORA_ASSIGN_OR_RETURN(Value obj, eval(*e.args[0]));
        const Expr& index = *e.args[1];
        if (index.kind == Expr::Kind::kSlice) {
          std::optional<int64_t> part[3];
          for (int k = 0; k < 3; ++k) {
            if (!index.args[k]) continue;
            PHILORA_ASSIGN_OR_RETURN(Value v, eval(*index.args[k]));
            if (v.is_none()) continue;
            if (v.kind() != Value::Kind::kInt && v.kind() != Value::Kind::kBool) {
              return Status::errorf("slice indices must be integers or None, not {}",
                                    v.type_name());
            }
            part[k] = v.as_int();
          }
          return get_slice(obj, part[0], part[1], part[2]);
        }
        PHILORA_ASSIGN_OR_RETURN(Value key, eval(index));
        return get_item(obj, key);
      }
      case Expr::Kind::kSlice:
        return Status::error("a slice is only valid inside []");
      case Expr::Kind::kCall: {
        PHILORA_ASSIGN_OR_RETURN(Value callee, eval(*e.args[0]));
        if (callee.is_undefined()) return undefined_error(callee);
        if (!callee.is_callable())
          return Status::errorf("'{}' object is not callable", callee.type_name());
        PHILORA_ASSIGN_OR_RETURN(CallArgs args, eval_args(e, 1));
        return callee.as_callable().fn(args);
      }
      case Expr::Kind::kFilter: {
        PHILORA_ASSIGN_OR_RETURN(Value subject, eval(*e.args[0]));
        PHILORA_ASSIGN_OR_RETURN(CallArgs args, eval_args(e, 1));
        return call_filter(e.name, subject, args);
      }
      case Expr::Kind::kTest: {
        PHILORA_ASSIGN_OR_RETURN(Value subject, eval(*e.args[0]));
        PHILORA_ASSIGN_OR_RETURN(CallArgs args, eval_args(e, 1));
        PHILORA_ASSIGN_OR_RETURN(bool r, call_test(e.name, subject, args));
        return Value(r != e.negated);
      }
      case Expr::Kind::kNot: {
        PHILORA_ASSIGN_OR_RETURN(Value v, eval(*e.args[0]));
        return Value(!v.truthy());
      }
      case Expr::Kind::kNeg:
      case Expr::Kind::kPos: {
        PHILORA_ASSIGN_OR_RETURN(Value v, eval(*e.args[0]));
        if (v.is_undefined()) return undefined_error(v);
        if (!v.is_number())
          return Status::errorf("bad operand type for unary -: '{}'", v.type_name());
        if (e.kind == Expr::Kind::kPos)
          return v.kind() == Value::Kind::kFloat ? v : Value(v.as_int());
        return v.kind() == Value::Kind::kFloat ? Value(-v.as_double()) : Value(-v.as_int());
      }
      case Expr::Kind::kBinary: {
        PHILORA_ASSIGN_OR_RETURN(Value a, eval(*e.args[0]));
        if (e.name == "and") {
          if (!a.truthy()) return a;
          return eval(*e.args[1]);
        }
        if (e.name == "or") {
          if (a.truthy()) return a;
          return eval(*e.args[1]);
        }
        PHILORA_ASSIGN_OR_RETURN(Value b, eval(*e.args[1]));
        return binary_op(e.name, a, b);
      }
      case Expr::Kind::kConcat: {
        std::string s;
        for (const ExprPtr& x : e.args) {
          PHILORA_ASSIGN_OR_RETURN(Value v, eval(*x));
          s += v.str();
        }
        return Value(std::move(s));
      }
      case Expr::Kind::kCompare: {
        PHILORA_ASSIGN_OR_RETURN(Value left, eval(*e.args[0]));
        for (size_t i = 0; i < e.ops.size(); ++i) {
          PHILORA_ASSIGN_OR_RETURN(Value right, eval(*e.args[i + 1]));
          PHILORA_ASSIGN_OR_RETURN(bool ok, compare_op(e.ops[i], left, right));
          if (!ok) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::Kind::kCondExpr: {
        PHILORA_ASSIGN_OR_RETURN(Value test, eval(*e.args[1]));
        if (test.truthy()) return eval(*e.args[0]);
        if (e.args[2]) return eval(*e.args[2]);
        return Value::undefined("the inline if-expression on line " + std::to_string(e.line) +
                                " evaluated to false");
      }
    }
    return Status::error("unknown expression");
  }

  std::vector<Scope> scopes_;
  std::vector<Value> assigned_namespaces_;  // emptied at the end (see ~Interpreter)
  std::unordered_set<const DictData*> assigned_;
  int loop_depth_ = 0;
  static constexpr int kMaxCallDepth = 64;
  int call_depth_ = 0;  // macro calls in progress
};

}  // namespace

Expected<std::string> render(const Body& body,
                             std::vector<std::pair<std::string, Value>> variables) {
  Interpreter in(std::move(variables));
  std::string out;
  PHILORA_ASSIGN_OR_RETURN(Flow f, in.exec(body, out));
  (void)f;
  return out;
}

}  // namespace philora::tokenizer::jinja
