// The values a chat template computes with: JSON, or Jinja's "undefined", with Python's
// meanings of truth, str(), repr(), equality and the operators (+ - * / // % ~, comparisons,
// in) as transformers' Jinja gives them.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace llava::jinja {

using json = nlohmann::json;

// A value: JSON, or Jinja's undefined (a missing variable, key or attribute).
struct Value {
  bool undefined = false;
  json j;
  static Value none() { return Value{true, json()}; }
};
inline Value of(json j) {
  return Value{false, std::move(j)};
}
// A value read where it lies (a variable, a member of one) or as made: what the functions
// below and the builtins read, so that `messages | length` inside a loop over the messages
// copies nothing. It lives no longer than what it refers to.
struct ValueRef {
  const json* j = nullptr;  // nullptr: undefined
  ValueRef(const Value& v)
      : j(v.undefined ? nullptr : &v.j) {}  // NOLINT(google-explicit-constructor)
  explicit ValueRef(const json* where) : j(where) {}
};

// A template that fails while rendering: RequestError "chat template: what".
[[noreturn]] void runtime_error(const std::string& what);

bool truthy(ValueRef v);
std::string str(ValueRef v);      // Python's str(): what {{ }} prints
std::string repr(const json& j);  // Python's repr(): strings quoted, inside lists and dicts
bool equal(ValueRef a, ValueRef b);
// The items a for loop or a filter walks: a list's, a dict's keys, a string's characters.
std::vector<json> items_of(ValueRef v);
// How many items items_of would give, without making them (the length filter).
size_t length(ValueRef v);
// object[key] or object.key: undefined when there is none.
Value member(ValueRef object, const json& key);
// The same for a dict's value or a list's item, where it lies in `object` (no copy); nullptr
// when there is none. (A string's character is made: member.)
const json* member_in(const json& object, const json& key);
// `a op b` for every binary operator but `and` / `or` (those short-circuit in the evaluator).
Value binary(const std::string& op, ValueRef a, ValueRef b);

// Python's strip() (lstrip, rstrip): also the lexer's whitespace control.
std::string trimmed(const std::string& s, bool left = true, bool right = true);

}  // namespace llava::jinja
