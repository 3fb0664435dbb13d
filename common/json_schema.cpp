// The JSON Schema compiler and the recognizer (json_schema.h).
#include "common/json_schema.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <map>
#include <set>

#include "common/json_depth.h"
#include "common/string_automaton.h"
#include "common/utf8.h"

namespace llava {
namespace {

using Json = nlohmann::json;
using Kind = JsonSchema::Kind;

bool digit(unsigned char c) {
  return c >= '0' && c <= '9';
}
bool hex(unsigned char c) {
  return digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
bool space(unsigned char c) {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

// Keywords that say nothing about which texts are valid.
bool annotation(const std::string& key) {
  static const std::set<std::string> kKeys = {
      "title", "description", "default",        "examples", "$schema",
      "$id",   "$comment",    "deprecated",     "readOnly", "writeOnly",
      "$defs", "definitions", kPropertyOrderKey};
  return kKeys.count(key) > 0;
}

}  // namespace

class SchemaCompiler {
 public:
  explicit SchemaCompiler(const Json& root)
      : root_(root), schema_(std::make_shared<JsonSchema>()) {}

  std::shared_ptr<const JsonSchema> run() {
    const int root = compile(root_, "#");
    schema_->root_ = root;
    if (schema_->nodes_[static_cast<size_t>(root)].kind != Kind::kObject) {
      throw JsonSchemaError(
          "json_schema: the root (#) must be an object schema (\"type\": \"object\")");
    }
    finish_unions();
    check_finite(root);
    return schema_;
  }

  std::shared_ptr<const JsonSchema> any_object() {
    JsonSchema::Node object;
    object.open = true;
    object.values = any();
    schema_->root_ = add(std::move(object), "#");
    finish_unions();
    return schema_;
  }

 private:
  [[noreturn]] static void fail(const std::string& path, const std::string& what) {
    throw JsonSchemaError("json_schema: " + what + " (at " + path + ")");
  }

  int add(JsonSchema::Node node, const std::string& path) {
    if (schema_->nodes_.size() >= JsonSchema::kMaxNodes) {
      fail(path, "more than " + std::to_string(JsonSchema::kMaxNodes) + " schemas");
    }
    schema_->nodes_.push_back(std::move(node));
    paths_.push_back(path);
    return static_cast<int>(schema_->nodes_.size() - 1);
  }

  int literal(std::vector<std::string> texts, const std::string& path) {
    std::sort(texts.begin(), texts.end());
    texts.erase(std::unique(texts.begin(), texts.end()), texts.end());
    if (texts.size() > JsonSchema::kMaxLiterals) {
      fail(path, std::to_string(texts.size()) + " values; at most " +
                     std::to_string(JsonSchema::kMaxLiterals));
    }
    JsonSchema::Node node;
    node.kind = Kind::kLiteral;
    node.literals = std::move(texts);
    return add(std::move(node), path);
  }

  // Any JSON value: an object of any keys and values, an array of any values, a string, a
  // number, true, false or null.
  int any() {
    if (any_ >= 0) return any_;
    JsonSchema::Node union_node;
    union_node.kind = Kind::kUnion;
    any_ = add(std::move(union_node), "#");
    JsonSchema::Node object, array, string, number;
    object.open = true, object.values = any_;
    array.kind = Kind::kArray, array.items = any_;
    string.kind = Kind::kString;
    number.kind = Kind::kNumber;
    std::vector<int> branches = {add(std::move(object), "#"), add(std::move(array), "#"),
                                 add(std::move(string), "#"), add(std::move(number), "#"),
                                 literal({"true", "false", "null"}, "#")};
    schema_->nodes_[static_cast<size_t>(any_)].branches = std::move(branches);
    return any_;
  }

  int compile(const Json& s, const std::string& path) {
    if (s.is_boolean()) {
      if (!s.get<bool>()) fail(path, "false admits no value");
      return any();
    }
    if (!s.is_object()) fail(path, "a schema is an object or a boolean, got " + shown(s));
    static const std::set<std::string> kKeys = {"type",
                                                "properties",
                                                "required",
                                                "additionalProperties",
                                                "items",
                                                "minItems",
                                                "maxItems",
                                                "minLength",
                                                "maxLength",
                                                "enum",
                                                "const",
                                                "anyOf",
                                                "oneOf",
                                                "$ref",
                                                "allOf",
                                                "minimum",
                                                "maximum",
                                                "exclusiveMinimum",
                                                "exclusiveMaximum",
                                                "format",
                                                "pattern"};
    for (const auto& [key, value] : s.items()) {
      if (!kKeys.count(key) && !annotation(key)) fail(path, "'" + key + "' is not supported");
    }
    // What a keyword may not share a schema with (a $ref, an anyOf stand alone).
    auto alone = [&](const char* keyword) {
      for (const auto& [key, value] : s.items()) {
        if (key != keyword && !annotation(key)) {
          fail(path, "'" + std::string(keyword) + "' beside '" + key + "' is not supported");
        }
      }
    };
    if (s.contains("$ref")) {
      alone("$ref");
      return reference(s["$ref"], path + "/$ref");
    }
    if (s.contains("allOf")) {  // of one schema (Pydantic's way to annotate a $ref): that schema
      alone("allOf");
      const Json& list = s["allOf"];
      if (!list.is_array() || list.size() != 1)
        fail(path + "/allOf", "only a list of one schema is supported");
      return compile(list[0], path + "/allOf/0");
    }
    for (const char* keyword : {"anyOf", "oneOf"}) {
      if (!s.contains(keyword)) continue;
      alone(keyword);
      const Json& list = s[keyword];
      if (!list.is_array() || list.empty())
        fail(path + "/" + keyword, "expected a non-empty list of schemas");
      JsonSchema::Node node;
      node.kind = Kind::kUnion;
      for (size_t i = 0; i < list.size(); ++i)
        node.branches.push_back(compile(list[i], path + "/" + keyword + "/" + std::to_string(i)));
      return add(std::move(node), path + "/" + keyword);
    }
    const std::vector<std::string> types = type_names(s, path);
    for (const char* keyword : {"format", "pattern"}) {
      if (s.contains(keyword) && !types.empty() &&
          std::find(types.begin(), types.end(), "string") == types.end()) {
        fail(path + "/" + keyword, std::string("a ") + keyword + " is supported for strings only");
      }
    }
    if (s.contains("enum") || s.contains("const")) return literals(s, types, path);
    if (types.size() > 1) {
      JsonSchema::Node node;
      node.kind = Kind::kUnion;
      const bool number = std::count(types.begin(), types.end(), "number") > 0;
      for (const std::string& type : types) {
        if (type == "integer" && number) continue;  // every integer is a number
        node.branches.push_back(typed(s, type, path));
      }
      return add(std::move(node), path + "/type");
    }
    if (types.size() == 1) return typed(s, types[0], path);
    if (s.contains("properties") || s.contains("required") || s.contains("additionalProperties")) {
      return typed(s, "object", path);
    }
    if (s.contains("items") || s.contains("minItems") || s.contains("maxItems"))
      return typed(s, "array", path);
    if (s.contains("minLength") || s.contains("maxLength") || s.contains("format") ||
        s.contains("pattern"))
      return typed(s, "string", path);
    return any();
  }

  static std::vector<std::string> type_names(const Json& s, const std::string& path) {
    static const std::set<std::string> kTypes = {"object",  "array",   "string", "number",
                                                 "integer", "boolean", "null"};
    std::vector<std::string> types;
    if (!s.contains("type")) return types;
    const Json& type = s["type"];
    auto take = [&](const Json& name) {
      if (!name.is_string() || !kTypes.count(name.get<std::string>())) {
        fail(path + "/type", "unknown type " + shown(name));
      }
      if (std::find(types.begin(), types.end(), name.get<std::string>()) == types.end()) {
        types.push_back(name.get<std::string>());
      }
    };
    if (type.is_array()) {
      if (type.empty()) fail(path + "/type", "an empty list of types admits no value");
      for (const Json& name : type) take(name);
    } else {
      take(type);
    }
    return types;
  }

  static bool of_type(const Json& value, const std::string& type) {
    if (type == "object") return value.is_object();
    if (type == "array") return value.is_array();
    if (type == "string") return value.is_string();
    if (type == "number") return value.is_number();
    if (type == "integer") return value.is_number_integer();
    if (type == "boolean") return value.is_boolean();
    return value.is_null();
  }

  int literals(const Json& s, const std::vector<std::string>& types, const std::string& path) {
    std::vector<Json> values;
    if (s.contains("const")) {
      values.push_back(s["const"]);
    } else {
      if (!s["enum"].is_array() || s["enum"].empty())
        fail(path + "/enum", "expected a non-empty list of values");
      for (const Json& value : s["enum"]) values.push_back(value);
    }
    std::vector<std::string> texts;
    for (const Json& value : values) {
      const bool typed = types.empty() ||
                         std::any_of(types.begin(), types.end(),
                                     [&](const std::string& type) { return of_type(value, type); });
      if (typed) texts.push_back(json_text(value));
    }
    if (texts.empty()) fail(path, "no value of the enum (or const) has the schema's type");
    return literal(std::move(texts), path + (s.contains("const") ? "/const" : "/enum"));
  }

  static uint32_t count(const Json& s, const char* key, const std::string& path, uint32_t absent) {
    if (!s.contains(key)) return absent;
    const Json& value = s[key];
    if (!value.is_number_integer() || value.get<int64_t>() < 0) {
      fail(path + "/" + key, "expected a whole number, got " + shown(value));
    }
    return static_cast<uint32_t>(std::min<int64_t>(value.get<int64_t>(), JsonSchema::kMaxItems));
  }

  // A string's lengths (minLength, maxLength) or an array's (minItems, maxItems) into node.
  static void lengths(const Json& s, const std::string& path, const std::string& what,
                      JsonSchema::Node& node) {
    const std::string min = "min" + what, max = "max" + what;
    node.min_items = count(s, min.c_str(), path, 0);
    node.max_items = count(s, max.c_str(), path, JsonSchema::kMaxItems);
    if (node.min_items > node.max_items) fail(path, min + " is above " + max);
    if (node.min_items == JsonSchema::kMaxItems) {
      fail(path + "/" + min, "at most " + std::to_string(JsonSchema::kMaxItems - 1));
    }
  }

  int typed(const Json& s, const std::string& type, const std::string& path) {
    JsonSchema::Node node;
    if (type == "string") {
      node.kind = Kind::kString;
      lengths(s, path, "Length", node);
      if (s.contains("format") || s.contains("pattern")) node.automaton = string_automaton(s, path);
    } else if (type == "number" || type == "integer") {
      node.kind = Kind::kNumber;
      node.integer = type == "integer";
      integer_bounds(s, path, node);
    } else if (type == "boolean") {
      return literal({"true", "false"}, path);
    } else if (type == "null") {
      return literal({"null"}, path);
    } else if (type == "array") {
      node.kind = Kind::kArray;
      if (s.contains("items") && s["items"].is_array())
        fail(path + "/items", "a list of item schemas is not supported");
      lengths(s, path, "Items", node);
      const int index = add(std::move(node), path);
      const int items = s.contains("items") ? compile(s["items"], path + "/items") : any();
      schema_->nodes_[static_cast<size_t>(index)].items = items;
      return index;
    } else {
      return object(s, path);
    }
    return add(std::move(node), path);
  }

  // A string's format or pattern as the automaton its text follows (an index into the
  // schema's automata).
  int16_t string_automaton(const Json& s, const std::string& path) {
    const char* keyword = s.contains("format") ? "format" : "pattern";
    for (const char* other : {"pattern", "minLength", "maxLength"}) {
      if (other != std::string_view(keyword) && s.contains(other))
        fail(path, "'" + std::string(keyword) + "' beside '" + other + "' is not supported");
    }
    const Json& value = s[keyword];
    const std::string where = path + "/" + keyword;
    if (!value.is_string()) fail(where, "expected a string, got " + shown(value));
    std::shared_ptr<const StringAutomaton> automaton;
    if (s.contains("format")) {
      automaton = format_automaton(value.get<std::string>());
      if (!automaton) {
        fail(where, "format " + value.dump() +
                        " is not supported (only \"date\", \"time\", \"date-time\", \"uuid\" and "
                        "\"ipv4\")");
      }
    } else {
      try {
        automaton = pattern_automaton(value.get<std::string>());
      } catch (const PatternError& e) {
        fail(where, std::string("pattern: ") + e.what());
      }
    }
    schema_->automata_.push_back(std::move(automaton));
    return static_cast<int16_t>(schema_->automata_.size() - 1);
  }

  // An integer's minimum, maximum, exclusiveMinimum, exclusiveMaximum as inclusive bounds;
  // a number's are not followed (refused).
  static void integer_bounds(const Json& s, const std::string& path, JsonSchema::Node& node) {
    double lo = -9.2e18, hi = 9.2e18;
    for (const char* key : {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}) {
      if (!s.contains(key)) continue;
      if (!node.integer) fail(path, "'" + std::string(key) + "' is supported for integers only");
      const Json& value = s[key];
      if (!value.is_number()) fail(path + "/" + key, "expected a number, got " + shown(value));
      const double v = value.get<double>();
      const std::string name = key;
      if (name == "minimum") lo = std::max(lo, std::ceil(v));
      if (name == "exclusiveMinimum") lo = std::max(lo, std::floor(v) + 1);
      if (name == "maximum") hi = std::min(hi, std::floor(v));
      if (name == "exclusiveMaximum") hi = std::min(hi, std::ceil(v) - 1);
    }
    if (lo > hi) fail(path, "no integer lies between its minimum and maximum");
    node.minimum = lo <= -9.2e18 ? INT64_MIN : static_cast<int64_t>(lo);
    node.maximum = hi >= 9.2e18 ? INT64_MAX : static_cast<int64_t>(hi);
  }

  int object(const Json& s, const std::string& path) {
    const Json empty = Json::object();
    const Json& properties = s.contains("properties") ? s["properties"] : empty;
    if (!properties.is_object()) fail(path + "/properties", "expected an object of schemas");
    if (properties.size() > JsonSchema::kMaxProperties) {
      fail(path + "/properties", std::to_string(properties.size()) + " properties; at most " +
                                     std::to_string(JsonSchema::kMaxProperties));
    }
    std::vector<std::string> names;
    for (const auto& [name, value] : properties.items()) names.push_back(name);
    if (s.contains(kPropertyOrderKey)) {  // the order given, where the JSON value sorted it
      std::vector<std::string> order;
      for (const Json& name : s[kPropertyOrderKey])
        order.push_back(name.is_string() ? name.get<std::string>() : "");
      std::vector<std::string> sorted = order;
      std::sort(sorted.begin(), sorted.end());
      if (sorted == names) names = order;
    }
    std::set<std::string> required;
    if (s.contains("required")) {
      if (!s["required"].is_array()) fail(path + "/required", "expected a list of property names");
      for (const Json& name : s["required"]) {
        if (!name.is_string() || !properties.contains(name.get<std::string>())) {
          fail(path + "/required", shown(name) + " is not one of the properties");
        }
        required.insert(name.get<std::string>());
      }
    }
    const int index = add(JsonSchema::Node{}, path);
    if (names.empty()) {
      const Json* more = s.contains("additionalProperties") ? &s["additionalProperties"] : nullptr;
      const bool closed = more && more->is_boolean() && !more->get<bool>();
      const int values = closed ? -1
                         : more && more->is_object()
                             ? compile(*more, path + "/additionalProperties")
                             : any();
      auto& node = schema_->nodes_[static_cast<size_t>(index)];
      node.open = !closed;
      node.values = values;
      return index;
    }
    std::vector<JsonSchema::Property> out;
    for (const std::string& name : names) {
      JsonSchema::Property property;
      property.key = json_text(Json(name));
      property.required = required.count(name) > 0;
      property.node = compile(properties[name], path + "/properties/" + name);
      out.push_back(std::move(property));
    }
    schema_->nodes_[static_cast<size_t>(index)].properties = std::move(out);
    return index;
  }

  // "#", "#/$defs/NAME" or "#/definitions/NAME" ("~1" is '/', "~0" '~').
  int reference(const Json& ref, const std::string& path) {
    if (!ref.is_string()) fail(path, "expected a string, got " + shown(ref));
    const std::string target = ref.get<std::string>();
    if (auto known = refs_.find(target); known != refs_.end()) return known->second;
    const Json* schema = nullptr;
    if (target == "#") {
      schema = &root_;
    } else {
      for (const char* defs : {"#/$defs/", "#/definitions/"}) {
        const std::string prefix = defs;
        if (target.compare(0, prefix.size(), prefix) != 0) continue;
        std::string name;
        const std::string rest = target.substr(prefix.size());
        for (size_t i = 0; i < rest.size(); ++i) {
          if (rest[i] == '~' && i + 1 < rest.size() && (rest[i + 1] == '0' || rest[i + 1] == '1')) {
            name += rest[++i] == '0' ? '~' : '/';
          } else {
            name += rest[i];
          }
        }
        const std::string key = prefix.substr(2, prefix.size() - 3);
        if (root_.contains(key) && root_[key].is_object() && root_[key].contains(name))
          schema = &root_[key][name];
      }
    }
    if (!schema)
      fail(path, "cannot resolve " + shown(ref) +
                     " (only \"#\", \"#/$defs/NAME\" and \"#/definitions/NAME\")");
    const int placeholder = add(JsonSchema::Node{}, target);
    refs_[target] = placeholder;
    const int node = compile(*schema, target);
    if (node == placeholder) fail(path, shown(ref) + " refers to nothing but itself");
    schema_->nodes_[static_cast<size_t>(placeholder)] = schema_->nodes_[static_cast<size_t>(node)];
    paths_[static_cast<size_t>(placeholder)] = paths_[static_cast<size_t>(node)];
    return placeholder;
  }

  // The first bytes of node's values, each with the branch that takes it; the objects
  // (whose values all begin with '{') into `objects`, once each, for finish_unions.
  void first_bytes(int index, int branch, std::vector<int>& into, std::vector<int>& objects,
                   std::set<int>& seen) {
    const JsonSchema::Node& node = schema_->nodes_[static_cast<size_t>(index)];
    if (!seen.insert(index).second)
      fail(paths_[static_cast<size_t>(index)], "a union that contains itself");
    auto take = [&](unsigned char c) {
      int& at = into[c];
      if (at >= 0 && at != branch) {
        fail(paths_[static_cast<size_t>(branch)],
             "two of a union's branches can begin with '" + std::string(1, static_cast<char>(c)) +
                 "': the answer's first byte must tell them apart");
      }
      at = branch;
    };
    switch (node.kind) {
      case Kind::kObject:
        if (std::find(objects.begin(), objects.end(), index) == objects.end())
          objects.push_back(index);
        break;
      case Kind::kArray:
        take('[');
        break;
      case Kind::kString:
        take('"');
        break;
      case Kind::kNumber:
        take('-');
        for (unsigned char c = '0'; c <= '9'; ++c) take(c);
        break;
      case Kind::kLiteral:
        for (const std::string& text : node.literals) take(static_cast<unsigned char>(text[0]));
        break;
      case Kind::kUnion:
        for (int b : node.branches) first_bytes(b, branch, into, objects, seen);
        break;
    }
    seen.erase(index);
  }

  // Every schema reachable from the root has a finite value (a property that requires its
  // own object, without end, has none): else the answer would run into a dead end, where
  // no token fits.
  void check_finite(int root) {
    const auto& nodes = schema_->nodes_;
    std::vector<int> reached = {root};
    std::vector<uint8_t> seen(nodes.size(), 0), finite(nodes.size(), 0);
    seen[static_cast<size_t>(root)] = 1;
    for (size_t i = 0; i < reached.size(); ++i) {
      const JsonSchema::Node& node = nodes[static_cast<size_t>(reached[i])];
      std::vector<int> next = node.branches;
      for (const auto& property : node.properties) next.push_back(property.node);
      if (node.open && node.values >= 0) next.push_back(node.values);
      if (node.kind == Kind::kArray) next.push_back(node.items);
      for (int n : next) {
        if (!seen[static_cast<size_t>(n)]) seen[static_cast<size_t>(n)] = 1, reached.push_back(n);
      }
    }
    for (bool grew = true; grew;) {
      grew = false;
      for (int index : reached) {
        const JsonSchema::Node& node = nodes[static_cast<size_t>(index)];
        if (finite[static_cast<size_t>(index)]) continue;
        auto is = [&](int n) { return finite[static_cast<size_t>(n)] != 0; };
        bool now = true;
        if (node.kind == Kind::kObject) {
          for (const auto& property : node.properties)
            now = now && (!property.required || is(property.node));
        } else if (node.kind == Kind::kArray) {
          now = node.min_items == 0 || is(node.items);
        } else if (node.kind == Kind::kUnion) {
          now = std::any_of(node.branches.begin(), node.branches.end(), is);
        }
        if (now) finite[static_cast<size_t>(index)] = 1, grew = true;
      }
    }
    for (int index : reached) {
      if (!finite[static_cast<size_t>(index)])
        fail(paths_[static_cast<size_t>(index)],
             "no finite value (it requires itself without end)");
    }
  }

  // Each union's dispatch by first byte; '{' of several objects goes to a node that reads
  // their first property (tag). Adds nodes: indices, not references, across the loop (the
  // nodes added are no unions).
  void finish_unions() {
    for (size_t i = 0; i < schema_->nodes_.size(); ++i) {
      if (schema_->nodes_[i].kind != Kind::kUnion) continue;
      std::vector<int> first(256, -1), objects;
      for (int branch : schema_->nodes_[i].branches) {
        std::set<int> seen = {static_cast<int>(i)};
        first_bytes(branch, branch, first, objects, seen);
      }
      int& brace = first[static_cast<size_t>('{')];
      if (!objects.empty() && brace >= 0) {  // an enum's object value beside an object schema
        fail(paths_[static_cast<size_t>(brace)],
             "two of a union's branches can begin with '{': the answer's first byte must tell "
             "them apart");
      }
      if (objects.size() == 1) brace = objects[0];
      if (objects.size() > 1) brace = tag(objects, paths_[i]);
      for (int c = 0; c < 256; ++c)
        schema_->nodes_[i].first[c] = static_cast<int16_t>(first[static_cast<size_t>(c)]);
    }
  }

  // The node that tells a union's objects apart by their first property (Node::tagged):
  // each object's first property required, under one key, one constant string, a different
  // one in each. Every object is a branch of the union as well, so check_finite sees it.
  // `path` (the union's) is a copy: add() may move paths_.
  int tag(const std::vector<int>& objects, std::string path) {
    std::vector<int> sorted = objects;
    std::sort(sorted.begin(), sorted.end());
    if (auto known = tags_.find(sorted); known != tags_.end()) return known->second;
    std::string key;
    std::vector<std::string> texts;  // per object, its first property's value
    for (int index : objects) {
      const JsonSchema::Node& object = schema_->nodes_[static_cast<size_t>(index)];
      const JsonSchema::Property* first =
          object.properties.empty() ? nullptr : &object.properties.front();
      const JsonSchema::Node* value =
          first ? &schema_->nodes_[static_cast<size_t>(first->node)] : nullptr;
      if (!first || !first->required || (!texts.empty() && first->key != key) ||
          value->kind != Kind::kLiteral || value->literals.size() != 1 ||
          value->literals[0][0] != '"') {
        fail(paths_[static_cast<size_t>(index)],
             "two of a union's branches can begin with '{': objects are told apart only by a "
             "first property, required and under the same key in each, whose value is one "
             "constant string");
      }
      const std::string& text = value->literals[0];
      if (std::find(texts.begin(), texts.end(), text) != texts.end()) {
        fail(paths_[static_cast<size_t>(index)],
             "two of a union's branches can begin with '{' and have the same first property, " +
                 first->key + ":" + text + ": objects are told apart by its value");
      }
      key = first->key;
      texts.push_back(text);
    }
    if (texts.size() > JsonSchema::kMaxLiterals) {
      fail(path, std::to_string(texts.size()) + " objects told apart by their first property; " +
                     "at most " + std::to_string(JsonSchema::kMaxLiterals));
    }
    JsonSchema::Node node;
    JsonSchema::Property property;
    property.key = key;
    property.required = true;
    property.node = literal(texts, path);
    for (const std::string& text : schema_->nodes_[static_cast<size_t>(property.node)].literals) {
      const auto at = std::find(texts.begin(), texts.end(), text) - texts.begin();
      node.tagged.push_back(objects[static_cast<size_t>(at)]);
    }
    node.properties.push_back(std::move(property));
    return tags_[sorted] = add(std::move(node), path);
  }

  const Json& root_;
  std::shared_ptr<JsonSchema> schema_;
  std::vector<std::string> paths_;  // per node: its place in the schema, for errors
  std::map<std::string, int> refs_;
  std::map<std::vector<int>, int> tags_;  // a union's objects (sorted): their tag node
  int any_ = -1;
};

std::shared_ptr<const JsonSchema> JsonSchema::compile(const nlohmann::json& schema) {
  return SchemaCompiler(schema).run();
}

std::shared_ptr<const JsonSchema> JsonSchema::any_object() {
  static const Json kNone;
  static const std::shared_ptr<const JsonSchema> kAny = SchemaCompiler(kNone).any_object();
  return kAny;
}

namespace {

// Adds kPropertyOrderKey to the object schema `value` and to every schema within it (in
// `ordered`'s order): only where a keyword's value is a schema, so that a property named
// "properties" is not taken for the keyword.
void add_order(const nlohmann::ordered_json& ordered, Json& value) {
  if (!ordered.is_object() || !value.is_object()) return;
  auto each = [&](const char* keyword, bool list) {
    auto at = ordered.find(keyword);
    if (at == ordered.end() || !value.contains(keyword)) return;
    Json& mine = value[keyword];
    if (list && at->is_array() && mine.is_array() && at->size() == mine.size()) {
      for (size_t i = 0; i < at->size(); ++i) add_order((*at)[i], mine[i]);
    } else if (!list && at->is_object() && mine.is_object()) {
      for (auto it = at->begin(); it != at->end(); ++it) {
        if (mine.contains(it.key())) add_order(it.value(), mine[it.key()]);
      }
    }
  };
  for (const char* keyword : {"items", "additionalProperties"}) {
    if (auto at = ordered.find(keyword); at != ordered.end() && value.contains(keyword))
      add_order(*at, value[keyword]);
  }
  each("anyOf", true);
  each("oneOf", true);
  each("properties", false);
  each("$defs", false);
  each("definitions", false);
  if (auto properties = ordered.find("properties");
      properties != ordered.end() && properties->is_object()) {
    Json names = Json::array();
    for (auto it = properties->begin(); it != properties->end(); ++it) names.push_back(it.key());
    value[kPropertyOrderKey] = std::move(names);
  }
}

}  // namespace

nlohmann::json with_property_order(std::string_view text, const std::vector<std::string>& path) {
  // Only the value's own text is read again (a schema beside megabytes of images' base64).
  const std::optional<std::string_view> span =
      path.empty() ? std::optional<std::string_view>(text) : json_value_at(text, path);
  if (!span) return Json();
  Json value = parse_json(*span);  // the depth bound, before the ordered parse
  add_order(nlohmann::ordered_json::parse(*span), value);
  return value;
}

// ---- the recognizer ----

// A copy takes the frames in use only: the mask copies a state for each token it tries.
SchemaState::SchemaState(const SchemaState& other) {
  *this = other;
}

SchemaState& SchemaState::operator=(const SchemaState& other) {
  std::memcpy(static_cast<void*>(this), &other, offsetof(SchemaState, stack_));
  std::memcpy(stack_, other.stack_, sizeof(Frame) * other.depth_);
  return *this;
}

const std::string& SchemaState::candidate(int i) const {
  return match_key_ ? top().properties[static_cast<size_t>(i)].key
                    : schema_->node(match_node_).literals[static_cast<size_t>(i)];
}

bool SchemaState::feed(std::string_view bytes) {
  for (char c : bytes) {
    if (!feed(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool SchemaState::value(int index, unsigned char c) {
  const JsonSchema::Node* node = &schema_->node(index);
  if (node->kind == Kind::kUnion) {
    const int branch = node->first[c];
    return branch >= 0 && value(branch, c);
  }
  switch (node->kind) {
    case Kind::kObject:
    case Kind::kArray:
      if (c != (node->kind == Kind::kObject ? '{' : '[') || depth_ == kMaxDepth) return false;
      stack_[depth_++] = Frame{static_cast<uint16_t>(index), 0};
      mode_ = Mode::kObjectOpen;
      return true;
    case Kind::kString:
      if (c != '"') return false;
      mode_ = Mode::kString;
      key_ = false;
      chars_ = 0;
      min_chars_ = static_cast<uint16_t>(node->min_items);
      max_chars_ = static_cast<uint16_t>(node->max_items);
      automaton_ = node->automaton;
      automaton_state_ = 0;
      return true;
    case Kind::kNumber:
      if (c != '-' && !digit(c)) return false;
      mode_ = Mode::kNumber;
      integer_ = node->integer;
      number_ = c == '-' ? Number::kMinus : c == '0' ? Number::kZero : Number::kInt;
      number_node_ = static_cast<uint16_t>(index);
      negative_ = c == '-';
      magnitude_ = digit(c) ? static_cast<uint64_t>(c - '0') : 0;
      return within_bounds(number_ != Number::kZero);
    case Kind::kLiteral: {
      uint64_t candidates = 0;
      for (size_t i = 0; i < node->literals.size(); ++i) {
        if (static_cast<unsigned char>(node->literals[i][0]) == c) candidates |= uint64_t{1} << i;
      }
      if (!candidates) return false;
      mode_ = Mode::kMatch;
      match_key_ = false;
      match_node_ = static_cast<uint16_t>(index);
      candidates_ = candidates;
      pos_ = 1;
      return true;
    }
    case Kind::kUnion:
      break;
  }
  return false;
}

bool SchemaState::ended_value() {
  if (depth_ == 0) {
    mode_ = Mode::kDone;
    return true;
  }
  Frame& frame = stack_[depth_ - 1];
  if (top().kind == Kind::kArray && frame.at < JsonSchema::kMaxItems) ++frame.at;
  mode_ = Mode::kAfterValue;
  return true;
}

bool SchemaState::key_start(unsigned char c) {
  if (c != '"') return false;
  const JsonSchema::Node& node = top();
  if (node.open) {
    mode_ = Mode::kString;
    key_ = true;
    chars_ = 0, min_chars_ = 0, max_chars_ = JsonSchema::kMaxItems;
    automaton_ = -1;
    return true;
  }
  // Any property from the next one it may take up to the first required one.
  uint64_t candidates = 0;
  for (size_t i = stack_[depth_ - 1].at; i < node.properties.size(); ++i) {
    candidates |= uint64_t{1} << i;
    if (node.properties[i].required) break;
  }
  if (!candidates) return false;
  mode_ = Mode::kMatch;
  match_key_ = true;
  candidates_ = candidates;
  pos_ = 1;
  return true;
}

bool SchemaState::matched(unsigned char c) {
  for (uint64_t rest = candidates_; rest; rest &= rest - 1) {
    const int i = __builtin_ctzll(rest);
    if (candidate(i).size() != pos_) continue;
    if (match_key_) {
      stack_[depth_ - 1].at = static_cast<uint16_t>(i + 1);
      value_ = static_cast<uint16_t>(top().properties[static_cast<size_t>(i)].node);
      mode_ = Mode::kColon;
    } else {
      // The first property of a union's objects: its value says which object the text is.
      if (depth_ > 0 && !top().tagged.empty()) {
        Frame& frame = stack_[depth_ - 1];
        if (frame.at == 1 && match_node_ == top().properties[0].node)
          frame.node = static_cast<uint16_t>(top().tagged[static_cast<size_t>(i)]);
      }
      ended_value();
    }
    return feed(c);
  }
  return false;
}

bool SchemaState::closable() const {
  const JsonSchema::Node& node = top();
  const auto rest =
      node.properties.begin() + std::min<size_t>(stack_[depth_ - 1].at, node.properties.size());
  return node.open || std::none_of(rest, node.properties.end(),
                                   [](const JsonSchema::Property& p) { return p.required; });
}

bool SchemaState::within_bounds(bool more) const {
  const JsonSchema::Node& node = schema_->node(number_node_);
  if (!node.integer || (node.minimum == INT64_MIN && node.maximum == INT64_MAX)) return true;
  // The values the digits can still become: magnitude_ x 10^k to that + 10^k - 1, with k
  // more digits (at least one after a lone '-'; none where no more may come).
  const __int128 lo = node.minimum, hi = node.maximum;
  const bool lone_minus = number_ == Number::kMinus;
  __int128 scale = 1;
  for (int k = 0; k <= 19; ++k, scale *= 10) {
    if (k > 0 && !more) break;
    if (k == 0 && lone_minus) continue;
    const __int128 low = static_cast<__int128>(magnitude_) * scale, high = low + scale - 1;
    const __int128 from = negative_ ? -high : low, to = negative_ ? -low : high;
    if (to >= lo && from <= hi) return true;
  }
  return false;
}

// A number ends at the first byte that cannot continue it, which is then the container's.
bool SchemaState::after_number(unsigned char c) {
  const bool fraction = !integer_ && c == '.', exponent = !integer_ && (c == 'e' || c == 'E');
  switch (number_) {
    case Number::kMinus:
      if (!digit(c)) return false;
      number_ = c == '0' ? Number::kZero : Number::kInt;
      magnitude_ = static_cast<uint64_t>(c - '0');
      return within_bounds(number_ == Number::kInt);
    case Number::kZero:
    case Number::kInt:
      if (digit(c) && number_ == Number::kInt) {
        if (magnitude_ > UINT64_MAX / 10 - 1) return false;  // past any 64-bit bound
        magnitude_ = magnitude_ * 10 + static_cast<uint64_t>(c - '0');
        return within_bounds(true);
      }
      if (fraction) return number_ = Number::kDot, true;
      if (exponent) return number_ = Number::kE, true;
      break;
    case Number::kDot:
      if (!digit(c)) return false;
      number_ = Number::kFraction;
      return true;
    case Number::kFraction:
      if (digit(c)) return true;
      if (exponent) return number_ = Number::kE, true;
      break;
    case Number::kE:
      if (c == '+' || c == '-') return number_ = Number::kExponentSign, true;
      if (!digit(c)) return false;
      number_ = Number::kExponent;
      return true;
    case Number::kExponentSign:
      if (!digit(c)) return false;
      number_ = Number::kExponent;
      return true;
    case Number::kExponent:
      if (digit(c)) return true;
      break;
  }
  if (integer_ && !within_bounds(false)) return false;  // a bounded integer ends within them
  ended_value();  // a whole number: c is the next token's
  return feed(c);
}

// A character's first byte (common/utf8.h's table): how many bytes follow, and the range
// of the next one.
bool SchemaState::utf8_start(unsigned char c) {
  Utf8Lead lead;
  if (!utf8_lead(c, lead)) return false;
  utf8_left_ = static_cast<uint8_t>(lead.more);
  utf8_low_ = lead.low, utf8_high_ = lead.high;
  return true;
}

bool SchemaState::feed(unsigned char c) {
  if (!schema_) return false;
  switch (mode_) {
    case Mode::kLeading:
      if (space(c) && leading_ < 1) return ++leading_, true;
      return value(schema_->root(), c);
    case Mode::kValue:
      return value(value_, c);
    case Mode::kObjectOpen: {
      const JsonSchema::Node& node = top();
      if (node.kind == Kind::kArray) {
        if (c == ']' && node.min_items == 0) return --depth_, ended_value();
        return node.max_items > 0 && value(node.items, c);
      }
      if (c == '}' && closable()) return --depth_, ended_value();
      return key_start(c);
    }
    case Mode::kKey:
      return key_start(c);
    case Mode::kColon:
      if (c != ':') return false;
      mode_ = Mode::kValue;
      return true;
    case Mode::kAfterValue: {
      const JsonSchema::Node& node = top();
      const Frame frame = stack_[depth_ - 1];
      if (node.kind == Kind::kArray) {
        if (c == ',' && frame.at < node.max_items) {
          mode_ = Mode::kValue;
          value_ = static_cast<uint16_t>(node.items);
          return true;
        }
        if (c == ']' && frame.at >= node.min_items) return --depth_, ended_value();
        return false;
      }
      if (c == ',' && (node.open || frame.at < node.properties.size()))
        return mode_ = Mode::kKey, true;
      if (c == '}' && closable()) return --depth_, ended_value();
      return false;
    }
    case Mode::kString:
      if (automaton_ >= 0) {  // a format's or pattern's: ASCII its automaton takes, then '"'
        const StringAutomaton& automaton = schema_->automaton(automaton_);
        if (c == '"') {
          if (!automaton.accept[automaton_state_]) return false;
          automaton_ = -1;
          return ended_value();
        }
        const int next = c < 128 ? automaton.next[automaton_state_][c] : -1;
        if (next < 0) return false;
        automaton_state_ = static_cast<uint16_t>(next);
        return true;
      }
      if (utf8_left_ > 0) {  // within a character: a continuation byte in its range
        if (c < utf8_low_ || c > utf8_high_) return false;
        --utf8_left_;
        utf8_low_ = 0x80, utf8_high_ = 0xBF;
        return true;
      }
      if (surrogate_ == 1) {  // a high surrogate's low half must follow
        if (c != '\\') return false;
        surrogate_ = 2;
        return mode_ = Mode::kEscape, true;
      }
      if (c == '"') {
        if (chars_ < min_chars_) return false;
        if (!key_) return ended_value();
        key_ = false;
        mode_ = Mode::kColon;
        value_ = static_cast<uint16_t>(top().values);
        return true;
      }
      // A character starts (a byte below 0x80, a UTF-8 lead, an escape): within maxLength.
      if (c < 0x20 || chars_ >= max_chars_) return false;
      if (chars_ < JsonSchema::kMaxItems) ++chars_;
      if (c >= 0x80) return utf8_start(c);
      if (c == '\\') return mode_ = Mode::kEscape, true;
      return true;
    case Mode::kEscape:
      if (c == 'u') {
        if (surrogate_ == 2) surrogate_ = 3;
        mode_ = Mode::kHex;
        hex_left_ = 4;
        hex_value_ = 0;
        return true;
      }
      if (surrogate_ != 0 || c == 0 || !std::strchr("\"\\/bfnrt", c)) return false;
      mode_ = Mode::kString;
      return true;
    case Mode::kHex: {
      if (!hex(c)) return false;
      hex_value_ =
          static_cast<uint16_t>(hex_value_ * 16 + (digit(c) ? c - '0' : (c | 0x20) - 'a' + 10));
      --hex_left_;
      // The values the digits so far can still become: refused where none may come (a dead
      // end would leave the mask nothing to allow a few tokens later).
      const uint32_t lo = static_cast<uint32_t>(hex_value_) << (4 * hex_left_),
                     hi = lo + (1u << (4 * hex_left_)) - 1;
      const bool can = surrogate_ == 3 ? lo <= 0xDFFF && hi >= 0xDC00 : lo < 0xDC00 || hi > 0xDFFF;
      if (!can) return false;
      if (hex_left_ > 0) return true;
      const bool high = hex_value_ >= 0xD800 && hex_value_ <= 0xDBFF,
                 low = hex_value_ >= 0xDC00 && hex_value_ <= 0xDFFF;
      if (surrogate_ == 3) {
        if (!low) return false;
        surrogate_ = 0;
      } else if (high) {
        surrogate_ = 1;
      } else if (low) {
        return false;
      }
      mode_ = Mode::kString;
      return true;
    }
    case Mode::kNumber:
      return after_number(c);
    case Mode::kMatch: {
      uint64_t next = 0;
      for (uint64_t rest = candidates_; rest; rest &= rest - 1) {
        const int i = __builtin_ctzll(rest);
        const std::string& text = candidate(i);
        if (text.size() > pos_ && static_cast<unsigned char>(text[pos_]) == c)
          next |= uint64_t{1} << i;
      }
      if (next) {
        candidates_ = next;
        ++pos_;
        return true;
      }
      return matched(c);
    }
    case Mode::kDone:
      return false;
  }
  return false;
}

}  // namespace llava
