// Jinja's values: truth, printing, equality, membership and the binary operators, each as
// Python (and so transformers' chat templates) defines it.
#include "coordinator/jinja_value.h"

#include <cmath>

#include "common/errors.h"

namespace llava::jinja {

[[noreturn]] void runtime_error(const std::string& what) {
  throw RequestError("chat template: " + what);
}

bool truthy(ValueRef v) {
  if (!v.j) return false;
  const json& j = *v.j;
  if (j.is_null()) return false;
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_number_integer()) return j.get<int64_t>() != 0;
  if (j.is_number()) return j.get<double>() != 0;
  if (j.is_string() || j.is_array() || j.is_object()) return !j.empty();
  return true;
}

std::string str(ValueRef v) {
  if (!v.j) return "";
  const json& j = *v.j;
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
  return str(ValueRef(&j));
}

bool equal(ValueRef a, ValueRef b) {
  if (!a.j || !b.j) return !a.j && !b.j;
  if (a.j->is_number() && b.j->is_number()) return a.j->get<double>() == b.j->get<double>();
  return *a.j == *b.j;
}

namespace {

// The bytes of the UTF-8 character that starts with byte c (a stray continuation byte: 1).
size_t utf8_bytes(unsigned char c) {
  return c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
}

}  // namespace

std::vector<json> items_of(ValueRef v) {
  if (!v.j || v.j->is_null()) return {};
  if (v.j->is_array()) return std::vector<json>(v.j->begin(), v.j->end());
  if (v.j->is_object()) {
    std::vector<json> keys;
    for (const auto& [k, _] : v.j->items()) keys.emplace_back(k);
    return keys;
  }
  if (v.j->is_string()) {
    std::vector<json> chars;
    const std::string& s = v.j->get_ref<const std::string&>();
    for (size_t i = 0; i < s.size();) {  // whole UTF-8 characters
      const size_t n = utf8_bytes(static_cast<unsigned char>(s[i]));
      chars.emplace_back(s.substr(i, n));
      i += n;
    }
    return chars;
  }
  runtime_error("cannot loop over " + str(v));
}

size_t length(ValueRef v) {
  if (!v.j || v.j->is_null()) return 0;
  if (v.j->is_array() || v.j->is_object()) return v.j->size();
  if (v.j->is_string()) {
    const std::string& s = v.j->get_ref<const std::string&>();
    size_t count = 0;
    for (size_t i = 0; i < s.size(); i += utf8_bytes(static_cast<unsigned char>(s[i]))) ++count;
    return count;
  }
  runtime_error("cannot loop over " + str(v));
}

namespace {

// A list's or string's index from Python's (negative from the end); -1 outside.
int64_t position(int64_t i, int64_t size) {
  if (i < 0) i += size;
  return i < 0 || i >= size ? -1 : i;
}

}  // namespace

const json* member_in(const json& object, const json& key) {
  if (object.is_object() && key.is_string()) {
    auto it = object.find(key.get<std::string>());
    return it == object.end() ? nullptr : &*it;
  }
  if (object.is_array() && key.is_number_integer()) {
    const int64_t i = position(key.get<int64_t>(), static_cast<int64_t>(object.size()));
    return i < 0 ? nullptr : &object[static_cast<size_t>(i)];
  }
  return nullptr;
}

Value member(ValueRef object, const json& key) {
  if (!object.j) return Value::none();
  if (object.j->is_string() && key.is_number_integer()) {
    const std::string& s = object.j->get_ref<const std::string&>();
    const int64_t i = position(key.get<int64_t>(), static_cast<int64_t>(s.size()));
    return i < 0 ? Value::none() : of(json(s.substr(static_cast<size_t>(i), 1)));
  }
  const json* found = member_in(*object.j, key);
  return found ? of(*found) : Value::none();
}

std::string trimmed(const std::string& s, bool left, bool right) {
  const char* space = " \t\n\r\f\v";
  size_t b = left ? s.find_first_not_of(space) : 0;
  if (b == std::string::npos) return "";
  size_t e = right ? s.find_last_not_of(space) : s.size() - 1;
  return s.substr(b, e - b + 1);
}

Value binary(const std::string& op, ValueRef a, ValueRef b) {
  if (op == "~") return of(json(str(a) + str(b)));
  if (op == "==") return of(json(equal(a, b)));
  if (op == "!=") return of(json(!equal(a, b)));
  if (op == "in") {
    if (b.j && a.j && b.j->is_string() && a.j->is_string()) {
      return of(json(b.j->get_ref<const std::string&>().find(a.j->get_ref<const std::string&>()) !=
                     std::string::npos));
    }
    if (b.j && a.j && b.j->is_object() && a.j->is_string())
      return of(json(b.j->contains(a.j->get_ref<const std::string&>())));
    if (b.j && b.j->is_array()) {
      for (const json& item : *b.j) {
        if (equal(a, ValueRef(&item))) return of(json(true));
      }
      return of(json(false));
    }
    for (const auto& item : items_of(b)) {
      if (equal(a, of(item))) return of(json(true));
    }
    return of(json(false));
  }
  if (!a.j || !b.j) runtime_error("'" + op + "' with an undefined value");
  const json& x = *a.j;
  const json& y = *b.j;
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

}  // namespace llava::jinja
