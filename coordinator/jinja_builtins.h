// What a chat template may call by name: filters (x | f), tests (x is t), string and dict
// methods (s.strip()), and the functions raise_exception and range. The is_* lists are what
// the parser accepts; everything else is refused when a template is loaded.
#pragma once

#include <string>
#include <vector>

#include "coordinator/jinja_value.h"

namespace llava::jinja {

bool is_filter(const std::string& name);
bool is_test(const std::string& name);
bool is_method(const std::string& name);
bool is_function(const std::string& name);

// Each takes its arguments evaluated (the object where it lies); a bad argument throws
// RequestError (runtime_error).
bool test(const std::string& name, ValueRef v, const std::vector<Value>& args);
Value filter(const std::string& name, ValueRef v, const std::vector<Value>& args);
Value method(const std::string& name, ValueRef object, const std::vector<Value>& args);
// raise_exception(message) throws RequestError with the template's message; range(...).
Value call_function(const std::string& name, const std::vector<Value>& args);

}  // namespace llava::jinja
