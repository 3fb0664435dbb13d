// Structured output's schema compiler and recognizer (common/json_schema.h): texts of a
// schema accepted and completed in property order, texts outside it refused at the byte
// that leaves it, schemas it cannot follow refused with their place, and random walks
// through the recognizer whose every completed text an independent validator accepts.
#include "common/json_schema.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "common/json_depth.h"

namespace llava {
namespace {

using Json = nlohmann::json;

std::shared_ptr<const JsonSchema> compile(const std::string& schema) {
  return JsonSchema::compile(with_property_order(schema, {}));
}

bool accepts(const JsonSchema& schema, const std::string& text) {
  SchemaState state(&schema);
  return state.feed(text) && state.complete();
}

// The message of the error compiling `schema` ("" if it compiles).
std::string refusal(const std::string& schema) {
  try {
    compile(schema);
  } catch (const JsonSchemaError& e) {
    return e.what();
  }
  return "";
}

// Strings of each format the recognizer follows; one of them may be null.
const char* kFormats = R"({"type":"object","properties":{
  "d":{"type":"string","format":"date"},"t":{"type":"string","format":"time"},
  "dt":{"type":["string","null"],"format":"date-time"},"u":{"format":"uuid"},
  "ip":{"type":"string","format":"ipv4"}},
  "required":["d","t","dt","u"]})";

// Strings held to patterns: anchored, unanchored, alternatives, classes, counts.
const char* kPatterns = R"({"type":"object","properties":{
  "zip":{"type":"string","pattern":"^\\d{5}(-\\d{4})?$"},
  "code":{"pattern":"^[A-Z]{2,3}_[a-z0-9]+$|^x$"},
  "has":{"type":"string","pattern":"ab+c"},
  "hex":{"type":["string","null"],"pattern":"^(?:0[xX])?[0-9a-fA-F]{1,8}$"},
  "word":{"type":"string","pattern":"^\\w+( \\w+)*[.!?]$"}},
  "required":["zip","code","has","hex","word"]})";

// An OpenAI / Pydantic-style schema: $defs, an optional field as anyOf [X, null], enums,
// arrays with bounds, integers and numbers, a nested object; properties not in
// alphabetical order.
const char* kPerson = R"({
  "title": "Person", "type": "object", "additionalProperties": false,
  "properties": {
    "name": {"type": "string", "description": "full name"},
    "age": {"type": "integer"},
    "role": {"enum": ["admin", "user", 3, null]},
    "email": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
    "scores": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
    "address": {"$ref": "#/$defs/Address"},
    "tags": {"type": ["array", "null"], "items": {"type": "string"}}
  },
  "required": ["name", "age", "role", "scores"],
  "$defs": {"Address": {"type": "object", "properties": {"zip": {"type": "string"}, "city": {"type": "string"}},
                        "required": ["zip", "city"]}}
})";

TEST(JsonSchema, AcceptsTheSchemasTextsInPropertyOrderAndCompletesAtTheLastByte) {
  const auto schema = compile(kPerson);
  for (
      const std::string text : {
          R"({"name":"Ann","age":41,"role":"admin","scores":[1]})",
          R"( {"name":"","age":-7,"role":3,"email":null,"scores":[1.5,-2e3,0]})",
          R"({"name":"B\"\u00e9","age":0,"role":null,"email":"b@c","scores":[0.25],"address":{"zip":"1","city":"X"}})",
          R"({"name":"C","age":1,"role":"user","scores":[2],"tags":["a","b"]})",
          R"({"name":"C","age":1,"role":"user","scores":[2],"address":{"zip":"","city":""},"tags":null})",
      }) {
    EXPECT_TRUE(accepts(*schema, text)) << text;
    SchemaState state(schema.get());
    ASSERT_TRUE(state.feed(text.substr(0, text.size() - 1))) << text;
    EXPECT_FALSE(state.complete()) << text;
    EXPECT_TRUE(Json::parse(text).is_object());
  }
}

TEST(JsonSchema, RefusesTextsOutsideIt) {
  const auto schema = compile(kPerson);
  for (const std::string text : {
           R"({"age":41,"name":"Ann","role":"admin","scores":[1]})",            // out of order
           R"({"name":"Ann","role":"admin","scores":[1]})",                     // age missing
           R"({"name":"Ann","age":41,"role":"admin"})",                         // scores missing
           R"({"name":"Ann","age":41,"role":"admin","scores":[1],"x":1})",      // not a property
           R"({"name":"Ann","age":41.5,"role":"admin","scores":[1]})",          // not an integer
           R"({"name":"Ann","age":4e1,"role":"admin","scores":[1]})",           // not an integer
           R"({"name":"Ann","age":41,"role":"root","scores":[1]})",             // not in the enum
           R"({"name":"Ann","age":41,"role":33,"scores":[1]})",                 // 3, not 33
           R"({"name":"Ann","age":41,"role":"admin","scores":[]})",             // minItems 1
           R"({"name":"Ann","age":41,"role":"admin","scores":[1,2,3,4]})",      // maxItems 3
           R"({"name":"Ann","age":41,"role":"admin","scores":["1"]})",          // items are numbers
           R"({"name":1,"age":41,"role":"admin","scores":[1]})",                // name is a string
           R"({"name":"Ann","age":41,"role":"admin","email":7,"scores":[1]})",  // string or null
           R"({"name":"Ann","age":41,"role":"admin","scores":[1],"address":{"city":"X"}})",
           R"({"name":"Ann","age":41,"role":"admin","scores":[1],"tags":[1]})",
           R"({"name":"Ann","age":41,"role":"admin","scores":[1],"name":"B"})",  // a key twice
           R"({"name": "Ann","age":41,"role":"admin","scores":[1]})",            // whitespace
           R"({"name":"Ann","age":41,"role":"admin","scores":[1]}})",
           R"([])",
       }) {
    EXPECT_FALSE(accepts(*schema, text)) << text;
  }
}

