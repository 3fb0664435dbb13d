// The sampling keys of a request: every value a client can send either applies, or is
// refused with an error naming the key; nothing is cast out of range.
#include "launch/request_json.h"

#include <gtest/gtest.h>

#include "common/errors.h"
#include "common/json_schema.h"

namespace {

using llava::apply_sampling;
using llava::GenerationSection;
using nlohmann::json;

// The error applying key = value (JSON text) gives, or "" when it applies.
std::string error_of(const std::string& key, const std::string& value) {
  GenerationSection g;
  try {
    apply_sampling(key, json::parse(value), g);
  } catch (const llava::RequestError& e) {
    return e.what();
  }
  return "";
}

TEST(Sampling, ValuesInRangeApply) {
  GenerationSection g;
  apply_sampling("max_new_tokens", json::parse("1048576"), g);
  apply_sampling("temperature", json::parse("0.7"), g);
  apply_sampling("top_k", json::parse("40"), g);
  apply_sampling("top_p", json::parse("1"), g);
  apply_sampling("repetition_penalty", json::parse("1.1"), g);
  apply_sampling("seed", json::parse("18446744073709551615"), g);
  apply_sampling("stop", json::parse(R"(["a", "bc"])"), g);
  EXPECT_EQ(g.max_new_tokens, 1 << 20);
  EXPECT_DOUBLE_EQ(g.temperature, 0.7);
  EXPECT_EQ(g.top_k, 40);
  apply_sampling("top_k", json::parse("-1"), g);  // off, as vLLM takes it
  EXPECT_EQ(g.top_k, 0);
  EXPECT_DOUBLE_EQ(g.top_p, 1.0);
  EXPECT_DOUBLE_EQ(g.repetition_penalty, 1.1);
  EXPECT_EQ(g.seed, UINT64_MAX);
  EXPECT_EQ(g.stop, (std::vector<std::string>{"a", "bc"}));
}

// Values that used to be cast: 2^32 + 1 became 1 new token, 2.9 became 2, 1e30 was
// undefined behaviour; the message of a wrong type did not name the key.
TEST(Sampling, WholeNumbersAreCheckedNotCast) {
  EXPECT_EQ(error_of("max_new_tokens", "4294967297"),
            "max_new_tokens: 4294967297 is out of range [1, 1048576]");
  EXPECT_EQ(error_of("max_new_tokens", "0"), "max_new_tokens: 0 is out of range [1, 1048576]");
  EXPECT_EQ(error_of("max_new_tokens", "2.9"), "max_new_tokens: expected a whole number, got 2.9");
  EXPECT_EQ(error_of("max_new_tokens", "1e30"),
            "max_new_tokens: expected a whole number, got 1e+30");
  EXPECT_EQ(error_of("max_new_tokens", "\"64\""),
            "max_new_tokens: expected a whole number, got \"64\"");
  EXPECT_EQ(error_of("top_k", "-2"), "top_k: -2 is out of range [-1, 16777216]");
  EXPECT_EQ(error_of("top_k", "18446744073709551615"),
            "top_k: 18446744073709551615 is out of range [-1, 16777216]");
  EXPECT_EQ(error_of("seed", "-1"), "seed: expected a whole number from 0 to 2^64 - 1, got -1");
  EXPECT_EQ(error_of("seed", "1.5"), "seed: expected a whole number from 0 to 2^64 - 1, got 1.5");
}

TEST(Sampling, RealNumbersHaveTheFilesRanges) {
  EXPECT_EQ(error_of("temperature", "-0.1"), "temperature: -0.1 is out of range [0, 100]");
  EXPECT_EQ(error_of("temperature", "1e300"), "temperature: 1e+300 is out of range [0, 100]");
  EXPECT_EQ(error_of("temperature", "true"), "temperature: expected a number, got true");
  EXPECT_EQ(error_of("top_p", "0"), "top_p: 0 is out of range (0, 1]");
  EXPECT_EQ(error_of("top_p", "1.5"), "top_p: 1.5 is out of range (0, 1]");
  EXPECT_EQ(error_of("repetition_penalty", "0"), "repetition_penalty: 0 is out of range (0, 100]");
  EXPECT_EQ(error_of("temperature", "0"), "");
}

TEST(Sampling, MinPIsANumberFromZeroToOne) {
  GenerationSection g;
  apply_sampling("min_p", json::parse("0.05"), g);
  EXPECT_DOUBLE_EQ(g.min_p, 0.05);
  apply_sampling("min_p", json::parse("0"), g);
  EXPECT_DOUBLE_EQ(g.min_p, 0.0);
  EXPECT_EQ(error_of("min_p", "1"), "");
  EXPECT_EQ(error_of("min_p", "1.5"), "min_p: 1.5 is out of range [0, 1]");
  EXPECT_EQ(error_of("min_p", "-0.01"), "min_p: -0.01 is out of range [0, 1]");
  EXPECT_EQ(error_of("min_p", "\"low\""), "min_p: expected a number, got \"low\"");
}

TEST(Sampling, PresenceAndFrequencyPenaltiesAreOpenAisFromMinusTwoToTwo) {
  GenerationSection g;
  apply_sampling("presence_penalty", json::parse("0.6"), g);
  apply_sampling("frequency_penalty", json::parse("-2"), g);
  EXPECT_DOUBLE_EQ(g.presence_penalty, 0.6);
  EXPECT_DOUBLE_EQ(g.frequency_penalty, -2.0);
  EXPECT_EQ(error_of("presence_penalty", "2.5"), "presence_penalty: 2.5 is out of range [-2, 2]");
  EXPECT_EQ(error_of("frequency_penalty", "-2.01"),
            "frequency_penalty: -2.01 is out of range [-2, 2]");
  EXPECT_EQ(error_of("frequency_penalty", "\"high\""),
            "frequency_penalty: expected a number, got \"high\"");
}

TEST(Sampling, EverySamplingKeyIsARequestKey) {
  for (const std::string& key : llava::sampling_keys()) EXPECT_TRUE(llava::is_sampling_key(key));
  EXPECT_TRUE(llava::is_sampling_key("stop"));
  EXPECT_FALSE(llava::is_sampling_key("prompt"));
}

TEST(Sampling, StopStringsAndUnknownKeys) {
  EXPECT_EQ(error_of("stop", "[\"a\", 3]"),
            "stop: expected a string or a list of strings, got [\"a\",3]");
  EXPECT_NE(error_of("stop", "\"\"").find("stop: "), std::string::npos);
  EXPECT_EQ(error_of("colour", "1"), "unknown key 'colour'");
  // A long value is shortened in the message.
  const std::string error = error_of("temperature", "\"" + std::string(100000, 'x') + "\"");
  EXPECT_EQ(error, "temperature: expected a number, got \"" + std::string(36, 'x') + "...");
}

TEST(Sampling, StringsAreStrings) {
  EXPECT_EQ(llava::string_value("prompt", json("hi")), "hi");
  try {
    llava::string_value("prompt", json::parse("[1, 2]"));
    FAIL() << "a list is not a prompt";
  } catch (const llava::RequestError& e) {
    EXPECT_STREQ(e.what(), "prompt: expected a string, got [1,2]");
  }
}

TEST(Sampling, RepliesAreJsonEvenWithBytesThatAreNotUtf8) {
  EXPECT_EQ(llava::json_text(json{{"error", "cannot read /x/\xff.jpg"}}),
            "{\"error\":\"cannot read /x/\xef\xbf\xbd.jpg\"}");
}

TEST(JsonRequest, ClientAndBatchLineKeys) {
  llava::JsonRequest client;
  llava::parse_json_request(R"({"id": [1, "x"], "prompt": "Hi", "top_k": 5, "min_p": 0.1})",
                            false, client);
  EXPECT_EQ(client.id, json::parse(R"([1, "x"])"));
  EXPECT_EQ(client.prompt, "Hi");
  EXPECT_EQ(client.generation.top_k, 5);
  EXPECT_DOUBLE_EQ(client.generation.min_p, 0.1);

  llava::JsonRequest line;
  llava::parse_json_request(R"({"images": ["a.png", "b.gif"], "image": "c.jpg", "prompt": ""})",
                            true, line);
  EXPECT_EQ(line.image_paths, (std::vector<std::string>{"c.jpg", "a.png", "b.gif"}));
  EXPECT_EQ(line.generation.logprobs, -1);
  EXPECT_FALSE(line.generation.json_object);
}

// The error of a request, and the id it kept for the error reply.
std::pair<std::string, json> refusal(const std::string& text, bool batch_line) {
  llava::JsonRequest request;
  try {
    llava::parse_json_request(text, batch_line, request);
  } catch (const llava::RequestError& e) {
    return {e.what(), request.id};
  }
  return {"", request.id};
}

// JSON mode, as the API asks it, on a batch line or a socket client's request too.
TEST(JsonRequest, ResponseFormatJsonObjectAsksForJsonMode) {
  llava::JsonRequest line;
  llava::parse_json_request(R"({"prompt": "a", "response_format": {"type": "json_object"}})", true,
                            line);
  EXPECT_TRUE(line.generation.json_object);
  EXPECT_EQ(refusal(R"({"prompt": "a", "response_format": {"type": "json_schema"}})", true).first,
            "response_format.json_schema: expected an object with the schema");
  EXPECT_NE(
      refusal(R"({"prompt": "a", "response_format": "json"})", true).first.find("got \"json\""),
      std::string::npos);
}

// response_format json_schema: the schema checked by the worker's compiler and carried as
// text, its properties in the order the request gives them (nlohmann::json sorts keys).
TEST(JsonRequest, ResponseFormatJsonSchemaCarriesTheSchemaInItsOrder) {
  llava::JsonRequest line;
  llava::parse_json_request(
      R"({"prompt": "a", "response_format": {"type": "json_schema", "json_schema": {"name": "p", "strict": true,
          "schema": {"type": "object", "properties": {"zeta": {"type": "integer"}, "alpha": {"type": "string"}},
                     "required": ["zeta", "alpha"]}}}})",
      true, line);
  EXPECT_TRUE(line.generation.json_object);
  const auto schema =
      llava::JsonSchema::compile(nlohmann::json::parse(line.generation.json_schema));
  llava::SchemaState in_order(schema.get()), sorted(schema.get());
  EXPECT_TRUE(in_order.feed(R"({"zeta":1,"alpha":"a"})") && in_order.complete());
  EXPECT_FALSE(sorted.feed(R"({"alpha":"a","zeta":1})"));
  // No schema: any object. Then the refusals, each naming what is wrong.
  llava::parse_json_request(
      R"({"prompt": "a", "response_format": {"type": "json_schema", "json_schema": {"name": "p"}}})",
      true, line);
  EXPECT_TRUE(line.generation.json_object);
  EXPECT_TRUE(line.generation.json_schema.empty());
  auto refused = [](const std::string& format) {
    return refusal(R"({"prompt": "a", "response_format": )" + format + "}", true).first;
  };
  EXPECT_EQ(
      refused(
          R"({"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 2}}}}})"),
      "response_format: json_schema: 'multipleOf' is not supported (at #/properties/a)");
  EXPECT_EQ(
      refused(R"({"type": "json_schema", "json_schema": {"schema": {"type": "array"}}})"),
      "response_format: json_schema: the root (#) must be an object schema (\"type\": \"object\")");
  EXPECT_EQ(refused(R"({"type": "json_schema", "json_schema": {"schema": {}, "extra": 1}})"),
            "response_format.json_schema: 'extra' is not a key of it (or not of its type)");
  EXPECT_EQ(refused(R"({"type": "json_schema", "json_schema": {"name": 7}})"),
            "response_format.json_schema: 'name' is not a key of it (or not of its type)");
  EXPECT_EQ(refused(R"({"type": "json_schema", "json_schema": {}, "x": 1})"),
            "response_format: 'x' is not a key of it");
  EXPECT_EQ(refused(R"({"type": "json_object", "x": 1})").rfind("response_format: expected", 0),
            0u);
  std::string big =
      R"({"type": "json_schema", "json_schema": {"schema": {"type": "object", "description": ")";
  big += std::string(llava::kMaxJsonSchemaBytes, 'x') + "\"}}}";
  EXPECT_NE(refused(big).find("bytes; at most 65536"), std::string::npos) << refused(big);
}

