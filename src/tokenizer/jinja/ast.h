// Syntax tree of the Jinja subset (see parser.h for what parses).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace philora::tokenizer::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kConst,     // value
    kName,      // name
    kList,      // args = items
    kTuple,     // args = items
    kDict,      // args = keys and values interleaved
    kGetattr,   // args[0] . name
    kGetitem,   // args[0] [ args[1] ]
    kSlice,     // args = start, stop, step (nullptr when absent)
    kCall,      // args[0] ( args[1..], kwargs )
    kFilter,    // name, args[0] = subject (nullptr inside {% filter %}), args[1..], kwargs
    kTest,      // name, args[0] = subject, args[1..]; negated
    kNot,       // args[0]
    kNeg,       // args[0]
    kPos,       // args[0]
    kBinary,    // op, args[0], args[1]: + - * / // % ** and or
    kConcat,    // args (~)
    kCompare,   // args[0], then ops[i] applied to args[i + 1]
    kCondExpr,  // args = then, test, else (else may be nullptr)
  };
  Kind kind;
  int line = 0;
  Value value;
  std::string name;  // name, attribute, filter/test name, or binary operator
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // compare operators
  bool negated = false;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind {
    kText,         // text
    kPrint,        // expr
    kIf,           // conds[i] guards bodies[i]; else_body
    kFor,          // targets, expr = iterable, cond = loop filter, bodies[0], else_body
    kSet,          // targets (one name, or "ns.attr" as two parts), expr
    kSetBlock,     // targets, bodies[0], expr = filter chain applied (may be null)
    kMacro,        // name, params, defaults, bodies[0]
    kFilterBlock,  // expr = filter chain with a null subject, bodies[0]
    kBreak,
    kContinue,
    kScope,  // bodies[0] rendered as is ({% generation %})
  };
  Kind kind;
  int line = 0;
  std::string text;
  std::string name;
  ExprPtr expr;
  ExprPtr cond;
  std::vector<ExprPtr> conds;
  std::vector<Body> bodies;
  Body else_body;
  std::vector<std::string> targets;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // one per param, nullptr when none
};

}  // namespace philora::tokenizer::jinja