// RFC 8259 asks for UTF-8: a string takes whole, well-formed characters only, however the
// tokens split them (a byte-fallback token is a character's single byte).
TEST(JsonSchema, StringsTakeWellFormedUtf8Only) {
  const auto any = JsonSchema::any_object();
  for (const std::string text :
       {"{\"a\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xed\x9f\xbf\xf4\x8f\xbf\xbf\"}",
        "{\"\xe4\xb8\xad\":1}"}) {
    EXPECT_TRUE(accepts(*any, text)) << text;
  }
  for (const std::string text : {"{\"a\":\"\xc0\x80\"}",          // overlong
                                 "{\"a\":\"\xe0\x9f\xbf\"}",      // overlong
                                 "{\"a\":\"\xed\xa0\x80\"}",      // a surrogate
                                 "{\"a\":\"\xf4\x90\x80\x80\"}",  // past U+10FFFF
                                 "{\"a\":\"\xf5\x80\x80\x80\"}",
                                 "{\"a\":\"\xc3\"}",  // cut short by the quote
                                 "{\"a\":\"\xe2\x82"
                                 "a\"}",
                                 "{\"a\":\"\x80\"}",  // a stray continuation
                                 "{\"\xff\":1}",
                                 R"({"a":"\udbdb"})",  // a lone high surrogate
                                 R"({"a":"\udbdbx"})", R"({"a":"\ud83d\n"})",
                                 R"({"a":"\ud83d\u0041"})",  // not a low one after it
                                 R"({"a":"\ude00"})"}) {     // a lone low surrogate
    EXPECT_FALSE(accepts(*any, text)) << text;
  }
  EXPECT_TRUE(accepts(*any, R"({"a":"\ud83d\ude00\u00e9\uD7FF\uE000"})"));
  SchemaState state(any.get());
  ASSERT_TRUE(state.feed("{\"a\":\"\xe2"));
  EXPECT_FALSE(state.in_string());  // mid-character: no whole-token shortcut
  ASSERT_TRUE(state.feed('\x82'));
  ASSERT_TRUE(state.feed('\xac'));
  EXPECT_TRUE(state.in_string());
}