// vLLM's stop_token_ids: a list of ids (the coordinator checks them against the vocabulary).
TEST(JsonRequest, StopTokenIdsAreAListOfIds) {
  llava::JsonRequest line;
  llava::parse_json_request(R"({"prompt": "a", "stop_token_ids": [13, 0, 29871]})", true, line);
  EXPECT_EQ(line.generation.stop_token_ids, (std::vector<int32_t>{13, 0, 29871}));
  std::string many = "[";
  for (int i = 0; i <= 64; ++i) many += (i ? "," : "") + std::to_string(i);
  for (const std::string& bad :
       std::vector<std::string>{"13", "[-1]", "[1.5]", "[\"13\"]", "[4294967296]", many + "]"}) {
    const std::string error =
        refusal(R"({"prompt": "a", "stop_token_ids": )" + bad + "}", true).first;
    EXPECT_EQ(error.rfind("stop_token_ids: expected a list of at most 64 token ids, got ", 0), 0u)
        << bad << ": " << error;
  }
}

TEST(JsonRequest, ErrorsNameWhatIsWrongAndKeepTheId) {
  // "colour" sorts before "id": the id is still read first, for the reply.
  EXPECT_EQ(refusal(R"({"colour": 1, "id": "q7"})", false),
            (std::pair<std::string, json>{"unknown key 'colour'", "q7"}));
  EXPECT_EQ(refusal(R"({"id": 1, "image": "x.jpg", "prompt": "a"})", false).first,
            "unknown key 'image'");  // a client sends image bytes, not paths
  EXPECT_EQ(refusal(R"({"id": 1})", true).first, "no \"prompt\"");
  EXPECT_EQ(refusal(R"({"prompt": "a", "min_p": 3})", true).first,
            "min_p: 3 is out of range [0, 1]");
  EXPECT_EQ(refusal(R"({"prompt": "a", "images": ["a.png", 3]})", true).first,
            "images: expected a string, got 3");
  EXPECT_EQ(refusal("[1, 2]", false).first, "a request must be a JSON object, got [1,2]");
  EXPECT_EQ(refusal("{not json", true).first.rfind("not a valid request ([json.exception.", 0), 0u);
  EXPECT_EQ(refusal("", false).first.rfind("not a valid request (", 0), 0u);
}

