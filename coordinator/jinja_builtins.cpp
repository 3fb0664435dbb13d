// The filters, tests, methods and functions of the Jinja subset, each as Jinja (with
// transformers' chat-template extras) defines it.
#include "coordinator/jinja_builtins.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "common/errors.h"

namespace llava::jinja {
namespace {

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

std::string string_arg(const std::vector<Value>& args, size_t i, const std::string& what) {
  if (i >= args.size() || args[i].undefined || !args[i].j.is_string()) {
    runtime_error(what + " needs a string argument");
  }
  return args[i].j.get<std::string>();
}

}  // namespace

bool is_filter(const std::string& name) {
  return kFilters.count(name) > 0;
}
bool is_test(const std::string& name) {
  return kTests.count(name) > 0;
}
bool is_method(const std::string& name) {
  return kMethods.count(name) > 0;
}
bool is_function(const std::string& name) {
  return kFunctions.count(name) > 0;
}

bool test(const std::string& name, ValueRef v, const std::vector<Value>& args) {
  if (name == "defined") return v.j != nullptr;
  if (name == "undefined") return v.j == nullptr;
  if (!v.j) return false;
  const json& j = *v.j;
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

Value filter(const std::string& name, ValueRef v, const std::vector<Value>& args) {
  if (name == "default" || name == "d") {
    return !v.j ? (args.empty() ? of(json("")) : args[0]) : of(*v.j);
  }
  if (name == "selectattr" || name == "rejectattr") {
    const std::string attr = string_arg(args, 0, name);
    const std::string t = args.size() > 1 ? string_arg(args, 1, name) : "";
    if (!t.empty() && !is_test(t)) runtime_error("the test '" + t + "' is not supported");
    const std::vector<Value> rest(args.begin() + std::min<size_t>(2, args.size()), args.end());
    json out = json::array();
    for (const auto& item : items_of(v)) {
      const Value field = member(ValueRef(&item), json(attr));
      const bool pass = t.empty() ? truthy(field) : test(t, field, rest);
      if (pass == (name == "selectattr")) out.push_back(item);
    }
    return of(out);
  }
  if (name == "length" || name == "count") return of(json(length(v)));
  if (name == "first" || name == "last") {
    if (v.j && v.j->is_array()) {
      if (v.j->empty()) return Value::none();
      return of(name == "first" ? v.j->front() : v.j->back());
    }
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
  if (name == "tojson") return of(json(!v.j ? "null" : v.j->dump()));
  if (name == "int") {
    if (v.j && v.j->is_number()) return of(json(static_cast<int64_t>(v.j->get<double>())));
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

Value method(const std::string& name, ValueRef object, const std::vector<Value>& args) {
  if (object.j && object.j->is_object()) {
    if (name == "get") {
      const Value found = member(object, args.empty() ? json() : args[0].j);
      return found.undefined ? (args.size() > 1 ? args[1] : of(json())) : found;
    }
    json out = json::array();
    for (const auto& [k, v] : object.j->items()) {
      if (name == "items") out.push_back(json::array({k, v}));
      if (name == "keys") out.push_back(k);
      if (name == "values") out.push_back(v);
    }
    if (name == "items" || name == "keys" || name == "values") return of(out);
  }
  if (!object.j || !object.j->is_string()) {
    runtime_error("." + name + "() on " +
                  (!object.j ? std::string("an undefined value") : repr(*object.j)));
  }
  std::string s = object.j->get<std::string>();
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

Value call_function(const std::string& name, const std::vector<Value>& args) {
  if (name == "raise_exception") {
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

}  // namespace llava::jinja