// minLength / maxLength count characters (code points: an escape, a surrogate pair, a
// multi-byte character are one each); within bounds a string has no whole-token shortcut.
TEST(JsonSchema, StringLengthsCountCharacters) {
  const auto schema = compile(
      R"({"type":"object","properties":{"a":{"type":"string","minLength":2,"maxLength":3}},"required":["a"]})");
  for (const std::string text :
       {R"({"a":"ab"})", R"({"a":"abc"})", "{\"a\":\"\xc3\xa9\xe2\x82\xac\"}", R"({"a":"\u00e9x"})",
        R"({"a":"\ud83d\ude00\n"})"}) {
    EXPECT_TRUE(accepts(*schema, text)) << text;
  }
  for (const std::string text : {R"({"a":""})", R"({"a":"a"})", R"({"a":"abcd"})",
                                 R"({"a":"\n\n\n\n"})", "{\"a\":\"\xf0\x9f\x98\x80\"}"}) {
    EXPECT_FALSE(accepts(*schema, text)) << text;
  }
  SchemaState state(schema.get());
  ASSERT_TRUE(state.feed(R"({"a":")"));
  EXPECT_FALSE(state.in_string());
  const auto unbounded = compile(
      R"({"type":"object","properties":{"a":{"type":"string","minLength":1}},"required":["a"]})");
  SchemaState open(unbounded.get());
  ASSERT_TRUE(open.feed(R"({"a":")"));
  EXPECT_TRUE(open.in_string());  // plain tokens only add characters
  EXPECT_FALSE(open.feed('"'));
}

// An integer's bounds hold digit by digit: a prefix no integer in range begins is refused at
// the digit that leaves (no dead end), and a number ends only within them.
TEST(JsonSchema, FormatsHoldAStringToRfc3339DatesAndTimesAUuidOrAnIpv4Address) {
  const auto schema = compile(kFormats);
  auto text = [](const std::string& d, const std::string& t, const std::string& dt,
                 const std::string& u) {
    return R"({"d":")" + d + R"(","t":")" + t + R"(","dt":)" + dt + R"(,"u":")" + u + "\"}";
  };
  const std::string d = "2024-02-29", t = "23:59:60Z", dt = "\"1999-12-31T00:00:00.123456+05:30\"",
                    u = "123e4567-E89B-12d3-a456-426614174000";
  EXPECT_TRUE(accepts(*schema, text(d, t, dt, u)));
  EXPECT_TRUE(accepts(*schema, text("0000-01-01", "00:00:00.5-23:59", "null", u)));
  for (const char* bad : {"2024-13-01", "2024-00-10", "2024-01-32", "24-01-01", "2024-1-01",
                          "2024-01-01T", "\\u0032024-01-01",
                          "2024\xe2\x80\x91"
                          "01-01"}) {
    EXPECT_FALSE(accepts(*schema, text(bad, t, dt, u))) << bad;
  }
  for (const char* bad : {"24:00:00Z", "12:60:00Z", "12:00:61Z", "12:00:00", "12:00:00.Z",
                          "12:00:00z", "12:00:00+5:30", "12:00:00+24:00"}) {
    EXPECT_FALSE(accepts(*schema, text(d, bad, dt, u))) << bad;
  }
  for (const char* bad :
       {"\"2024-01-01t00:00:00Z\"", "\"2024-01-01 00:00:00Z\"", "\"2024-01-01\""}) {
    EXPECT_FALSE(accepts(*schema, text(d, t, bad, u))) << bad;
  }
  for (const char* bad :
       {"123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400",
        "123e4567-e89b-12d3-a456-4266141740000", "g23e4567-e89b-12d3-a456-426614174000"}) {
    EXPECT_FALSE(accepts(*schema, text(d, t, dt, bad))) << bad;
  }
  // IPv4 (optional, last): octets 0-255 without leading zeros.
  const std::string whole = text(d, t, dt, u);
  auto with_ip = [&](const std::string& ip) {
    return whole.substr(0, whole.size() - 1) + R"(,"ip":")" + ip + "\"}";
  };
  for (const char* good : {"0.0.0.0", "255.255.255.255", "10.199.249.1", "192.168.0.10"}) {
    EXPECT_TRUE(accepts(*schema, with_ip(good))) << good;
  }
  for (const char* bad : {"256.0.0.1", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.2.3.260", "1..2.3",
                          "1.2.3.4.", "300.1.1.1", "25a.1.1.1"}) {
    EXPECT_FALSE(accepts(*schema, with_ip(bad))) << bad;
  }
  // Refused at the byte that leaves the format (no dead end), and never a free string.
  SchemaState state(schema.get());
  ASSERT_TRUE(state.feed(R"({"d":"2024-1)"));
  EXPECT_FALSE(state.in_string());
  EXPECT_FALSE(SchemaState(state).feed('3'));
  EXPECT_FALSE(SchemaState(state).feed('"'));
  EXPECT_TRUE(state.feed("2-31\""));
}

// Patterns hold as ECMA-262 regular expressions do, searched anywhere in the string unless
// anchored; the recognizer refuses the byte that leaves them.
TEST(JsonSchema, PatternsHoldAStringAsTheirRegularExpressionSearchesIt) {
  const auto schema = compile(kPatterns);
  auto text = [](const std::string& zip, const std::string& code, const std::string& has,
                 const std::string& hex, const std::string& word) {
    return R"({"zip":")" + zip + R"(","code":")" + code + R"(","has":")" + has + R"(","hex":)" +
           hex + R"(,"word":")" + word + "\"}";
  };
  const std::string zip = "12345", code = "AB_x1", has = "--abbbc--", hex = "\"0xBEEF\"",
                    word = "hi there!";
  EXPECT_TRUE(accepts(*schema, text(zip, code, has, hex, word)));
  EXPECT_TRUE(accepts(*schema, text("12345-6789", "x", "abc", "null", "a.")));
  EXPECT_TRUE(accepts(*schema, text(zip, "ABC_9", "zzabczz", "\"f\"", "one two three?")));
  for (const char* bad : {"1234", "123456", "12345-678", "1234a", ""}) {
    EXPECT_FALSE(accepts(*schema, text(bad, code, has, hex, word))) << bad;
  }
  for (const char* bad : {"A_x", "ABCD_x", "AB_", "AB-x", "ab_x", "xx", "AB_X"}) {
    EXPECT_FALSE(accepts(*schema, text(zip, bad, has, hex, word))) << bad;
  }
  for (const char* bad : {"ac", "abd", "", "a b c"}) {
    EXPECT_FALSE(accepts(*schema, text(zip, code, bad, hex, word))) << bad;
  }
  for (const char* bad : {"\"0x\"", "\"123456789\"", "\"0xg\"", "\"x1\""}) {
    EXPECT_FALSE(accepts(*schema, text(zip, code, has, bad, word))) << bad;
  }
  for (const char* bad : {"hi", "hi  there!", " hi.", "hi.."}) {
    EXPECT_FALSE(accepts(*schema, text(zip, code, has, hex, bad))) << bad;
  }
  // The byte that leaves it is refused where it comes (no dead end), never a free string.
  SchemaState state(schema.get());
  ASSERT_TRUE(state.feed(R"({"zip":"1234)"));
  EXPECT_FALSE(state.in_string());
  EXPECT_FALSE(SchemaState(state).feed('"'));
  EXPECT_FALSE(SchemaState(state).feed('x'));
  ASSERT_TRUE(state.feed("5-"));
  EXPECT_FALSE(SchemaState(state).feed('"'));
}

TEST(JsonSchema, BoundedIntegersStayWithinTheirBounds) {
  const auto schema = compile(R"({"type":"object","properties":{
      "a":{"type":"integer","minimum":1,"maximum":5},
      "b":{"type":"integer","exclusiveMinimum":-3,"exclusiveMaximum":3},
      "c":{"type":"integer","minimum":-120,"maximum":-100},
      "d":{"type":["integer","null"],"minimum":1000}},"required":["a","b","c","d"]})");
  auto text = [](const std::string& a, const std::string& b, const std::string& c,
                 const std::string& d) {
    return R"({"a":)" + a + R"(,"b":)" + b + R"(,"c":)" + c + R"(,"d":)" + d + "}";
  };
  for (const std::string& t :
       {text("1", "-2", "-100", "1000"), text("5", "2", "-120", "null"),
        text("3", "0", "-115", "99999"), text("4", "-0", "-101", "123456789012")}) {
    EXPECT_TRUE(accepts(*schema, t)) << t;
  }
  for (const std::string& t : {text("0", "0", "-100", "1000"), text("6", "0", "-100", "1000"),
                               text("-1", "0", "-100", "1000"), text("10", "0", "-100", "1000"),
                               text("01", "0", "-100", "1000"), text("1", "-3", "-100", "1000"),
                               text("1", "3", "-100", "1000"), text("1", "0", "-99", "1000"),
                               text("1", "0", "-121", "1000"), text("1", "0", "-1000", "1000"),
                               text("1", "0", "-100", "999"), text("1", "0", "-100", "-5")}) {
    EXPECT_FALSE(accepts(*schema, t)) << t;
  }
  // Refused at the digit that leaves the range, not later.
  SchemaState state(schema.get());
  ASSERT_TRUE(state.feed(R"({"a":)"));
  EXPECT_FALSE(SchemaState(state).feed('0'));
  EXPECT_FALSE(SchemaState(state).feed('-'));
  ASSERT_TRUE(state.feed(R"(1,"b":1,"c":-1)"));
  EXPECT_FALSE(
      SchemaState(state).feed('3'));  // -13...: past -120 after one digit more, short of -100
  EXPECT_TRUE(SchemaState(state).feed('1'));
  EXPECT_FALSE(SchemaState(state).feed(','));  // -1 is not in range
}

TEST(JsonSchema, EnumNumbersThatArePrefixesOfEachOtherEndWhereTheTextSays) {
  const auto schema =
      compile(R"({"type":"object","properties":{"a":{"enum":[1,12,-1.5]}},"required":["a"]})");
  for (const std::string text : {R"({"a":1})", R"({"a":12})", R"({"a":-1.5})"})
    EXPECT_TRUE(accepts(*schema, text)) << text;
  for (const std::string text : {R"({"a":123})", R"({"a":2})", R"({"a":-1})", R"({"a":1.0})"}) {
    EXPECT_FALSE(accepts(*schema, text)) << text;
  }
}

TEST(JsonSchema, ObjectsWithoutPropertiesTakeAnyKeysWithTheValuesTheySay) {
  const auto ints = compile(R"({"type":"object","additionalProperties":{"type":"integer"}})");
  EXPECT_TRUE(accepts(*ints, R"({"x":1,"y":-2})"));
  EXPECT_TRUE(accepts(*ints, R"({})"));
  EXPECT_FALSE(accepts(*ints, R"({"x":"1"})"));
  const auto closed = compile(R"({"type":"object","additionalProperties":false})");
  EXPECT_TRUE(accepts(*closed, R"({})"));
  EXPECT_FALSE(accepts(*closed, R"({"x":1})"));
  const auto any = compile(R"({"type":"object"})");
  EXPECT_TRUE(accepts(*any, R"({"a":[1,{"b":null}],"c":"d","e":true})"));
}

