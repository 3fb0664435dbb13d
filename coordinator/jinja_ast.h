// The tree a chat template parses to: expressions (Expr) and the statements around them
// (JinjaTemplate::Node: text, output, if, for, set, a body). Built by jinja_parser, walked
// by the evaluator in jinja.cpp.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/jinja.h"

namespace llava::jinja {

struct Expr;
using ExprPtr = std::shared_ptr<const Expr>;

struct Expr {
  enum Kind {
    kLiteral,
    kVar,
    kAttr,
    kIndex,
    kCall,
    kFilter,
    kTest,
    kNot,
    kNeg,
    kBinary,
    kCond,
    kList,
    kDict
  };
  Kind kind;
  nlohmann::json literal;
  std::string name;           // var, attr, filter, test, binary operator
  std::vector<ExprPtr> args;  // operands / call or filter arguments (object first)
  bool negated = false;       // `is not`, `not in`
  int line = 0;
  int depth = 1;  // of the tree below: at most kMaxNesting (jinja_parser.cpp)
};

}  // namespace llava::jinja

namespace llava {

struct JinjaTemplate::Node {
  enum Kind { kText, kOutput, kIf, kFor, kSet, kBody };
  Kind kind = kBody;
  std::string text;
  jinja::ExprPtr expr;                                                 // output, set
  std::vector<std::pair<jinja::ExprPtr, std::vector<Node>>> branches;  // if: (cond or null, body)
  std::string var, var2;                                               // for / set targets
  jinja::ExprPtr iterable, filter;                                     // for
  std::vector<Node> body, else_body;                                   // for
};

}  // namespace llava

namespace llava::jinja {
using Node = JinjaTemplate::Node;
}  // namespace llava::jinja