// "logprobs": the alternatives with each token's logprob (0-20); the answer's line carries
// them, a token each, as JSON can (a lone byte of a character: U+FFFD).
TEST(JsonRequest, LogprobsAreAskedByCountAndAnsweredATokenEach) {
  llava::JsonRequest line;
  llava::parse_json_request(R"({"prompt": "a", "logprobs": 2})", true, line);
  EXPECT_EQ(line.generation.logprobs, 2);
  EXPECT_EQ(refusal(R"({"prompt": "a", "logprobs": 21})", true).first,
            "logprobs: expected a whole number in [0, 20], got 21");
  EXPECT_EQ(refusal(R"({"prompt": "a", "logprobs": true})", false).first,
            "logprobs: expected a whole number in [0, 20], got true");
  const auto json =
      llava::logprobs_array({{15043, " Hi", -0.5f, {{15043, " Hi", -0.5f}, {6324, "\xc3", -2.0f}}},
                             {2, "</s>", -0.25f, {}}});
  EXPECT_EQ(json, json::parse(R"([{"id": 15043, "text": " Hi", "logprob": -0.5, "top": [
      {"id": 15043, "text": " Hi", "logprob": -0.5}, {"id": 6324, "text": "\ufffd", "logprob": -2.0}]},
      {"id": 2, "text": "</s>", "logprob": -0.25, "top": []}])"));
}