TEST(JsonSchema, FollowsRecursiveReferences) {
  // Pydantic's annotated reference: allOf of one schema is that schema.
  const auto annotated = compile(
      R"({"type":"object","properties":{"p":{"allOf":[{"$ref":"#/$defs/P"}],"description":"x"}},
      "required":["p"],"$defs":{"P":{"enum":["a","b"]}}})");
  EXPECT_TRUE(accepts(*annotated, R"({"p":"b"})"));
  EXPECT_FALSE(accepts(*annotated, R"({"p":"c"})"));
  const auto tree = compile(R"({"type":"object","properties":{"name":{"type":"string"},
      "children":{"type":"array","items":{"$ref":"#"}}},"required":["name","children"]})");
  EXPECT_TRUE(accepts(
      *tree, R"({"name":"a","children":[{"name":"b","children":[]},{"name":"c","children":[]}]})"));
  EXPECT_FALSE(accepts(*tree, R"({"name":"a","children":[{"name":"b"}]})"));
  // Nesting stops at the recognizer's depth (objects and arrays open at once).
  std::string deep;
  for (int i = 0; i < SchemaState::kMaxDepth / 2; ++i) deep += R"({"name":"n","children":[)";
  SchemaState state(tree.get());
  ASSERT_TRUE(state.feed(deep));
  EXPECT_FALSE(state.feed('{'));
}

TEST(JsonSchema, OptionalPropertiesMaySkipButNotGoBack) {
  const auto schema = compile(
      R"({"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"},"c":{"type":"integer"}},"required":["b"]})");
  for (const std::string text :
       {R"({"b":1})", R"({"a":1,"b":2})", R"({"b":1,"c":2})", R"({"a":1,"b":2,"c":3})"}) {
    EXPECT_TRUE(accepts(*schema, text)) << text;
  }
  for (const std::string text :
       {R"({})", R"({"a":1})", R"({"c":1})", R"({"b":1,"a":2})", R"({"a":1,"c":2})"}) {
    EXPECT_FALSE(accepts(*schema, text)) << text;
  }
}

TEST(JsonSchema, KeepsThePropertyOrderGivenThroughSortedJson) {
  // nlohmann::json sorts keys; with_property_order carries the text's order, and a property
  // named "properties" is a property, not the keyword.
  const std::string text =
      R"({"response_format":{"json_schema":{"schema":{"type":"object","properties":{"zeta":{"type":"object",
      "properties":{"properties":{"type":"integer"},"b":{"type":"integer"}},"required":["properties","b"]},
      "alpha":{"type":"integer"}},"required":["zeta","alpha"]}}}})";
  const Json schema = with_property_order(text, {"response_format", "json_schema", "schema"});
  ASSERT_TRUE(schema.is_object());
  const auto compiled = JsonSchema::compile(schema);
  EXPECT_TRUE(accepts(*compiled, R"({"zeta":{"properties":1,"b":2},"alpha":3})"));
  EXPECT_FALSE(accepts(*compiled, R"({"alpha":3,"zeta":{"properties":1,"b":2}})"));
  EXPECT_FALSE(accepts(*compiled, R"({"zeta":{"b":2,"properties":1},"alpha":3})"));
  // Without it, the sorted order.
  const auto sorted =
      JsonSchema::compile(Json::parse(text)["response_format"]["json_schema"]["schema"]);
  EXPECT_TRUE(accepts(*sorted, R"({"alpha":3,"zeta":{"b":2,"properties":1}})"));
  // An order that does not name the properties is not taken.
  Json odd =
      Json::parse(R"({"type":"object","properties":{"b":{"type":"integer"},"a":{"type":"integer"}},
      "required":["a","b"]})");
  odd[kPropertyOrderKey] = {"b", "x"};
  EXPECT_TRUE(accepts(*JsonSchema::compile(odd), R"({"a":1,"b":2})"));
  EXPECT_TRUE(with_property_order(text, {"response_format", "nothing"}).is_null());
}

// OpenAI-style tool calls: a union of objects told apart by their first property, "name",
// a constant string; each tool's parameters follow.
const char* kToolCall = R"({"type":"object","required":["call"],"properties":{"call":{"anyOf":[
  {"type":"object","properties":{"name":{"const":"get_weather"},"parameters":{"type":"object",
    "properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"]}},
   "required":["name","parameters"]},
  {"type":"object","properties":{"name":{"enum":["search"]},"parameters":{"type":"object",
    "properties":{"query":{"type":"string"}},"required":["query"]}},
   "required":["name","parameters"]}]}}})";

// The same tools, a list of calls.
const char* kToolCalls = R"({"type":"object","required":["calls"],"properties":{"calls":{
  "type":"array","minItems":1,"items":{"anyOf":[
  {"type":"object","properties":{"name":{"const":"get_weather"},"parameters":{"type":"object",
    "properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"]}},
   "required":["name","parameters"]},
  {"type":"object","properties":{"name":{"enum":["search"]},"parameters":{"type":"object",
    "properties":{"query":{"type":"string"}},"required":["query"]}},
   "required":["name","parameters"]}]}}}})";

