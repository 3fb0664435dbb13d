// Parsing a chat template into the tree of jinja_ast.h. Every filter, test, method and
// function named is checked against jinja_builtins here, so that a template that needs more
// than the subset is refused when it is loaded, before any request.
#pragma once

#include <string>
#include <vector>

#include "coordinator/jinja_ast.h"

namespace llava::jinja {

// The template's top-level statements; throws JinjaError "line L: what".
std::vector<Node> parse_template(const std::string& source);

}  // namespace llava::jinja
