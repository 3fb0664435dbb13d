// A renderer for the subset of Jinja that chat templates use (LLaVA's and its relatives'),
// set up as transformers renders them (trim_blocks, lstrip_blocks). Supported: text,
// {{ expr }}, {# comments #}, whitespace control (-), {% if / elif / else %}, {% for x in
// xs [if cond] %} (with loop.index, index0, first, last, length, and {% else %}), {% set %},
// {% generation %}; literals, variables, attributes, subscripts, + - * / // % ~, comparisons,
// and / or / not, in, `x if c else y`; filters selectattr, rejectattr, upper, lower, trim,
// length, first, last, join, default, string, list, tojson; tests defined, undefined, none,
// string, number, mapping, sequence, iterable, equalto, odd, even; string methods (upper,
// lower, strip, startswith, endswith, replace, split), dict.items()/keys()/values()/get(),
// raise_exception(...) and range(...). Anything else is refused when the template is parsed.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace llava {

// A template outside the subset, or malformed: "line L: what".
struct JinjaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class JinjaTemplate {
 public:
  explicit JinjaTemplate(const std::string& source);  // throws JinjaError
  ~JinjaTemplate();
  // Renders with `context`'s keys as variables. raise_exception(msg) and type errors throw
  // RequestError (the message as the template wrote it).
  std::string render(nlohmann::json context) const;  // moved into the scope

  struct Node;

 private:
  std::shared_ptr<const Node> root_;
};

}  // namespace llava