TEST(JsonSchema, TellsAUnionsObjectsApartByTheirFirstPropertysConstantString) {
  const auto schema = compile(kToolCall);
  for (const std::string text : {
           R"({"call":{"name":"get_weather","parameters":{"city":"Oslo"}}})",
           R"({"call":{"name":"get_weather","parameters":{"city":"Oslo","days":3}}})",
           R"({"call":{"name":"search","parameters":{"query":"x"}}})",
       }) {
    EXPECT_TRUE(accepts(*schema, text)) << text;
  }
  for (const std::string text : {
           R"({"call":{"name":"search","parameters":{"city":"Oslo"}}})",  // the other's
           R"({"call":{"name":"search","parameters":{"query":"x","days":3}}})",
           R"({"call":{"name":"other","parameters":{"query":"x"}}})",
           R"({"call":{"parameters":{"query":"x"},"name":"search"}})",  // the name first
           R"({"call":{"name":"search"}})",
           R"({"call":{}})",
       }) {
    EXPECT_FALSE(accepts(*schema, text)) << text;
  }
  // Each refused at the byte that leaves the schema.
  struct Case {
    const char* taken;
    char next;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"call":{"name":"search","parameters":{")", 'c'},  // search's: query
           {R"({"call":{"name":"get_weather","parameters":{")", 'q'},
           {R"({"call":{"name":"search","parameters":{"query":"x")", ','},
           {R"({"call":{"name":")", 'o'},  // no tool's name
           {R"({"call":{"name":"search)", 'x'},
           {R"({"call":{")", 'p'},  // the name comes first
           {R"({"call":{)", '}'},   // and is required
           {R"({"call":{"name":"search")", '}'},
       }) {
    SchemaState state(schema.get());
    ASSERT_TRUE(state.feed(c.taken)) << c.taken;
    EXPECT_FALSE(state.feed(c.next)) << c.taken << c.next;
  }
}

TEST(JsonSchema, AnArrayOfTaggedObjectsTakesEachItemsOwnObject) {
  const auto schema = compile(kToolCalls);
  EXPECT_TRUE(accepts(*schema, R"({"calls":[{"name":"search","parameters":{"query":"x"}},)"
                               R"({"name":"get_weather","parameters":{"city":"Oslo"}}]})"));
  EXPECT_TRUE(accepts(*schema, R"({"calls":[{"name":"search","parameters":{"query":"x"}}]})"));
  EXPECT_FALSE(accepts(*schema, R"({"calls":[]})"));
  EXPECT_FALSE(accepts(*schema, R"({"calls":[{"name":"search","parameters":{"query":"x"}},)"
                                R"({"name":"get_weather","parameters":{"query":"x"}}]})"));
}

TEST(JsonSchema, AUnionOfTaggedObjectsStillTellsItsOtherBranchesByTheirFirstByte) {
  const std::string search = R"({"type":"object","properties":{"name":{"const":"search"}},
      "required":["name"]})";
  const std::string weather = R"({"type":"object","properties":{"name":{"const":"weather"},
      "city":{"type":"string"}},"required":["name","city"]})";
  for (const std::string& branches :
       {search + "," + weather + R"(,{"type":"string"},{"type":"number"})",
        // objects within a union within the union
        search + R"(,{"anyOf":[)" + weather + R"(,{"type":"string"}]},{"type":"number"})"}) {
    const auto schema = compile(R"({"type":"object","properties":{"v":{"anyOf":[)" + branches +
                                R"(]}},"required":["v"]})");
    for (const std::string text :
         {R"({"v":"text"})", R"({"v":-1.5})", R"({"v":3})", R"({"v":{"name":"search"}})",
          R"({"v":{"name":"weather","city":"Oslo"}})"}) {
      EXPECT_TRUE(accepts(*schema, text)) << branches << "\n" << text;
    }
    for (const std::string text :
         {R"({"v":null})", R"({"v":true})", R"({"v":["x"]})",
          R"({"v":{"name":"search","city":"Oslo"}})", R"({"v":{"name":"weather"}})"}) {
      EXPECT_FALSE(accepts(*schema, text)) << branches << "\n" << text;
    }
  }
}

TEST(JsonSchema, RefusesObjectsOfAUnionItCannotTellApartNamingThePlace) {
  const std::string tagged = R"({"type":"object","properties":{"name":{"const":"a"}},
      "required":["name"]})";
  auto refusal_of = [](const std::string& first, const std::string& second) {
    return refusal(R"({"type":"object","properties":{"u":{"anyOf":[)" + first + "," + second +
                   "]}}}");
  };
  const std::string apart =
      "two of a union's branches can begin with '{': objects are told apart only by a first "
      "property, required and under the same key in each, whose value is one constant string";
  struct Case {
    std::string second;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"type":"object","properties":{"tool":{"const":"b"}},"required":["tool"]})",
            apart + " (at #/properties/u/anyOf/1)"},  // another key
           {R"({"type":"object","properties":{"name":{"const":"b"}}})",
            apart + " (at #/properties/u/anyOf/1)"},  // optional
           {R"({"type":"object","properties":{"x":{"type":"integer"},"name":{"const":"b"}},
               "required":["x","name"]})",
            apart + " (at #/properties/u/anyOf/1)"},  // not the first
           {R"({"type":"object","properties":{"name":{"const":2}},"required":["name"]})",
            apart + " (at #/properties/u/anyOf/1)"},  // not a string
           {R"({"type":"object","properties":{"name":{"enum":["b","c"]}},"required":["name"]})",
            apart + " (at #/properties/u/anyOf/1)"},  // not one value
           {R"({"type":"object","properties":{"name":{"type":"string"}},"required":["name"]})",
            apart + " (at #/properties/u/anyOf/1)"},
           {R"({"type":"object","properties":{"name":{"enum":["a"]},"x":{"type":"integer"}},
               "required":["name"]})",
            "two of a union's branches can begin with '{' and have the same first property, "
            "\"name\":\"a\": objects are told apart by its value (at #/properties/u/anyOf/1)"},
           {R"({"enum":[{"name":"b"}]})",
            "can begin with '{': the answer's first byte must tell "
            "them apart (at #/properties/u/anyOf/1/enum)"},
       }) {
    EXPECT_NE(refusal_of(tagged, c.second).find(c.says), std::string::npos)
        << c.second << " -> " << refusal_of(tagged, c.second);
  }
  // An object of any keys, or of none, has no first property.
  for (const std::string open :
       {R"({"type":"object"})", R"({"type":"object","additionalProperties":false})",
        R"({"type":"object","additionalProperties":{"type":"string"}})"}) {
    EXPECT_NE(refusal_of(open, tagged).find(apart + " (at #/properties/u/anyOf/0)"),
              std::string::npos)
        << open << " -> " << refusal_of(open, tagged);
  }
  // At most kMaxLiterals objects.
  Json many = {{"type", "object"}, {"properties", {{"u", {{"anyOf", Json::array()}}}}}};
  for (size_t i = 0; i <= JsonSchema::kMaxLiterals; ++i) {
    many["properties"]["u"]["anyOf"].push_back(
        {{"type", "object"},
         {"properties", {{"name", {{"const", "t" + std::to_string(i)}}}}},
         {"required", {"name"}}});
  }
  EXPECT_EQ(refusal(many.dump()),
            "json_schema: 65 objects told apart by their first property; at most 64 (at "
            "#/properties/u/anyOf)");
  many["properties"]["u"]["anyOf"].erase(0);
  const auto most = compile(many.dump());
  EXPECT_TRUE(accepts(*most, R"({"u":{"name":"t64"}})"));
  EXPECT_TRUE(accepts(*most, R"({"u":{"name":"t1"}})"));
  EXPECT_FALSE(accepts(*most, R"({"u":{"name":"t0"}})"));
}

