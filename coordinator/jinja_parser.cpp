// A recursive-descent parser for expressions (Parser, one tag's tokens at a time) and a
// Builder that nests the statements (if / elif / else, for / else, set, generation) into
// blocks.
#include "coordinator/jinja_parser.h"

#include <algorithm>
#include <set>

#include "coordinator/jinja_builtins.h"
#include "coordinator/jinja_lexer.h"

namespace llava::jinja {
namespace {

// How deep expressions (parentheses, operators, filter chains) and blocks may nest. The parser,
// the evaluator and the tree's destructor each recurse a frame or more per level: a template
// of 5,000 nested parentheses overflowed the stack and ended the process that loaded it.
// Chat templates nest a dozen levels.
constexpr int kMaxNesting = 256;

class Parser {
 public:
  Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  ExprPtr expression() { return conditional(); }
  bool at_end() const { return t_[i_].kind == Tok::kEnd; }
  const Token& peek(size_t ahead = 0) const { return t_[std::min(i_ + ahead, t_.size() - 1)]; }
  bool is(const std::string& text, size_t ahead = 0) const {
    const Token& t = peek(ahead);
    return (t.kind == Tok::kOp || t.kind == Tok::kName) && t.text == text;
  }
  bool accept(const std::string& text) {
    if (!is(text)) return false;
    ++i_;
    return true;
  }
  void expect(const std::string& text) {
    if (!accept(text)) fail("expected '" + text + "', found '" + peek().text + "'");
  }
  std::string name() {
    if (peek().kind != Tok::kName) fail("expected a name, found '" + peek().text + "'");
    return t_[i_++].text;
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw JinjaError("line " + std::to_string(peek().line) + ": " + what);
  }

 private:
  ExprPtr make(Expr::Kind kind, std::vector<ExprPtr> args = {}, std::string name = "") {
    auto e = std::make_shared<Expr>();
    e->kind = kind;
    for (const ExprPtr& arg : args) {
      if (arg) e->depth = std::max(e->depth, arg->depth + 1);
    }
    if (e->depth > kMaxNesting) too_deep();
    e->args = std::move(args);
    e->name = std::move(name);
    e->line = peek().line;
    return e;
  }
  [[noreturn]] void too_deep() const {
    fail("the expression nests deeper than " + std::to_string(kMaxNesting) + " levels");
  }
  // One level of the parser's own recursion (a parenthesis, a list, `not`, a sign).
  struct Nest {
    explicit Nest(Parser& p) : p_(p) {
      if (++p_.nesting_ > kMaxNesting) p_.too_deep();
    }
    ~Nest() { --p_.nesting_; }
    Parser& p_;
  };

