// Structured output: the API's response_format {"type": "json_schema"} (and JSON mode, the
// schema of any object). A JSON Schema is compiled into a graph of nodes, and a byte-level
// recognizer (SchemaState) follows an answer's text through it: which bytes may come next,
// so that a language worker can leave out every token that would leave the schema
// (stages/language/json_constraint.h). LibTorch-free: the API checks a schema with the same
// compiler the worker runs.
//
// The text is compact JSON (RFC 8259, no whitespace between tokens; one byte of it before
// the root, as a first token's leading space): a model cannot stall in whitespace. An
// object's properties come in the schema's order (OpenAI's), each at most once; the required
// ones always, the others where the model takes them. Strings take any well-formed UTF-8
// (RFC 8259 asks for it; a byte-fallback token may be part of a character) but '"', '\'
// and control bytes, plus the escapes (a \u surrogate only as half of a pair).
//
// Supported keywords: type (one or a list), properties, required, additionalProperties (a
// schema for the values of an object without properties; false: {} only), items, minItems,
// maxItems, minLength, maxLength (characters: code points), a string's format (RFC 3339's
// "date", "time" and "date-time", "uuid", "ipv4") or pattern (common/string_automaton.h's
// subset; ASCII), neither beside minLength, maxLength or the other, an integer's
// minimum, maximum,
// exclusiveMinimum and exclusiveMaximum, enum, const, allOf of one schema, anyOf / oneOf
// (branches told apart by their first byte; where several begin with '{', each must be an
// object of declared properties whose first property is required, has the same key in each,
// and one string for its value (a const, or an enum of one), a different one in each, as a
// tool call's "name"; at most kMaxLiterals such objects), $ref to "#", "#/$defs/NAME" or
// "#/definitions/NAME" (recursion included), and annotations (title, description, default,
// examples, $schema, $id, $comment, deprecated, readOnly, writeOnly). Anything else
// (another format, a pattern beyond that subset, a number's minimum, multipleOf, allOf of several,
// ...) is refused with its place in the schema, not ignored: the answer would not be held to it.
#pragma once

#include <climits>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "common/string_automaton.h"

namespace llava {

// A schema that cannot be followed; what() names the keyword and its place ("#/properties/a").
struct JsonSchemaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class JsonSchema {
 public:
  static constexpr size_t kMaxNodes = 4096;
  static constexpr size_t kMaxProperties = 64;  // of one object
  static constexpr size_t kMaxLiterals = 64;    // values of one enum
  static constexpr uint32_t kMaxItems = 65535;  // a larger maxItems (or maxLength) is no bound

  // The schema as JSON; throws JsonSchemaError. `property_order` (optional): the key under
  // which an object schema lists its properties' names in the order given, where the JSON
  // value has lost it (nlohmann::json sorts keys; see with_property_order).
  static std::shared_ptr<const JsonSchema> compile(const nlohmann::json& schema);
  // JSON mode's: any object.
  static std::shared_ptr<const JsonSchema> any_object();

  enum class Kind : uint8_t {
    kObject,   // declared properties, or (open) any keys with values of `values`; or a
               // union's objects told apart by their first property (`tagged`)
    kArray,    // items of `items`, min_items to max_items of them
    kString,   // any string of min_items to max_items characters
    kNumber,   // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? (integer: no fraction or exponent)
    kLiteral,  // one of `literals`, compact JSON texts (enum, const, true / false, null)
    kUnion,    // one of `branches`, chosen by the value's first byte (`first`)
  };
  struct Property {
    std::string key;  // as JSON text, quotes included: "\"name\""
    int node = 0;
    bool required = false;
  };
  struct Node {
    Kind kind = Kind::kObject;
    // kObject
    std::vector<Property> properties;
    bool open = false;  // no declared properties: any keys
    int values = -1;    // open: the values' node
    // A union's objects told apart by their first property: this node's one property is
    // their shared key with a literal of every object's value; tagged[i] is the object whose
    // value is literal i, which the text follows once that value is read (empty: none).
    std::vector<int> tagged;
    // kString: held to automaton(automaton) where >= 0 (a format's or a pattern's)
    int16_t automaton = -1;
    // kArray (and kString's length in characters)
    int items = -1;
    uint32_t min_items = 0, max_items = kMaxItems;
    // kNumber; an integer's minimum and maximum (the exclusive ones made inclusive)
    bool integer = false;
    int64_t minimum = INT64_MIN, maximum = INT64_MAX;
    // kLiteral
    std::vector<std::string> literals;
    // kUnion: per first byte, the branch's node (-1: none); '{' of several objects: a node
    // of `tagged` ones
    std::vector<int> branches;
    int16_t first[256] = {};
  };

  const Node& node(int i) const { return nodes_[static_cast<size_t>(i)]; }
  const StringAutomaton& automaton(int i) const { return *automata_[static_cast<size_t>(i)]; }
  int root() const { return root_; }
  size_t size() const { return nodes_.size(); }