TEST(JsonSchema, RefusesWhatItCannotFollowNamingThePlace) {
  struct Case {
    const char* schema;
    const char* says;
  };
  for (
      const Case& c : std::vector<Case>{
          {R"j({"type":"object","properties":{"a":{"type":"string","pattern":"^(?=x)"}}})j",
           "pattern: lookaround and named groups are not supported (at character 3) (at "
           "#/properties/a/pattern)"},
          {R"({"type":"object","properties":{"a":{"type":"string","pattern":"(a)\\1"}}})",
           "pattern: '\\1' is not supported"},
          {R"({"type":"object","properties":{"a":{"type":"string","pattern":"a^b"}}})",
           "'^' and '$' are supported only at the ends of a top-level alternative"},
          {R"({"type":"object","properties":{"a":{"type":"string","pattern":"^\"$"}}})",
           "no string it matches can be written without escapes"},
          {R"({"type":"object","properties":{"a":{"type":"string","pattern":"^a{1001}$"}}})",
           "a count above 1000"},
          {R"({"type":"object","properties":{"a":{"type":"string","pattern":"^[z-a]$"}}})",
           "a range out of order"},
          {R"({"type":"object","properties":{"a":{"type":"string","pattern":"(a"}}})",
           "a group's ')' is missing"},
          {R"j({"type":"object","properties":{"a":{"type":"string","pattern":"a)"}}})j",
           "a ')' without its '('"},
          {R"({"type":"object","properties":{"a":{"type":"string","pattern":"[a-"}}})",
           "a class's ']' is missing"},

          {R"({"type":"object","properties":{"a":{"type":"string","pattern":"^x","format":"date"}}})",
           "'format' beside 'pattern' is not supported (at #/properties/a)"},
          {R"({"type":"object","properties":{"a":{"type":"integer","pattern":"1"}}})",
           "a pattern is supported for strings only (at #/properties/a/pattern)"},
          {R"({"type":"object","properties":{"a":{"type":"number","minimum":0}}})",
           "'minimum' is supported for integers only (at #/properties/a)"},
          {R"({"type":"object","properties":{"a":{"type":"integer","minimum":3,"exclusiveMaximum":3}}})",
           "no integer lies between its minimum and maximum (at #/properties/a)"},
          {R"({"type":"object","properties":{"a":{"type":"integer","multipleOf":2}}})",
           "'multipleOf' is not supported (at #/properties/a)"},
          {R"({"type":"object","properties":{"a":{"type":"string","format":"email"}}})",
           "format \"email\" is not supported (only \"date\", \"time\", \"date-time\", \"uuid\" "
           "and "
           "\"ipv4\") (at #/properties/a/format)"},
          {R"({"type":"object","properties":{"a":{"type":"string","format":"date","maxLength":8}}})",
           "'format' beside 'maxLength' is not supported (at #/properties/a)"},
          {R"({"type":"object","properties":{"a":{"type":"integer","format":"int32"}}})",
           "a format is supported for strings only (at #/properties/a/format)"},
          {R"({"allOf":[{"type":"object"},{"type":"object"}]})",
           "only a list of one schema is supported (at #/allOf)"},
          {R"({"type":"object","properties":{"a":{"allOf":[{"type":"integer"}],"type":"integer"}}})",
           "'allOf' beside 'type'"},
          {R"({"type":"string"})", "the root (#) must be an object schema"},
          {R"({"type":"object","properties":{"a":{"anyOf":[{"type":"integer"},{"type":"number"}]}}})",
           "can begin with '-'"},
          {R"({"type":"object","properties":{"a":{"anyOf":[{"enum":["x"]},{"type":"string"}]}}})",
           "can begin with '\"'"},
          {R"({"type":"object","properties":{"a":{"$ref":"#/$defs/missing"}}})", "cannot resolve"},
          {R"({"type":"object","properties":{"a":{"$ref":"#/$defs/a"}},"$defs":{"a":{"$ref":"#/$defs/a"}}})",
           "refers to nothing but itself"},
          {R"({"type":"object","properties":{"a":{"type":"integer"}},"required":["b"]})",
           "\"b\" is not one of the properties (at #/required)"},
          {R"({"type":"object","properties":{"a":false}})",
           "false admits no value (at #/properties/a)"},
          {R"({"type":"object","properties":{"a":{"type":"integer","enum":["x"]}}})",
           "no value of the enum"},
          {R"({"type":"object","properties":{"a":{"type":"array","minItems":3,"maxItems":2}}})",
           "minItems is above maxItems"},
          {R"({"type":"object","properties":{"a":{"type":"string","minLength":3,"maxLength":2}}})",
           "minLength is above maxLength (at #/properties/a)"},
          {R"({"type":"object","properties":{"a":{"type":"string","minLength":-1}}})",
           "expected a whole number, got -1 (at #/properties/a/minLength)"},
          {R"({"type":"object","properties":{"a":{"type":"thing"}}})", "unknown type \"thing\""},
          {R"({"type":"object","properties":{"a":{"$ref":"#/$defs/b","type":"object"}},"$defs":{"b":{}}})",
           "'$ref' beside 'type'"},
          {R"({"type":"object","properties":{"a":{"$ref":"#"}},"required":["a"]})",
           "no finite value (it requires itself without end) (at #)"},
          {R"({"type":"object","properties":{"a":{"type":"array","items":{"$ref":"#"},"minItems":1}},"required":["a"]})",
           "no finite value"},
      }) {
    EXPECT_NE(refusal(c.schema).find(c.says), std::string::npos)
        << c.schema << " -> " << refusal(c.schema);
  }
  // Groups nested without end (a coordinator thread's stack): refused at the 33rd.
  const std::string deep = R"({"type":"object","properties":{"a":{"type":"string","pattern":")" +
                           std::string(100000, '(') + "a" + std::string(100000, ')') + R"("}}})";
  EXPECT_NE(refusal(deep).find("groups nested more than 32 deep"), std::string::npos);
  Json many = {{"type", "object"}, {"properties", Json::object()}};
  for (int i = 0; i <= static_cast<int>(JsonSchema::kMaxProperties); ++i)
    many["properties"]["p" + std::to_string(i)] = Json::object();
  EXPECT_NE(refusal(many.dump()).find("properties; at most"), std::string::npos);
}

