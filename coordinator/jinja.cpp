// The Jinja subset: a lexer that splits text from tags (with trim_blocks / lstrip_blocks and
// "-" whitespace control), a recursive-descent parser to a small tree, and an evaluator over
// JSON values with Jinja's "undefined". Names of filters, tests and functions are checked
// while parsing, so a template that needs more is refused before any request.
#include "coordinator/jinja.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <vector>

#include "common/errors.h"

namespace llava {

using json = nlohmann::json;

namespace {

// ---------------------------------------------------------------- values -------------

// A value: JSON, or Jinja's undefined (a missing variable, key or attribute).
struct Value {
  bool undefined = false;
  json j;
  static Value none() { return Value{true, json()}; }
};
Value of(json j) {
  return Value{false, std::move(j)};
}

[[noreturn]] void runtime_error(const std::string& what) {
  throw RequestError("chat template: " + what);
}

bool truthy(const Value& v) {
  if (v.undefined) return false;
  const json& j = v.j;
  if (j.is_null()) return false;
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_number_integer()) return j.get<int64_t>() != 0;
  if (j.is_number()) return j.get<double>() != 0;
  if (j.is_string() || j.is_array() || j.is_object()) return !j.empty();
  return true;
}

std::string repr(const json& j);

// Python's str(): what {{ }} prints.
std::string str(const Value& v) {
  if (v.undefined) return "";
  const json& j = v.j;
  if (j.is_string()) return j.get<std::string>();
  if (j.is_null()) return "None";
  if (j.is_boolean()) return j.get<bool>() ? "True" : "False";
  if (j.is_number_integer()) return std::to_string(j.get<int64_t>());
  if (j.is_number()) {
    const double d = j.get<double>();
    if (d == std::floor(d) && std::fabs(d) < 1e16)
      return std::to_string(static_cast<int64_t>(d)) + ".0";
    return j.dump();
  }
  return repr(j);
}

std::string repr(const json& j) {
  if (j.is_string()) return "'" + j.get<std::string>() + "'";
  if (j.is_array()) {
    std::string out = "[";
    for (size_t i = 0; i < j.size(); ++i) out += (i ? ", " : "") + repr(j[i]);
    return out + "]";
  }
  if (j.is_object()) {
    std::string out = "{";
    bool first = true;
    for (const auto& [k, v] : j.items()) {
      out += (first ? "" : ", ") + repr(json(k)) + ": " + repr(v);
      first = false;
    }
    return out + "}";
  }
  return str(of(j));
}

bool equal(const Value& a, const Value& b) {
  if (a.undefined || b.undefined) return a.undefined && b.undefined;
  if (a.j.is_number() && b.j.is_number()) return a.j.get<double>() == b.j.get<double>();
  return a.j == b.j;
}

// The items a for loop or a filter walks: a list's, a dict's keys, a string's characters.
std::vector<json> items_of(const Value& v) {
  if (v.undefined || v.j.is_null()) return {};
  if (v.j.is_array()) return std::vector<json>(v.j.begin(), v.j.end());
  if (v.j.is_object()) {
    std::vector<json> keys;
    for (const auto& [k, _] : v.j.items()) keys.emplace_back(k);
    return keys;
  }
  if (v.j.is_string()) {
    std::vector<json> chars;
    const std::string s = v.j.get<std::string>();
    for (size_t i = 0; i < s.size();) {  // whole UTF-8 characters
      size_t n = 1;
      const auto c = static_cast<unsigned char>(s[i]);
      if (c >= 0xF0)
        n = 4;
      else if (c >= 0xE0)
        n = 3;
      else if (c >= 0xC0)
        n = 2;
      chars.emplace_back(s.substr(i, n));
      i += n;
    }
    return chars;
  }
  runtime_error("cannot loop over " + str(v));
}

Value member(const Value& object, const json& key) {
  if (object.undefined) return Value::none();
  if (object.j.is_object() && key.is_string()) {
    auto it = object.j.find(key.get<std::string>());
    return it == object.j.end() ? Value::none() : of(*it);
  }
  if ((object.j.is_array() || object.j.is_string()) && key.is_number_integer()) {
    const int64_t size = object.j.is_array()
                             ? static_cast<int64_t>(object.j.size())
                             : static_cast<int64_t>(object.j.get<std::string>().size());
    int64_t i = key.get<int64_t>();
    if (i < 0) i += size;
    if (i < 0 || i >= size) return Value::none();
    if (object.j.is_array()) return of(object.j[static_cast<size_t>(i)]);
    return of(json(object.j.get<std::string>().substr(static_cast<size_t>(i), 1)));
  }
  return Value::none();
}

std::string trimmed(const std::string& s, bool left = true, bool right = true) {
  const char* space = " \t\n\r\f\v";
  size_t b = left ? s.find_first_not_of(space) : 0;
  if (b == std::string::npos) return "";
  size_t e = right ? s.find_last_not_of(space) : s.size() - 1;
  return s.substr(b, e - b + 1);
}

// ---------------------------------------------------------------- tokens -------------

enum class Tok { kName, kString, kInt, kFloat, kOp, kEnd };
struct Token {
  Tok kind;
  std::string text;
  int line;
};

std::vector<Token> tokenize(const std::string& s, int line) {
  std::vector<Token> out;
  size_t i = 0;
  auto fail = [&](const std::string& what) -> void {
    throw JinjaError("line " + std::to_string(line) + ": " + what);
  };
  while (i < s.size()) {
    const char c = s[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (c == '\n') ++line;
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Tok::kName, s.substr(i, j - i), line});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      bool real =
          j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]));
      if (real) {
        ++j;
        while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      }
      out.push_back({real ? Tok::kFloat : Tok::kInt, s.substr(i, j - i), line});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string text;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          const char e = s[++j];
          text += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        } else {
          if (s[j] == '\n') ++line;
          text += s[j];
        }
      }
      if (j >= s.size()) fail("a string is not closed");
      out.push_back({Tok::kString, text, line});
      i = j + 1;
    } else {
      static const char* kOps[] = {"==", "!=", "<=", ">=", "//", "**", "(", ")", "[",
                                   "]",  "{",  "}",  ".",  ",",  ":",  "|", "+", "-",
                                   "*",  "/",  "%",  "~",  "<",  ">",  "="};
      bool found = false;
      for (const char* op : kOps) {
        if (s.compare(i, std::strlen(op), op) == 0) {
          out.push_back({Tok::kOp, op, line});
          i += std::strlen(op);
          found = true;
          break;
        }
      }
      if (!found) fail(std::string("unexpected character '") + c + "'");
    }
  }
  out.push_back({Tok::kEnd, "", line});
  return out;
}

}  // namespace