 private:
  friend class SchemaCompiler;
  std::vector<Node> nodes_;
  std::vector<std::shared_ptr<const StringAutomaton>> automata_;
  int root_ = 0;
};

// The key an object schema's property order travels under inside a nlohmann::json value
// (whose objects sort their keys): a list of the properties' names.
inline constexpr const char* kPropertyOrderKey = "x-llava-property-order";

// The schema at `path` (object keys; an array item's decimal index) in `text` (JSON), with
// every object schema's properties' order added under kPropertyOrderKey; null where the path
// is missing. With a path, `text` must be JSON read already (json_value_at finds the
// schema's text without parsing the rest); the schema's text is parsed with
// common/json_depth.h's bound.
nlohmann::json with_property_order(std::string_view text, const std::vector<std::string>& path);

// Where a text stands in a schema: small, copied by value so that each candidate token is
// tried on a copy.
class SchemaState {
 public:
  static constexpr int kMaxDepth = 32;  // objects and arrays open at once

  SchemaState() = default;
  explicit SchemaState(const JsonSchema* schema) : schema_(schema) {}
  SchemaState(const SchemaState& other);
  SchemaState& operator=(const SchemaState& other);
  // Takes the bytes in; false (and the state is then undefined) where they cannot continue
  // a text of the schema.
  bool feed(std::string_view bytes);
  bool feed(unsigned char c);
  bool complete() const { return mode_ == Mode::kDone; }
  // Inside a free string (not in an escape or a character, not a key or value the schema
  // lists): any well-formed UTF-8 but '"', '\' and control bytes continues it.
  bool in_string() const {
    return mode_ == Mode::kString && utf8_left_ == 0 && surrogate_ == 0 &&
           max_chars_ == JsonSchema::kMaxItems && automaton_ < 0;
  }

 private:
  enum class Mode : uint8_t {
    kLeading,     // before the root: one byte of whitespace, then the root
    kValue,       // value_'s value
    kObjectOpen,  // after '{': a key or '}'
    kKey,         // after ',' in an object: a key
    kColon,       // after a key: ':', then value_'s value
    kAfterValue,  // in a container after a value: ',' or its end
    kString,
    kEscape,
    kHex,     // \uXXXX: hex_left_ digits to come
    kNumber,  // number_ says where in it
    kMatch,   // one of node match_node_'s keys (match_key_) or literals: candidates_ at pos_
    kDone,
  };
  enum class Number : uint8_t {
    kMinus,
    kZero,
    kInt,
    kDot,
    kFraction,
    kE,
    kExponentSign,
    kExponent
  };
  struct Frame {
    uint16_t node;
    uint16_t at;  // object: the next property it may take; array: its items so far
  };
  bool value(int node, unsigned char c);  // c starts node's value
  bool ended_value();                     // a value has ended: the container's next, or done
  bool after_number(unsigned char c);
  bool key_start(unsigned char c);  // in an object, where a key may start
  bool closable() const;            // the top object may end: no required property left
  bool matched(unsigned char c);    // kMatch: c is past the candidate that ended
  bool utf8_start(unsigned char c);  // kString: c >= 0x80 starts a character
  // Whether the integer so far can still end within its node's bounds (`more`: digits may
  // follow), or, with `more` false, whether it is within them now.
  bool within_bounds(bool more) const;
  const JsonSchema::Node& top() const { return schema_->node(stack_[depth_ - 1].node); }
  const std::string& candidate(int i) const;

  const JsonSchema* schema_ = nullptr;
  Mode mode_ = Mode::kLeading;
  Number number_ = Number::kInt;
  bool integer_ = false;
  bool key_ = false;        // the string is an open object's key
  bool match_key_ = false;  // kMatch: keys of the top object, else literals of match_node_
  uint8_t leading_ = 0, hex_left_ = 0, depth_ = 0;
  uint8_t utf8_left_ = 0, utf8_low_ = 0x80, utf8_high_ = 0xBF;  // a character's bytes to come
  // \uXXXX: its value so far; a high surrogate's low half to come (1: '\', 2: 'u', 3: its
  // digits), as strict parsers ask (a lone surrogate is a parse error to nlohmann, serde).
  uint16_t hex_value_ = 0;
  uint8_t surrogate_ = 0;
  // The string's characters so far and its bounds (minLength, maxLength; kMaxItems: none).
  uint16_t chars_ = 0, min_chars_ = 0, max_chars_ = JsonSchema::kMaxItems;
  // A string's format or pattern (its automaton; -1: none) and the state its text is in.
  int16_t automaton_ = -1;
  uint16_t automaton_state_ = 0;
  // An integer's digits so far (its magnitude and sign) and its node, for its bounds.
  uint64_t magnitude_ = 0;
  bool negative_ = false;
  uint16_t number_node_ = 0;
  uint16_t value_ = 0, match_node_ = 0, pos_ = 0;
  uint64_t candidates_ = 0;
  Frame stack_[kMaxDepth] = {};
};

}  // namespace llava