// A request nested past 128 levels is refused as JSON that is not valid, naming the byte:
// copying or showing such a value recursed a frame per level, and a million levels (2 MB)
// ended the process. Its id is not read, so it is not copied either.
TEST(JsonRequest, ARequestNestedPast128LevelsIsRefusedNamingTheByte) {
  const int n = 1000000;
  for (const std::string key : {"id", "prompt", "stop"}) {
    const auto [error, id] =
        refusal("{\"" + key + "\": " + std::string(n, '[') + std::string(n, ']') + "}", true);
    // `{"key": ` then 128 brackets: the last opens level 129.
    EXPECT_NE(error.find("parse error at byte " + std::to_string(5 + key.size() + 128) +
                         ": nested deeper than 128 levels"),
              std::string::npos)
        << error;
    EXPECT_TRUE(id.is_null());
  }
  // 128 levels are read (and shown in the error: no recursion to fear at that depth).
  const std::string deep = std::string(127, '[') + std::string(127, ']');
  EXPECT_EQ(refusal("{\"prompt\": \"a\", \"images\": " + deep + "}", true).first,
            "images: expected a string, got " + std::string(37, '[') + "...");
  // Brackets inside strings are not levels.
  llava::JsonRequest request;
  llava::parse_json_request("{\"prompt\": \"" + std::string(1000, '[') + "\\\"{\"}", true, request);
  EXPECT_EQ(request.prompt, std::string(1000, '[') + "\"{");
}

}  // namespace
