// The Jinja subset's evaluator: the tree of jinja_ast.h walked over a scope of JSON values.
// The pieces before it: jinja_lexer (text and tags, tokens), jinja_parser (the tree, names
// checked), jinja_value (Python's semantics of values), jinja_builtins (filters, tests...).
#include "coordinator/jinja.h"

#include <map>
#include <vector>

#include "coordinator/jinja_ast.h"
#include "coordinator/jinja_builtins.h"
#include "coordinator/jinja_parser.h"
#include "coordinator/jinja_value.h"

namespace llava {
namespace jinja {
namespace {

using Scope = std::vector<std::map<std::string, Value>>;

// A variable, innermost frame first; nullptr when no frame has it.
const Value* find_variable(const Scope& scope, const std::string& name) {
  for (auto it = scope.rbegin(); it != scope.rend(); ++it) {
    auto found = it->find(name);
    if (found != it->end()) return &found->second;
  }
  return nullptr;
}

Value lookup(const Scope& scope, const std::string& name) {
  const Value* found = find_variable(scope, name);
  return found ? *found : Value::none();
}

Value eval(const Expr& e, Scope& scope);

// Where a variable, or a member or item of one (messages[i]['role'], message.content), or a
// literal lies: nullptr when it is undefined. `made` when it is computed instead (another
// expression, a string's character): eval then makes it. Taking a member from a copy of the
// variable made a loop over messages that reads messages[...] quadratic.
const json* in_scope(const Expr& e, Scope& scope, bool& made) {
  if (e.kind == Expr::kLiteral) return &e.literal;  // where the tree keeps it
  if (e.kind == Expr::kVar) {
    const Value* found = find_variable(scope, e.name);
    return found == nullptr || found->undefined ? nullptr : &found->j;
  }
  if (e.kind != Expr::kAttr && e.kind != Expr::kIndex) {
    made = true;
    return nullptr;
  }
  const json* object = in_scope(*e.args[0], scope, made);
  if (made || object == nullptr) return nullptr;
  if (object->is_string()) {
    made = true;
    return nullptr;
  }
  if (e.kind == Expr::kAttr) return member_in(*object, json(e.name));
  const Value index = eval(*e.args[1], scope);
  return index.undefined ? nullptr : member_in(*object, index.j);
}

// An operand of a filter, test, method, operator or condition: where it lies when it is a
// variable or a member of one (no copy), else made into `made`.
ValueRef operand(const Expr& e, Scope& scope, Value& made) {
  bool computed = false;
  const json* found = in_scope(e, scope, computed);
  if (!computed) return ValueRef(found);
  made = eval(e, scope);
  return made;
}

// A condition's truth, without copying what it reads.
bool holds(const Expr& e, Scope& scope) {
  Value made;
  return truthy(operand(e, scope, made));
}

Value eval(const Expr& e, Scope& scope) {
  switch (e.kind) {
    case Expr::kLiteral:
      return of(e.literal);
    case Expr::kVar:
      return lookup(scope, e.name);
    case Expr::kAttr:
    case Expr::kIndex: {
      bool made = false;
      if (const json* found = in_scope(e, scope, made); !made) {
        return found ? of(*found) : Value::none();
      }
      if (e.kind == Expr::kAttr) return member(eval(*e.args[0], scope), json(e.name));
      const Value index = eval(*e.args[1], scope);
      return index.undefined ? Value::none() : member(eval(*e.args[0], scope), index.j);
    }
    case Expr::kNot:
      return of(json(!holds(*e.args[0], scope)));
    case Expr::kNeg: {
      const Value v = eval(*e.args[0], scope);
      if (v.undefined || !v.j.is_number()) runtime_error("'-' on a value that is not a number");
      return v.j.is_number_integer() ? of(json(-v.j.get<int64_t>())) : of(json(-v.j.get<double>()));
    }
    case Expr::kCond:
      return holds(*e.args[1], scope) ? eval(*e.args[0], scope) : eval(*e.args[2], scope);
    case Expr::kBinary: {
      if (e.name == "and") {
        Value a = eval(*e.args[0], scope);
        return truthy(a) ? eval(*e.args[1], scope) : a;
      }
      if (e.name == "or") {
        Value a = eval(*e.args[0], scope);
        return truthy(a) ? a : eval(*e.args[1], scope);
      }
      Value made_a, made_b;
      const ValueRef a = operand(*e.args[0], scope, made_a);
      Value r = binary(e.name, a, operand(*e.args[1], scope, made_b));
      if (e.negated) r = of(json(!truthy(r)));
      return r;
    }
    case Expr::kList: {
      json out = json::array();
      for (const auto& item : e.args) out.push_back(eval(*item, scope).j);
      return of(out);
    }
    case Expr::kDict: {
      json out = json::object();
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
        out[str(eval(*e.args[i], scope))] = eval(*e.args[i + 1], scope).j;
      }
      return of(out);
    }
    case Expr::kFilter:
    case Expr::kTest:
    case Expr::kCall: {
      std::vector<Value> args;
      for (size_t i = 1; i < e.args.size(); ++i) args.push_back(eval(*e.args[i], scope));
      if (e.kind == Expr::kCall && !e.args[0]) return call_function(e.name, args);
      Value made;
      const ValueRef object = operand(*e.args[0], scope, made);
      if (e.kind == Expr::kCall) return method(e.name, object, args);
      if (e.kind == Expr::kFilter) return filter(e.name, object, args);
      return of(json(test(e.name, object, args) != e.negated));
    }
  }
  runtime_error("unknown expression");
}

void render(const std::vector<Node>& nodes, Scope& scope, std::string& out);

void render_node(const Node& n, Scope& scope, std::string& out) {
  switch (n.kind) {
    case Node::kText:
      out += n.text;
      return;
    case Node::kOutput:
      out += str(eval(*n.expr, scope));
      return;
    case Node::kBody:
      render(n.body, scope, out);
      return;
    case Node::kSet:
      scope.back()[n.var] = eval(*n.expr, scope);
      return;
    case Node::kIf:
      for (const auto& [cond, body] : n.branches) {
        if (!cond || holds(*cond, scope)) {
          render(body, scope, out);
          return;
        }
      }
      return;
    case Node::kFor: {
      std::vector<json> items;
      Value made;
      for (auto& item : items_of(operand(*n.iterable, scope, made))) {
        if (n.filter) {
          scope.push_back({{n.var, of(item)}});
          const bool keep = holds(*n.filter, scope);
          scope.pop_back();
          if (!keep) continue;
        }
        items.push_back(std::move(item));
      }
      if (items.empty()) {
        render(n.else_body, scope, out);
        return;
      }
      const auto length = static_cast<int64_t>(items.size());
      // One frame for the whole loop, its item and `loop` rewritten each turn (a fresh frame
      // and loop object a turn cost more than the turn at 300,000 messages); what the body
      // sets ends with its turn, as in Jinja.
      scope.emplace_back();
      for (int64_t i = 0; i < length; ++i) {
        auto& frame = scope.back();  // taken again each turn: inner loops may move the frames
        json& item = items[static_cast<size_t>(i)];
        if (n.var2.empty()) {
          frame[n.var] = of(std::move(item));
        } else {  // for k, v in pairs
          if (!item.is_array() || item.size() != 2)
            runtime_error("cannot unpack " + repr(item) + " into two names");
          frame[n.var] = of(std::move(item[0]));
          frame[n.var2] = of(std::move(item[1]));
        }
        Value& loop = frame["loop"];
        if (i == 0 || loop.undefined || !loop.j.is_object() || loop.j.size() != 7) {
          loop = of(json{{"index", i + 1},
                         {"index0", i},
                         {"first", i == 0},
                         {"last", i == length - 1},
                         {"length", length},
                         {"revindex", length - i},
                         {"revindex0", length - i - 1}});
        } else {
          json& l = loop.j;
          l["index"] = i + 1, l["index0"] = i, l["first"] = false, l["last"] = i == length - 1;
          l["revindex"] = length - i, l["revindex0"] = length - i - 1;
        }
        render(n.body, scope, out);
        auto& after = scope.back();
        for (auto it = after.begin(); it != after.end();) {
          const bool own = it->first == n.var || it->first == n.var2 || it->first == "loop";
          it = own ? std::next(it) : after.erase(it);
        }
      }
      scope.pop_back();
      return;
    }
  }
}

void render(const std::vector<Node>& nodes, Scope& scope, std::string& out) {
  for (const auto& n : nodes) render_node(n, scope, out);
}

}  // namespace
}  // namespace jinja

JinjaTemplate::JinjaTemplate(const std::string& source) {
  auto root = std::make_shared<Node>();
  root->kind = Node::kBody;
  root->body = jinja::parse_template(source);
  root_ = root;
}

JinjaTemplate::~JinjaTemplate() = default;

std::string JinjaTemplate::render(nlohmann::json context) const {
  jinja::Scope scope(1);
  if (context.is_object()) {
    for (auto& [k, v] : context.items()) scope[0][k] = jinja::of(std::move(v));
  }
  std::string out;
  jinja::render(root_->body, scope, out);
  return out;
}

}  // namespace llava