// An independent check of the supported keywords, on parsed JSON (no property order: that
// is the recognizer's own test above).
bool valid(const Json& value, const Json& schema, const Json& root) {
  if (schema.is_boolean()) return schema.get<bool>();
  if (schema.contains("$ref")) {
    const std::string ref = schema["$ref"];
    return valid(value, ref == "#" ? root : root["$defs"][ref.substr(8)], root);
  }
  if (schema.contains("anyOf")) {
    return std::any_of(schema["anyOf"].begin(), schema["anyOf"].end(),
                       [&](const Json& s) { return valid(value, s, root); });
  }
  if (schema.contains("const")) return value == schema["const"];
  if (schema.contains("enum"))
    return std::find(schema["enum"].begin(), schema["enum"].end(), value) != schema["enum"].end();
  if (schema.contains("type")) {
    std::vector<std::string> types;
    if (schema["type"].is_array()) {
      for (const auto& t : schema["type"]) types.push_back(t);
    } else {
      types.push_back(schema["type"]);
    }
    const bool typed = std::any_of(types.begin(), types.end(), [&](const std::string& t) {
      return (t == "object" && value.is_object()) || (t == "array" && value.is_array()) ||
             (t == "string" && value.is_string()) || (t == "number" && value.is_number()) ||
             (t == "integer" && (value.is_number_integer() ||  // past 64 bits, a whole double
                                 (value.is_number_float() &&
                                  std::floor(value.get<double>()) == value.get<double>()))) ||
             (t == "boolean" && value.is_boolean()) || (t == "null" && value.is_null());
    });
    if (!typed) return false;
  }
  if (value.is_string() && schema.contains("pattern") &&
      !std::regex_search(value.get<std::string>(), std::regex(schema["pattern"].get<std::string>(),
                                                              std::regex::ECMAScript))) {
    return false;
  }
  if (value.is_string() && schema.contains("format")) {  // the formats json_schema.h follows
    const std::string
        date = R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))",
        time = R"(([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d))";
    const std::map<std::string, std::string> formats = {
        {"date", date},
        {"time", time},
        {"date-time", date + "T" + time},
        {"uuid", "[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"},
        {"ipv4", R"(((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))"}};
    if (!std::regex_match(value.get<std::string>(), std::regex(formats.at(schema["format"]))))
      return false;
  }
  if (value.is_object()) {
    const Json props = schema.value("properties", Json::object());
    for (const auto& name : schema.value("required", Json::array())) {
      if (!value.contains(name.get<std::string>())) return false;
    }
    for (const auto& [key, item] : value.items()) {
      if (props.contains(key)) {
        if (!valid(item, props[key], root)) return false;
      } else if (!props.empty() ||
                 !valid(item, schema.value("additionalProperties", Json(true)), root)) {
        return false;
      }
    }
  }
  if (value.is_number_integer()) {
    const double v = value.get<double>();
    if ((schema.contains("minimum") && v < schema["minimum"].get<double>()) ||
        (schema.contains("maximum") && v > schema["maximum"].get<double>()) ||
        (schema.contains("exclusiveMinimum") && v <= schema["exclusiveMinimum"].get<double>()) ||
        (schema.contains("exclusiveMaximum") && v >= schema["exclusiveMaximum"].get<double>())) {
      return false;
    }
  }
  if (value.is_string()) {
    size_t chars = 0;  // code points: bytes that are not continuation bytes
    for (char c : value.get<std::string>()) chars += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    if (chars < schema.value("minLength", 0u) || chars > schema.value("maxLength", 1000000u))
      return false;
  }
  if (value.is_array()) {
    if (value.size() < schema.value("minItems", 0u) ||
        value.size() > schema.value("maxItems", 1000000u))
      return false;
    for (const auto& item : value) {
      if (!valid(item, schema.value("items", Json(true)), root)) return false;
    }
  }
  return true;
}

// Random texts of a schema: each step a byte the recognizer takes, the structural ones
// preferred (else strings rarely end); every text that completes must parse and validate.
TEST(JsonSchema, EveryTextItCompletesIsValidJsonOfTheSchema) {
  const std::vector<std::string> schemas = {
      kPerson,
      R"({"type":"object","properties":{"name":{"type":"string"},"children":{"type":"array","items":{"$ref":"#"},"maxItems":2}},"required":["name","children"]})",
      R"({"type":"object","additionalProperties":{"type":["integer","boolean","null"]}})",
      R"({"type":"object"})",
      R"({"type":"object","properties":{"m":{"type":"array","items":{"type":"array","items":{"enum":[0,10,100,"a"]},"minItems":2}}},"required":["m"]})",
      R"({"type":"object","properties":{"s":{"type":"string","minLength":3,"maxLength":5},"t":{"type":"array","items":{"type":"string","maxLength":1}}},"required":["s","t"]})",
      R"({"type":"object","properties":{"a":{"type":"integer","minimum":-7,"maximum":12},"b":{"type":"array","items":{"type":"integer","exclusiveMinimum":99,"maximum":20000}}},"required":["a","b"]})",
      kToolCall,
      kToolCalls,
      kFormats,
      // patterns that end within a few characters (a random walk rarely ends an unanchored one)
      R"({"type":"object","properties":{"zip":{"type":"string","pattern":"^\\d{5}(-\\d{4})?$"},"code":{"pattern":"^[A-Z]{2,3}_[a-z0-9]{1,3}$|^x$"},"hex":{"type":["string","null"],"pattern":"^(?:0[xX])?[0-9a-fA-F]{1,8}$"},"w":{"type":"string","pattern":"^[a-z]{1,3}( [a-z]{1,3}){0,2}[.!?]$"}},"required":["zip","code","hex","w"]})",
  };
  // The validator tells the tools' objects apart as well.
  const Json tools = Json::parse(kToolCall);
  EXPECT_TRUE(
      valid(Json::parse(R"({"call":{"name":"search","parameters":{"query":"x"}}})"), tools, tools));
  EXPECT_FALSE(
      valid(Json::parse(R"({"call":{"name":"search","parameters":{"city":"x"}}})"), tools, tools));
  EXPECT_FALSE(
      valid(Json::parse(R"({"call":{"name":"other","parameters":{"query":"x"}}})"), tools, tools));
  const std::string preferred = "\"}],:{[0123456789-.eE+tfnaulrs";
  std::mt19937 rng(11);
  for (const std::string& text : schemas) {
    const Json raw = Json::parse(text);
    const auto schema = JsonSchema::compile(raw);
    int completed = 0;
    for (int walk = 0; walk < 400; ++walk) {
      SchemaState state(schema.get());
      std::string out;
      while (!state.complete() && out.size() < 400) {
        std::vector<unsigned char> takes, liked;
        for (int c = 1; c < 128; ++c) {  // ASCII: the parser checks UTF-8
          SchemaState next = state;
          if (!next.feed(static_cast<unsigned char>(c))) continue;
          takes.push_back(static_cast<unsigned char>(c));
          if (preferred.find(static_cast<char>(c)) != std::string::npos)
            liked.push_back(static_cast<unsigned char>(c));
        }
        ASSERT_FALSE(takes.empty()) << "stuck after " << out;
        const auto& pool = !liked.empty() && rng() % 10 < 8 ? liked : takes;
        const unsigned char c = pool[rng() % pool.size()];
        ASSERT_TRUE(state.feed(c));
        out += static_cast<char>(c);
      }
      if (!state.complete()) continue;
      ++completed;
      Json value;
      try {
        value = Json::parse(out);
      } catch (const Json::out_of_range&) {  // valid JSON, a number past double's range ("1E999")
        continue;
      } catch (const Json::exception& e) {
        FAIL() << e.what() << ": " << out;
      }
      EXPECT_TRUE(valid(value, raw, raw)) << text << "\n" << out;
    }
    EXPECT_GT(completed, 50) << text;
  }
}

}  // namespace