// ---------------------------------------------------------------- the tree -----------

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
  json literal;
  std::string name;           // var, attr, filter, test, binary operator
  std::vector<ExprPtr> args;  // operands / call or filter arguments (object first)
  bool negated = false;       // `is not`, `not in`
  int line = 0;
};

struct JinjaTemplate::Node {
  enum Kind { kText, kOutput, kIf, kFor, kSet, kBody };
  Kind kind = kBody;
  std::string text;
  ExprPtr expr;                                                 // output, set
  std::vector<std::pair<ExprPtr, std::vector<Node>>> branches;  // if: (cond or null, body)
  std::string var, var2;                                        // for / set targets
  ExprPtr iterable, filter;                                     // for
  std::vector<Node> body, else_body;                            // for
};
using Node = JinjaTemplate::Node;

namespace {

// ---------------------------------------------------------------- lexing tags --------

struct Segment {
  enum Kind { kText, kOutput, kStatement } kind;
  std::string text;
  int line;
};

std::vector<Segment> split(const std::string& src) {
  std::vector<Segment> out;
  size_t i = 0;
  int line = 1;
  bool strip_next = false, trim_newline = false;
  auto count_lines = [](const std::string& s) {
    return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
  };
  while (i <= src.size()) {
    size_t open = src.find('{', i);
    while (open != std::string::npos && open + 1 < src.size() && src[open + 1] != '{' &&
           src[open + 1] != '%' && src[open + 1] != '#') {
      open = src.find('{', open + 1);
    }
    if (open + 1 >= src.size()) open = std::string::npos;
    std::string text = src.substr(i, open == std::string::npos ? std::string::npos : open - i);
    const int text_line = line;
    line += count_lines(text);
    if (trim_newline && !text.empty() && text[0] == '\n') text.erase(0, 1);
    if (trim_newline && text.rfind("\r\n", 0) == 0) text.erase(0, 2);
    if (strip_next) text = trimmed(text, true, false);
    strip_next = trim_newline = false;
    if (open == std::string::npos) {
      if (!text.empty()) out.push_back({Segment::kText, text, text_line});
      break;
    }
    const char kind = src[open + 1];
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t inner = open + 2;
    const bool strip_before = inner < src.size() && src[inner] == '-';
    const bool keep_before = inner < src.size() && src[inner] == '+';
    if (strip_before || keep_before) ++inner;
    const size_t end = src.find(close, inner);
    if (end == std::string::npos) {
      throw JinjaError("line " + std::to_string(line) + ": a '{" + std::string(1, kind) +
                       "' tag is not closed");
    }
    size_t inner_end = end;
    const bool strip_after = inner_end > inner && src[inner_end - 1] == '-';
    if (strip_after) --inner_end;
    if (strip_before) {
      text = trimmed(text, false, true);
    } else if (kind != '{' && !keep_before) {  // lstrip_blocks: spaces alone before a tag
      size_t k = open;
      while (k > i && (src[k - 1] == ' ' || src[k - 1] == '\t')) --k;
      if (k == 0 || src[k - 1] == '\n') text.erase(text.size() - std::min(text.size(), open - k));
    }
    if (!text.empty()) out.push_back({Segment::kText, text, text_line});
    const std::string body = src.substr(inner, inner_end - inner);
    if (kind == '{') out.push_back({Segment::kOutput, body, line});
    if (kind == '%') out.push_back({Segment::kStatement, body, line});
    line += count_lines(src.substr(open, end + 2 - open));
    strip_next = strip_after;
    trim_newline = kind != '{' && !strip_after;  // trim_blocks
    i = end + 2;
  }
  return out;
}

// ---------------------------------------------------------------- parsing ------------

const std::set<std::string> kFilters = {"selectattr", "rejectattr", "upper",   "lower", "trim",
                                        "length",     "count",      "first",   "last",  "join",
                                        "default",    "d",          "string",  "list",  "tojson",
                                        "capitalize", "title",      "replace", "int"};
const std::set<std::string> kTests = {"defined", "undefined", "none",     "string",   "number",
                                      "integer", "mapping",   "sequence", "iterable", "boolean",
                                      "equalto", "eq",        "==",       "odd",      "even",
                                      "true",    "false",     "in"};
const std::set<std::string> kFunctions = {"raise_exception", "range"};
const std::set<std::string> kMethods = {"upper",      "lower",    "strip",   "lstrip", "rstrip",
                                        "startswith", "endswith", "replace", "split",  "title",
                                        "capitalize", "items",    "keys",    "values", "get"};

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
    e->args = std::move(args);
    e->name = std::move(name);
    e->line = peek().line;
    return e;
  }

  ExprPtr conditional() {
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
    if (accept("not")) return make(Expr::kNot, {not_expr()});
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
    if (accept("-")) return make(Expr::kNeg, {unary()});
    if (accept("+")) return unary();
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
          if (!kMethods.count(attr)) fail("the method ." + attr + "() is not supported");
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
        if (e->kind != Expr::kVar || !kFunctions.count(e->name)) {
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
        if (!kFilters.count(filter)) fail("the filter '" + filter + "' is not supported");
        std::vector<ExprPtr> args = {e};
        if (accept("(")) {
          for (auto& a : call_args()) args.push_back(a);
        }
        e = make(Expr::kFilter, std::move(args), filter);
      } else if (is("is")) {
        ++i_;
        const bool negated = accept("not");
        std::string test = peek().kind == Tok::kOp && peek().text == "==" ? (++i_, "==") : name();
        if (!kTests.count(test)) fail("the test '" + test + "' is not supported");
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
      std::const_pointer_cast<Expr>(e)->literal =
          t.kind == Tok::kInt ? json(std::stoll(t.text)) : json(std::stod(t.text));
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
};

// Statements into nested nodes.
class Builder {
 public:
  explicit Builder(std::vector<Segment> segments) : s_(std::move(segments)) {}

  std::vector<Node> block(const std::set<std::string>& ends, std::string* ended_by,
                          Parser** end_parser) {
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
  std::vector<std::unique_ptr<Parser>> parsers_;
};

// ---------------------------------------------------------------- evaluation ---------

using Scope = std::vector<std::map<std::string, Value>>;

Value lookup(const Scope& scope, const std::string& name) {
  for (auto it = scope.rbegin(); it != scope.rend(); ++it) {
    auto found = it->find(name);
    if (found != it->end()) return found->second;
  }
  return Value::none();
}

Value eval(const Expr& e, Scope& scope);

bool test(const std::string& name, const Value& v, const std::vector<Value>& args) {
  if (name == "defined") return !v.undefined;
  if (name == "undefined") return v.undefined;
  if (v.undefined) return false;
  const json& j = v.j;
  if (name == "none") return j.is_null();
  if (name == "string") return j.is_string();
  if (name == "number") return j.is_number();
  if (name == "integer") return j.is_number_integer();
  if (name == "boolean") return j.is_boolean();
  if (name == "true") return j.is_boolean() && j.get<bool>();
  if (name == "false") return j.is_boolean() && !j.get<bool>();
  if (name == "mapping") return j.is_object();
  if (name == "sequence" || name == "iterable")
    return j.is_array() || j.is_string() || j.is_object();
  if (name == "odd" || name == "even") {
    if (!j.is_number_integer()) runtime_error("'" + name + "' needs a whole number");
    return (j.get<int64_t>() % 2 != 0) == (name == "odd");
  }
  if (name == "equalto" || name == "eq" || name == "==") {
    if (args.empty()) runtime_error("'" + name + "' needs a value to compare with");
    return equal(v, args[0]);
  }
  if (name == "in") {
    if (args.empty()) runtime_error("'in' needs a container");
    for (const auto& item : items_of(args[0])) {
      if (equal(v, of(item))) return true;
    }
    return false;
  }
  runtime_error("unknown test " + name);
}

Value binary(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") return of(json(str(a) + str(b)));
  if (op == "==") return of(json(equal(a, b)));
  if (op == "!=") return of(json(!equal(a, b)));
  if (op == "in") {
    if (b.j.is_string() && a.j.is_string()) {
      return of(json(b.j.get<std::string>().find(a.j.get<std::string>()) != std::string::npos));
    }
    if (b.j.is_object() && a.j.is_string()) return of(json(b.j.contains(a.j.get<std::string>())));
    for (const auto& item : items_of(b)) {
      if (equal(a, of(item))) return of(json(true));
    }
    return of(json(false));
  }
  if (a.undefined || b.undefined) runtime_error("'" + op + "' with an undefined value");
  const json& x = a.j;
  const json& y = b.j;
  if (op == "+") {
    if (x.is_string() && y.is_string())
      return of(json(x.get<std::string>() + y.get<std::string>()));
    if (x.is_array() && y.is_array()) {
      json out = x;
      for (const auto& item : y) out.push_back(item);
      return of(out);
    }
  }
  if (op == "<" || op == ">" || op == "<=" || op == ">=") {
    int cmp = 0;
    if (x.is_number() && y.is_number()) {
      cmp = x.get<double>() < y.get<double>() ? -1 : x.get<double>() > y.get<double>() ? 1 : 0;
    } else if (x.is_string() && y.is_string()) {
      cmp = x.get<std::string>().compare(y.get<std::string>());
    } else {
      runtime_error("cannot compare " + repr(x) + " and " + repr(y));
    }
    const bool r = op == "<" ? cmp < 0 : op == ">" ? cmp > 0 : op == "<=" ? cmp <= 0 : cmp >= 0;
    return of(json(r));
  }
  if ((x.is_number() || x.is_boolean()) && (y.is_number() || y.is_boolean())) {
    const bool ints = !x.is_number_float() && !y.is_number_float();
    auto as_int = [](const json& v) {
      return v.is_boolean() ? int64_t(v.get<bool>()) : v.get<int64_t>();
    };
    auto as_real = [](const json& v) {
      return v.is_boolean() ? double(v.get<bool>()) : v.get<double>();
    };
    if (ints && op != "/") {
      const int64_t p = as_int(x), q = as_int(y);
      if ((op == "%" || op == "//") && q == 0) runtime_error("division by zero");
      if (op == "+") return of(json(p + q));
      if (op == "-") return of(json(p - q));
      if (op == "*") return of(json(p * q));
      const int64_t floor_div = p / q - ((p % q != 0) && ((p < 0) != (q < 0)));
      if (op == "//") return of(json(floor_div));
      if (op == "%") return of(json(p - floor_div * q));
    }
    const double p = as_real(x), q = as_real(y);
    if (op == "+") return of(json(p + q));
    if (op == "-") return of(json(p - q));
    if (op == "*") return of(json(p * q));
    if (q == 0) runtime_error("division by zero");
    if (op == "/") return of(json(p / q));
    if (op == "//") return of(json(std::floor(p / q)));
    if (op == "%") return of(json(p - std::floor(p / q) * q));
  }
  runtime_error("cannot apply '" + op + "' to " + repr(x) + " and " + repr(y));
}

std::string string_arg(const std::vector<Value>& args, size_t i, const std::string& what) {
  if (i >= args.size() || args[i].undefined || !args[i].j.is_string()) {
    runtime_error(what + " needs a string argument");
  }
  return args[i].j.get<std::string>();
}

Value filter(const std::string& name, const Value& v, const std::vector<Value>& args) {
  if (name == "default" || name == "d") {
    return v.undefined ? (args.empty() ? of(json("")) : args[0]) : v;
  }
  if (name == "selectattr" || name == "rejectattr") {
    const std::string attr = string_arg(args, 0, name);
    const std::string t = args.size() > 1 ? string_arg(args, 1, name) : "";
    if (!t.empty() && !kTests.count(t)) runtime_error("the test '" + t + "' is not supported");
    const std::vector<Value> rest(args.begin() + std::min<size_t>(2, args.size()), args.end());
    json out = json::array();
    for (const auto& item : items_of(v)) {
      const Value field = member(of(item), json(attr));
      const bool pass = t.empty() ? truthy(field) : test(t, field, rest);
      if (pass == (name == "selectattr")) out.push_back(item);
    }
    return of(out);
  }
  if (name == "length" || name == "count") {
    if (!v.undefined && v.j.is_string()) return of(json(items_of(v).size()));
    return of(json(items_of(v).size()));
  }
  if (name == "first" || name == "last") {
    const auto items = items_of(v);
    if (items.empty()) return Value::none();
    return of(name == "first" ? items.front() : items.back());
  }
  if (name == "list") return of(json(items_of(v)));
  if (name == "join") {
    const std::string sep = args.empty() ? "" : string_arg(args, 0, "join");
    std::string out;
    bool first = true;
    for (const auto& item : items_of(v)) {
      out += (first ? "" : sep) + str(of(item));
      first = false;
    }
    return of(json(out));
  }
  if (name == "tojson") return of(json(v.undefined ? "null" : v.j.dump()));
  if (name == "int") {
    if (!v.undefined && v.j.is_number()) return of(json(static_cast<int64_t>(v.j.get<double>())));
    try {
      return of(json(std::stoll(str(v))));
    } catch (const std::exception&) {
      return of(json(0));
    }
  }
  std::string s = str(v);
  if (name == "string") return of(json(s));
  if (name == "trim") return of(json(trimmed(s)));
  if (name == "upper" || name == "lower") {
    for (auto& c : s)
      c = static_cast<char>(name == "upper" ? std::toupper(static_cast<unsigned char>(c))
                                            : std::tolower(static_cast<unsigned char>(c)));
    return of(json(s));
  }
  if (name == "capitalize" || name == "title") {
    bool start = true;
    for (auto& c : s) {
      const auto u = static_cast<unsigned char>(c);
      c = static_cast<char>(start                                       ? std::toupper(u)
                            : (name == "capitalize" || std::isalpha(u)) ? std::tolower(u)
                                                                        : c);
      start = name == "title" ? !std::isalpha(u) : false;
    }
    return of(json(s));
  }
  if (name == "replace") {
    const std::string from = string_arg(args, 0, "replace"), to = string_arg(args, 1, "replace");
    if (from.empty()) return of(json(s));
    for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
      s.replace(at, from.size(), to);
    }
    return of(json(s));
  }
  runtime_error("unknown filter " + name);
}

Value method(const std::string& name, const Value& object, const std::vector<Value>& args) {
  if (!object.undefined && object.j.is_object()) {
    if (name == "get") {
      const Value found = member(object, args.empty() ? json() : args[0].j);
      return found.undefined ? (args.size() > 1 ? args[1] : of(json())) : found;
    }
    json out = json::array();
    for (const auto& [k, v] : object.j.items()) {
      if (name == "items") out.push_back(json::array({k, v}));
      if (name == "keys") out.push_back(k);
      if (name == "values") out.push_back(v);
    }
    if (name == "items" || name == "keys" || name == "values") return of(out);
  }
  if (object.undefined || !object.j.is_string()) {
    runtime_error("." + name + "() on " +
                  (object.undefined ? std::string("an undefined value") : repr(object.j)));
  }
  std::string s = object.j.get<std::string>();
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize")
    return filter(name, object, {});
  if (name == "strip") return of(json(trimmed(s)));
  if (name == "lstrip") return of(json(trimmed(s, true, false)));
  if (name == "rstrip") return of(json(trimmed(s, false, true)));
  if (name == "startswith" || name == "endswith") {
    const std::string x = string_arg(args, 0, name);
    const bool r = name == "startswith"
                       ? s.rfind(x, 0) == 0
                       : s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
    return of(json(r));
  }
  if (name == "replace") return filter("replace", object, args);
  if (name == "split") {
    json out = json::array();
    if (args.empty()) {
      size_t i = 0;
      while (true) {
        i = s.find_first_not_of(" \t\n\r", i);
        if (i == std::string::npos) break;
        size_t j = s.find_first_of(" \t\n\r", i);
        out.push_back(s.substr(i, j - i));
        if (j == std::string::npos) break;
        i = j;
      }
    } else {
      const std::string sep = string_arg(args, 0, "split");
      if (sep.empty()) runtime_error("split() with an empty separator");
      size_t i = 0;
      for (size_t at = s.find(sep); at != std::string::npos; at = s.find(sep, i)) {
        out.push_back(s.substr(i, at - i));
        i = at + sep.size();
      }
      out.push_back(s.substr(i));
    }
    return of(out);
  }
  runtime_error("." + name + "() is not supported on a string");
}

Value eval(const Expr& e, Scope& scope) {
  switch (e.kind) {
    case Expr::kLiteral:
      return of(e.literal);
    case Expr::kVar:
      return lookup(scope, e.name);
    case Expr::kAttr:
      return member(eval(*e.args[0], scope), json(e.name));
    case Expr::kIndex: {
      const Value index = eval(*e.args[1], scope);
      return index.undefined ? Value::none() : member(eval(*e.args[0], scope), index.j);
    }
    case Expr::kNot:
      return of(json(!truthy(eval(*e.args[0], scope))));
    case Expr::kNeg: {
      const Value v = eval(*e.args[0], scope);
      if (v.undefined || !v.j.is_number()) runtime_error("'-' on a value that is not a number");
      return v.j.is_number_integer() ? of(json(-v.j.get<int64_t>())) : of(json(-v.j.get<double>()));
    }
    case Expr::kCond:
      return truthy(eval(*e.args[1], scope)) ? eval(*e.args[0], scope) : eval(*e.args[2], scope);
    case Expr::kBinary: {
      if (e.name == "and") {
        Value a = eval(*e.args[0], scope);
        return truthy(a) ? eval(*e.args[1], scope) : a;
      }
      if (e.name == "or") {
        Value a = eval(*e.args[0], scope);
        return truthy(a) ? a : eval(*e.args[1], scope);
      }
      Value r = binary(e.name, eval(*e.args[0], scope), eval(*e.args[1], scope));
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
      if (e.kind == Expr::kCall && !e.args[0]) {  // a function
        if (e.name == "raise_exception") {
          throw RequestError(args.empty() ? "chat template: raise_exception" : str(args[0]));
        }
        // range(stop) / range(start, stop[, step])
        std::vector<int64_t> n;
        for (const auto& a : args) {
          if (a.undefined || !a.j.is_number_integer()) runtime_error("range() needs whole numbers");
          n.push_back(a.j.get<int64_t>());
        }
        if (n.empty() || n.size() > 3) runtime_error("range() takes 1 to 3 arguments");
        const int64_t start = n.size() > 1 ? n[0] : 0, stop = n.size() > 1 ? n[1] : n[0];
        const int64_t step = n.size() > 2 ? n[2] : 1;
        if (step == 0) runtime_error("range() with step 0");
        json out = json::array();
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
          out.push_back(i);
          if (out.size() > 100000) runtime_error("range() too long");
        }
        return of(out);
      }
      const Value object = eval(*e.args[0], scope);
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
        if (!cond || truthy(eval(*cond, scope))) {
          render(body, scope, out);
          return;
        }
      }
      return;
    case Node::kFor: {
      std::vector<json> items;
      for (auto& item : items_of(eval(*n.iterable, scope))) {
        if (n.filter) {
          scope.push_back({{n.var, of(item)}});
          const bool keep = truthy(eval(*n.filter, scope));
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
      for (int64_t i = 0; i < length; ++i) {
        std::map<std::string, Value> frame;
        json& item = items[static_cast<size_t>(i)];
        if (n.var2.empty()) {
          frame[n.var] = of(item);
        } else {  // for k, v in pairs
          if (!item.is_array() || item.size() != 2)
            runtime_error("cannot unpack " + repr(item) + " into two names");
          frame[n.var] = of(item[0]);
          frame[n.var2] = of(item[1]);
        }
        frame["loop"] = of(json{{"index", i + 1},
                                {"index0", i},
                                {"first", i == 0},
                                {"last", i == length - 1},
                                {"length", length},
                                {"revindex", length - i},
                                {"revindex0", length - i - 1}});
        scope.push_back(std::move(frame));
        render(n.body, scope, out);
        scope.pop_back();
      }
      return;
    }
  }
}

void render(const std::vector<Node>& nodes, Scope& scope, std::string& out) {
  for (const auto& n : nodes) render_node(n, scope, out);
}

}  // namespace

JinjaTemplate::JinjaTemplate(const std::string& source) {
  Builder builder(split(source));
  std::string ended;
  Parser* unused = nullptr;
  auto root = std::make_shared<Node>();
  root->kind = Node::kBody;
  root->body = builder.block({}, &ended, &unused);
  root_ = root;
}

JinjaTemplate::~JinjaTemplate() = default;

std::string JinjaTemplate::render(const json& context) const {
  Scope scope(1);
  if (context.is_object()) {
    for (const auto& [k, v] : context.items()) scope[0][k] = of(v);
  }
  std::string out;
  llava::render(root_->body, scope, out);
  return out;
}

}  // namespace llava