  ExprPtr conditional() {
    const Nest nest(*this);
    ExprPtr then = or_expr();
    if (accept("if")) {
      ExprPtr cond = or_expr();
      // `x if c` alone: undefined otherwise (and, after a for's iterable, the loop filter)
      ExprPtr otherwise = accept("else") ? conditional() : make(Expr::kVar, {}, "\x01undefined");
      return make(Expr::kCond, {then, cond, otherwise});
    }
    return then;
  }
  ExprPtr or_expr() {
    ExprPtr left = and_expr();
    while (accept("or")) left = make(Expr::kBinary, {left, and_expr()}, "or");
    return left;
  }
  ExprPtr and_expr() {
    ExprPtr left = not_expr();
    while (accept("and")) left = make(Expr::kBinary, {left, not_expr()}, "and");
    return left;
  }
  ExprPtr not_expr() {
    if (accept("not")) {
      const Nest nest(*this);
      return make(Expr::kNot, {not_expr()});
    }
    return compare();
  }
  ExprPtr compare() {
    ExprPtr left = math1();
    while (true) {
      static const char* kOps[] = {"==", "!=", "<=", ">=", "<", ">"};
      std::string op;
      for (const char* o : kOps) {
        if (peek().kind == Tok::kOp && peek().text == o) op = o;
      }
      if (!op.empty()) {
        ++i_;
        left = make(Expr::kBinary, {left, math1()}, op);
      } else if (is("in")) {
        ++i_;
        left = make(Expr::kBinary, {left, math1()}, "in");
      } else if (is("not") && is("in", 1)) {
        i_ += 2;
        auto e = make(Expr::kBinary, {left, math1()}, "in");
        std::const_pointer_cast<Expr>(e)->negated = true;
        left = e;
      } else {
        return left;
      }
    }
  }
  ExprPtr math1() {
    ExprPtr left = concat();
    while (is("+") || is("-")) {
      const std::string op = t_[i_++].text;
      left = make(Expr::kBinary, {left, concat()}, op);
    }
    return left;
  }
  ExprPtr concat() {
    ExprPtr left = math2();
    while (accept("~")) left = make(Expr::kBinary, {left, math2()}, "~");
    return left;
  }
  ExprPtr math2() {
    ExprPtr left = unary();
    while (is("*") || is("/") || is("//") || is("%")) {
      const std::string op = t_[i_++].text;
      left = make(Expr::kBinary, {left, unary()}, op);
    }
    return left;
  }
  ExprPtr unary() {
    if (accept("-")) {
      const Nest nest(*this);
      return make(Expr::kNeg, {unary()});
    }
    if (accept("+")) {
      const Nest nest(*this);
      return unary();
    }
    return filtered(postfix(primary()));
  }
  std::vector<ExprPtr> call_args() {  // after '(' ; keyword arguments are not in the subset
    std::vector<ExprPtr> args;
    while (!accept(")")) {
      if (peek().kind == Tok::kName && is("=", 1)) fail("keyword arguments are not supported");
      args.push_back(expression());
      if (!is(")")) expect(",");
    }
    return args;
  }
  ExprPtr postfix(ExprPtr e) {
    while (true) {
      if (accept(".")) {
        const std::string attr = name();
        if (is("(")) {
          if (!is_method(attr)) fail("the method ." + attr + "() is not supported");
          ++i_;
          std::vector<ExprPtr> args = {e};
          for (auto& a : call_args()) args.push_back(a);
          e = make(Expr::kCall, std::move(args), attr);
        } else {
          auto a = make(Expr::kAttr, {e}, attr);
          e = a;
        }
      } else if (accept("[")) {
        if (is(":") || is(":", 1)) fail("slices ([a:b]) are not supported");
        ExprPtr index = expression();
        expect("]");
        e = make(Expr::kIndex, {e, index});
      } else if (is("(")) {
        if (e->kind != Expr::kVar || !is_function(e->name)) {
          fail("calling '" + (e->kind == Expr::kVar ? e->name : std::string("an expression")) +
               "' is not supported (only raise_exception and range)");
        }
        ++i_;
        std::vector<ExprPtr> args = call_args();
        args.insert(args.begin(), nullptr);
        e = make(Expr::kCall, std::move(args), e->name);
      } else {
        return e;
      }
    }
  }
  ExprPtr filtered(ExprPtr e) {
    while (true) {
      if (accept("|")) {
        const std::string filter = name();
        if (!is_filter(filter)) fail("the filter '" + filter + "' is not supported");
        std::vector<ExprPtr> args = {e};
        if (accept("(")) {
          for (auto& a : call_args()) args.push_back(a);
        }
        e = make(Expr::kFilter, std::move(args), filter);
      } else if (is("is")) {
        ++i_;
        const bool negated = accept("not");
        std::string test = peek().kind == Tok::kOp && peek().text == "==" ? (++i_, "==") : name();
        if (!is_test(test)) fail("the test '" + test + "' is not supported");
        std::vector<ExprPtr> args = {e};
        if (accept("(")) {
          for (auto& a : call_args()) args.push_back(a);
        } else if (test == "equalto" || test == "eq" || test == "==" || test == "in") {
          args.push_back(math1());  // `x is equalto y`
        }
        auto t = make(Expr::kTest, std::move(args), test);
        std::const_pointer_cast<Expr>(t)->negated = negated;
        e = t;
      } else {
        return e;
      }
    }
  }
  ExprPtr primary() {
    const Token t = peek();
    if (t.kind == Tok::kString) {
      ++i_;
      std::string text = t.text;
      while (peek().kind == Tok::kString) text += t_[i_++].text;  // 'a' 'b': adjacent strings join
      auto e = make(Expr::kLiteral);
      std::const_pointer_cast<Expr>(e)->literal = text;
      return e;
    }
    if (t.kind == Tok::kInt || t.kind == Tok::kFloat) {
      ++i_;
      auto e = make(Expr::kLiteral);
      std::const_pointer_cast<Expr>(e)->literal = t.kind == Tok::kInt
                                                      ? nlohmann::json(std::stoll(t.text))
                                                      : nlohmann::json(std::stod(t.text));
      return e;
    }
    if (t.kind == Tok::kName) {
      ++i_;
      auto e = make(Expr::kLiteral);
      auto& lit = std::const_pointer_cast<Expr>(e)->literal;
      if (t.text == "true" || t.text == "True") return lit = true, e;
      if (t.text == "false" || t.text == "False") return lit = false, e;
      if (t.text == "none" || t.text == "None") return lit = nullptr, e;
      return make(Expr::kVar, {}, t.text);
    }
    if (accept("(")) {
      ExprPtr e = expression();
      if (is(",")) fail("tuples are not supported");
      expect(")");
      return e;
    }
    if (accept("[")) {
      std::vector<ExprPtr> items;
      while (!accept("]")) {
        items.push_back(expression());
        if (!is("]")) expect(",");
      }
      return make(Expr::kList, std::move(items));
    }
    if (accept("{")) {
      std::vector<ExprPtr> items;  // key, value, key, value...
      while (!accept("}")) {
        items.push_back(expression());
        expect(":");
        items.push_back(expression());
        if (!is("}")) expect(",");
      }
      return make(Expr::kDict, std::move(items));
    }
    fail("unexpected '" + t.text + "'");
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  int nesting_ = 0;
};

// Statements into nested nodes.
class Builder {
 public:
  explicit Builder(std::vector<Segment> segments) : s_(std::move(segments)) {}