// json_value_at finds a value's text without parsing the rest: every value of random
// documents (escaped quotes and backslashes in strings and keys, keys written twice, any
// whitespace) reads as nlohmann reads it at that path; paths that are not there give
// nullopt; text that is not JSON gives a span or nullopt, within the text.
TEST(JsonValueAt, FindsEachValuesTextAsNlohmannReadsIt) {
  std::mt19937 random(7);
  auto pick = [&](int n) { return static_cast<int>(random() % static_cast<unsigned>(n)); };
  const std::vector<std::string> pieces = {"a",   "b", "\\\"", "\\\\", "\\u00e9",
                                           "x y", "{", "]",    ","};
  auto string = [&] {
    std::string s = "\"";
    for (int k = pick(4); k > 0; --k)
      s += pieces[static_cast<size_t>(pick(static_cast<int>(pieces.size())))];
    return s + "\"";
  };
  auto gap = [&] { return std::string(static_cast<size_t>(pick(3)), " \n\t"[pick(3)]); };
  std::function<std::string(int)> value = [&](int depth) -> std::string {
    const int kind = depth > 3 ? 2 + pick(3) : pick(5);
    if (kind == 0) {
      std::string s = "{" + gap();
      const int members = pick(4);
      for (int m = 0; m < members; ++m) {
        const std::string key = pick(3) == 0 ? "\"k\"" : string();  // "k" often twice
        s += (m ? "," + gap() : "") + key + gap() + ":" + gap() + value(depth + 1) + gap();
      }
      return s + "}";
    }
    if (kind == 1) {
      std::string s = "[" + gap();
      const int items = pick(4);
      for (int m = 0; m < items; ++m) s += (m ? "," + gap() : "") + value(depth + 1) + gap();
      return s + "]";
    }
    if (kind == 2) return string();
    if (kind == 3) return std::to_string(pick(2000) - 1000) + (pick(2) ? ".5e-3" : "");
    return std::vector<std::string>{"true", "false", "null"}[static_cast<size_t>(pick(3))];
  };
  int checked = 0;
  for (int round = 0; round < 3000; ++round) {
    const std::string text = gap() + value(0) + gap();
    const Json parsed = Json::parse(text);
    // Every path into the parsed value: its text at that path parses to the same value.
    std::function<void(const Json&, std::vector<std::string>&)> walk =
        [&](const Json& at, std::vector<std::string>& path) {
          const auto span = json_value_at(text, path);
          ASSERT_TRUE(span.has_value()) << text;
          EXPECT_EQ(Json::parse(*span), at) << text << " at " << ::testing::PrintToString(path);
          ++checked;
          if (at.is_object()) {
            for (const auto& [key, item] : at.items()) {
              path.push_back(key);
              walk(item, path);
              path.pop_back();
            }
            path.push_back("missing key");
            EXPECT_FALSE(json_value_at(text, path).has_value()) << text;
            path.pop_back();
          } else if (at.is_array()) {
            for (size_t k = 0; k <= at.size(); ++k) {
              path.push_back(std::to_string(k));
              if (k < at.size()) {
                walk(at[k], path);
              } else {
                EXPECT_FALSE(json_value_at(text, path).has_value()) << text;  // past its end
              }
              path.pop_back();
            }
            path.push_back("first");
            EXPECT_FALSE(json_value_at(text, path).has_value()) << text;
            path.pop_back();
          }
        };
    std::vector<std::string> path;
    walk(parsed, path);
    // Cut short, or any bytes: no read outside the text.
    const std::string cut =
        text.substr(0, static_cast<size_t>(pick(static_cast<int>(text.size()) + 1)));
    const auto part = json_value_at(cut, {"k"});
    if (part) {
      EXPECT_LE(part->data() + part->size(), cut.data() + cut.size());
    }
  }
  EXPECT_GT(checked, 5000);
  // A key written twice: its last value, as nlohmann reads it.
  const std::string twice = R"({"a":{"b":1},"c":[],"a":{"b":[2,{"d":"x\\"}]}})";
  EXPECT_EQ(Json::parse(twice)["a"]["b"][1]["d"], "x\\");
  ASSERT_TRUE(json_value_at(twice, {"a", "b", "1", "d"}).has_value());
  EXPECT_EQ(*json_value_at(twice, {"a", "b", "1", "d"}), R"("x\\")");
}

}  // namespace llava