  std::vector<Node> block(const std::set<std::string>& ends, std::string* ended_by,
                          Parser** end_parser) {
    struct Nest {  // one block inside another (the template itself is the first)
      explicit Nest(Builder& b) : b_(b) {
        if (++b_.nesting_ > kMaxNesting) {
          throw JinjaError("line " + std::to_string(b_.s_[b_.i_ - 1].line) +
                           ": blocks nest deeper than " + std::to_string(kMaxNesting) + " levels");
        }
      }
      ~Nest() { --b_.nesting_; }
      Builder& b_;
    } nest(*this);
    std::vector<Node> nodes;
    while (i_ < s_.size()) {
      const Segment& seg = s_[i_++];
      if (seg.kind == Segment::kText) {
        Node n;
        n.kind = Node::kText;
        n.text = seg.text;
        nodes.push_back(std::move(n));
        continue;
      }
      parsers_.push_back(std::make_unique<Parser>(tokenize(seg.text, seg.line)));
      Parser& p = *parsers_.back();
      if (seg.kind == Segment::kOutput) {
        Node n;
        n.kind = Node::kOutput;
        n.expr = p.expression();
        if (!p.at_end()) p.fail("unexpected '" + p.peek().text + "' in {{ }}");
        nodes.push_back(std::move(n));
        continue;
      }
      const std::string tag = p.name();
      if (ends.count(tag)) {
        *ended_by = tag;
        *end_parser = &p;
        return nodes;
      }
      if (tag == "if") {
        nodes.push_back(if_node(p));
      } else if (tag == "for") {
        nodes.push_back(for_node(p));
      } else if (tag == "set") {
        Node n;
        n.kind = Node::kSet;
        n.var = p.name();
        if (p.is(".") || p.is(",")) p.fail("only `set name = value` is supported");
        p.expect("=");
        n.expr = p.expression();
        done(p);
        nodes.push_back(std::move(n));
      } else if (tag ==
                 "generation") {  // transformers' marker for assistant text: renders its body
        done(p);
        Node n;
        n.kind = Node::kBody;
        n.body = until(p, {"endgeneration"}, nullptr);
        nodes.push_back(std::move(n));
      } else if (tag == "endif" || tag == "endfor" || tag == "else" || tag == "elif" ||
                 tag == "endgeneration") {
        p.fail("'" + tag + "' without its opening tag");
      } else {
        p.fail("the tag '" + tag + "' is not supported");
      }
    }
    for (const auto& end : ends) {
      if (end.rfind("end", 0) == 0)
        throw JinjaError("the template ends inside a block (missing '" + end + "')");
    }
    return nodes;
  }

 private:
  void done(Parser& p) {
    if (!p.at_end()) p.fail("unexpected '" + p.peek().text + "'");
  }
  std::vector<Node> until(Parser&, const std::set<std::string>& ends, std::string* ended_by,
                          Parser** end_parser = nullptr) {
    std::string by;
    Parser* ep = nullptr;
    auto nodes = block(ends, &by, &ep);
    if (ended_by) *ended_by = by;
    if (end_parser)
      *end_parser = ep;
    else if (ep)
      done(*ep);
    return nodes;
  }
  Node if_node(Parser& p) {
    Node n;
    n.kind = Node::kIf;
    ExprPtr cond = p.expression();
    done(p);
    while (true) {
      std::string by;
      Parser* ep = nullptr;
      auto body = until(p, {"elif", "else", "endif"}, &by, &ep);
      n.branches.emplace_back(cond, std::move(body));
      if (by == "endif") {
        done(*ep);
        return n;
      }
      if (by == "else") {
        done(*ep);
        n.branches.emplace_back(nullptr, until(p, {"endif"}, nullptr));
        return n;
      }
      cond = ep->expression();  // elif
      done(*ep);
    }
  }
  Node for_node(Parser& p) {
    Node n;
    n.kind = Node::kFor;
    n.var = p.name();
    if (p.accept(",")) n.var2 = p.name();
    p.expect("in");
    n.iterable = p.expression();  // `x if c` here would be the loop filter: handled below
    if (n.iterable->kind == Expr::kCond && n.iterable->args[2]->kind == Expr::kVar &&
        n.iterable->args[2]->name == "\x01undefined") {
      n.filter = n.iterable->args[1];
      n.iterable = n.iterable->args[0];
    }
    if (p.accept("recursive")) p.fail("recursive loops are not supported");
    done(p);
    std::string by;
    Parser* ep = nullptr;
    n.body = until(p, {"else", "endfor"}, &by, &ep);
    done(*ep);
    if (by == "else") n.else_body = until(p, {"endfor"}, nullptr);
    return n;
  }

  std::vector<Segment> s_;
  size_t i_ = 0;
  int nesting_ = 0;
  std::vector<std::unique_ptr<Parser>> parsers_;
};

}  // namespace

std::vector<Node> parse_template(const std::string& source) {
  Builder builder(split(source));
  std::string ended;
  Parser* unused = nullptr;
  return builder.block({}, &ended, &unused);
}

}  // namespace llava::jinja
