// The OpenAI API's requests and responses: parsing, validation (each error naming its field
// and status), response bodies, SSE framing, image URLs.
#include "launch/openai_api.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <iterator>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#if LLAVA_PIPE_HTTP && LLAVA_PIPE_CURL
#include <httplib.h>
#endif

#include "common/json_schema.h"
#include "coordinator/coordinator.h"
#include "launch/http_server.h"
#include "launch/openai_images.h"
#include "launch/openai_tools.h"
#include "launch/request_json.h"

namespace llava {
namespace {

GenerationSection defaults() {
  return GenerationSection{};
}

// The ApiError a chat body gets.
ApiError chat_error(const std::string& body, int max_images = 8) {
  try {
    parse_chat_request(body, defaults(), max_images);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body;
  return ApiError(0, "");
}

TEST(OpenAiChatRequest, ReadsMessagesPartsAndSampling) {
  const auto r = parse_chat_request(
      R"({"model":"m","messages":[{"role":"system","content":"Be brief."},
          {"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA=="}},
                                    {"type":"text","text":"What?"}]}],
          "max_tokens":7,"temperature":0.5,"top_p":0.9,"top_k":3,"seed":11,"stop":"END",
          "repetition_penalty":1.1,"stream":true,"stream_options":{"include_usage":true},"n":1,"user":"u"})",
      defaults(), 8);
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_TRUE(r.messages[0].content_is_string);
  EXPECT_EQ(r.messages[0].parts[0].text, "Be brief.");
  ASSERT_EQ(r.messages[1].parts.size(), 2u);
  EXPECT_TRUE(r.messages[1].parts[0].image);
  EXPECT_EQ(r.messages[1].parts[0].url, "data:image/png;base64,AA==");
  EXPECT_EQ(r.messages[1].parts[0].param, "messages[1].content[0]");
  EXPECT_EQ(r.messages[1].parts[1].text, "What?");
  EXPECT_EQ(r.images, 1);
  EXPECT_EQ(r.generation.max_new_tokens, 7);
  EXPECT_DOUBLE_EQ(r.generation.temperature, 0.5);
  EXPECT_DOUBLE_EQ(r.generation.top_p, 0.9);
  EXPECT_EQ(r.generation.top_k, 3);
  EXPECT_EQ(r.generation.seed, 11u);
  EXPECT_EQ(r.generation.stop, std::vector<std::string>{"END"});
  EXPECT_DOUBLE_EQ(r.generation.repetition_penalty, 1.1);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
}

TEST(OpenAiChatRequest, MaxCompletionTokensAndNullsKeepOrSetTheLimit) {
  auto r = parse_chat_request(
      R"({"messages":[{"role":"user","content":"x"}],"max_completion_tokens":5})", defaults(), 8);
  EXPECT_EQ(r.generation.max_new_tokens, 5);
  r = parse_chat_request(
      R"({"messages":[{"role":"user","content":"x"}],"max_tokens":null,"temperature":null})",
      defaults(), 8);
  EXPECT_EQ(r.generation.max_new_tokens, defaults().max_new_tokens);
}

TEST(OpenAiChatRequest, InvalidJsonIs400) {
  const auto e = chat_error("{not json");
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos);
}

TEST(OpenAiChatRequest, AWrongTypeNamesTheField) {
  const auto e = chat_error(R"({"messages":[{"role":"user","content":"x"}],"temperature":"hot"})");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "temperature");
  EXPECT_EQ(std::string(e.what()).rfind("temperature: expected a number", 0), 0u) << e.what();
}

TEST(OpenAiChatRequest, AnOutOfRangeValueNamesTheRequestsOwnField) {
  const auto e = chat_error(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":0})");
  EXPECT_EQ(e.param, "max_tokens");
  EXPECT_EQ(std::string(e.what()).rfind("max_tokens: 0 is out of range", 0), 0u) << e.what();
}

TEST(OpenAiChatRequest, MinPIsAcceptedAsVllmTakesItAndCheckedByName) {
  const auto r = parse_chat_request(
      R"({"messages":[{"role":"user","content":"x"}],"min_p":0.05})", defaults(), 8);
  EXPECT_DOUBLE_EQ(r.generation.min_p, 0.05);
  const auto c = parse_completion_request(R"({"prompt":"x","min_p":0.2})", defaults());
  EXPECT_DOUBLE_EQ(c.generation.min_p, 0.2);
  const auto e = chat_error(R"({"messages":[{"role":"user","content":"x"}],"min_p":2})");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "min_p");
  EXPECT_STREQ(e.what(), "min_p: 2 is out of range [0, 1]");
  // The config's name for max_tokens is not OpenAI's: refused as before.
  EXPECT_EQ(
      chat_error(R"({"messages":[{"role":"user","content":"x"}],"max_new_tokens":5})").param,
      "max_new_tokens");
}

TEST(OpenAiChatRequest, AnUnknownRoleNamesTheMessage) {
  const auto e =
      chat_error(R"({"messages":[{"role":"user","content":"x"},{"role":"robot","content":"y"}]})");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "messages[1].role");
}

const std::string kTools =
    R"("tools":[{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"]}}},{"type":"function","function":{"name":"search"}}])";

CompletionRequest with_tools(const std::string& rest) {
  return parse_chat_request(R"({"messages":[{"role":"user","content":"x"}],)" + kTools + rest + "}",
                            defaults(), 8);
}

// tools and tool_choice: "none" (the default) leaves the answer free; a named function holds
// it to that function's parameters; "required" to one or more calls of any tool; the
// schema as the worker compiles it. The tools go to the chat template either way.
TEST(OpenAiChatRequest, ToolChoiceHoldsTheAnswerToTheToolsSchemas) {
  const auto none = with_tools("");
  EXPECT_EQ(none.tool_use, ToolUse::kNone);
  EXPECT_FALSE(none.generation.json_object);
  ASSERT_TRUE(none.tools.is_array());
  EXPECT_EQ(none.tools.size(), 2u);
  EXPECT_EQ(with_tools(R"(,"tool_choice":"none")").tool_use, ToolUse::kNone);

  const auto named =
      with_tools(R"(,"tool_choice":{"type":"function","function":{"name":"get_weather"}})");
  EXPECT_EQ(named.tool_use, ToolUse::kNamed);
  EXPECT_EQ(named.tool_name, "get_weather");
  EXPECT_TRUE(named.generation.json_object);
  // The function's parameters in the body's order (city before days), compiled.
  EXPECT_NE(named.generation.json_schema.find(R"("x-llava-property-order":["city","days"])"),
            std::string::npos)
      << named.generation.json_schema;
  EXPECT_NO_THROW(JsonSchema::compile(nlohmann::json::parse(named.generation.json_schema)));
  // A function without parameters takes the empty object only.
  const auto bare =
      with_tools(R"(,"tool_choice":{"type":"function","function":{"name":"search"}})");
  const auto empty = JsonSchema::compile(nlohmann::json::parse(bare.generation.json_schema));
  SchemaState state(empty.get());
  EXPECT_TRUE(state.feed("{}") && state.complete());
  SchemaState other(empty.get());
  EXPECT_FALSE(other.feed(R"({"a")"));

  const auto required = with_tools(R"(,"tool_choice":"required")");
  EXPECT_EQ(required.tool_use, ToolUse::kRequired);
  const auto calls = JsonSchema::compile(nlohmann::json::parse(required.generation.json_schema));
  SchemaState two(calls.get());
  EXPECT_TRUE(two.feed(
      R"({"tool_calls":[{"name":"get_weather","parameters":{"city":"Oslo"}},{"name":"search","parameters":{}}]})"));
  EXPECT_TRUE(two.complete());
  SchemaState wrong(calls.get());
  EXPECT_FALSE(wrong.feed(R"({"tool_calls":[{"name":"search","parameters":{"city")"));
  // parallel_tool_calls false: one call at most.
  const auto one = with_tools(R"(,"tool_choice":"required","parallel_tool_calls":false)");
  const auto single = JsonSchema::compile(nlohmann::json::parse(one.generation.json_schema));
  SchemaState just_one(single.get());
  EXPECT_FALSE(just_one.feed(R"({"tool_calls":[{"name":"search","parameters":{}},)"));
}

TEST(OpenAiChatRequest, ToolsAndToolChoiceErrorsNameTheirField) {
  auto tools_error = [](const std::string& rest) {
    return chat_error(R"({"messages":[{"role":"user","content":"x"}],)" + rest + "}");
  };
  const ApiError automatic = tools_error(kTools + R"(,"tool_choice":"auto")");
  EXPECT_EQ(automatic.param, "tool_choice");
  EXPECT_NE(std::string(automatic.what()).find("'auto'"), std::string::npos) << automatic.what();
  const ApiError unknown =
      tools_error(kTools + R"(,"tool_choice":{"type":"function","function":{"name":"fly"}})");
  EXPECT_EQ(unknown.param, "tool_choice");
  EXPECT_NE(std::string(unknown.what()).find("no tool is named 'fly'"), std::string::npos);
  EXPECT_NE(std::string(tools_error(R"("tool_choice":"required")").what()).find("no tools"),
            std::string::npos);
  EXPECT_EQ(tools_error(kTools + R"(,"tool_choice":"always")").param, "tool_choice");
  EXPECT_EQ(tools_error(R"("tools":[{"type":"function","function":{"name":"a b"}}])").param,
            "tools[0].function.name");
  EXPECT_NE(
      std::string(
          tools_error(
              R"("tools":[{"type":"function","function":{"name":"f"}},{"type":"function","function":{"name":"f"}}])")
              .what())
          .find("'f' names another tool too"),
      std::string::npos);
  const ApiError pattern = tools_error(
      R"j("tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"string","pattern":"(?=x)"}}}}}])j");
  EXPECT_EQ(pattern.param, "tools[0].function.parameters");
  EXPECT_NE(std::string(pattern.what()).find("lookaround and named groups are not supported"),
            std::string::npos)
      << pattern.what();
  EXPECT_EQ(tools_error(R"("tools":[{"type":"retrieval"}])").param, "tools[0]");
  EXPECT_EQ(
      tools_error(R"("tools":[{"type":"function","function":{"name":"f","strict":"yes"}}])").param,
      "tools[0].function.strict");
  EXPECT_EQ(
      tools_error(kTools + R"(,"tool_choice":"required","response_format":{"type":"json_object"})")
          .param,
      "tool_choice");
  EXPECT_EQ(tools_error(kTools + R"(,"tool_choice":"required","min_tokens":3)").param,
            "min_tokens");
  std::string many = R"("tools":[)";
  for (int i = 0; i <= kMaxTools; ++i) {
    many += std::string(i ? "," : "") + R"({"type":"function","function":{"name":"f)" +
            std::to_string(i) + R"("}})";
  }
  EXPECT_EQ(tools_error(many + "]").param, "tools");
}

// A conversation that goes on after a call: the assistant's calls and the tool's answer.
TEST(OpenAiChatRequest, ToolTurnsAndEarlierCallsAreRead) {
  const auto request = parse_chat_request(
      R"({"messages":[{"role":"user","content":"Weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},{"role":"tool","tool_call_id":"call_1","content":"12 C"}]})",
      defaults(), 8);
  ASSERT_EQ(request.messages.size(), 3u);
  EXPECT_EQ(request.messages[1].tool_calls[0]["function"]["name"], "get_weather");
  EXPECT_TRUE(request.messages[1].parts.empty());
  EXPECT_EQ(request.messages[2].role, "tool");
  EXPECT_EQ(request.messages[2].tool_call_id, "call_1");
  EXPECT_EQ(request.messages[2].parts[0].text, "12 C");
  EXPECT_EQ(chat_error(R"({"messages":[{"role":"tool","content":"12 C"}]})").param,
            "messages[0].tool_call_id");
  EXPECT_EQ(
      chat_error(
          R"({"messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f"}}]}]})")
          .param,
      "messages[0].tool_calls[0]");
  EXPECT_EQ(chat_error(R"({"messages":[{"role":"user","content":"x","tool_calls":[]}]})").param,
            "messages[0].tool_calls");
  EXPECT_EQ(chat_error(R"({"messages":[{"role":"assistant"}]})").param, "messages[0].content");
}

TEST(OpenAiChatRequest, TooManyImagesAre400) {
  std::string parts;
  for (int i = 0; i < 3; ++i)
    parts += R"({"type":"image_url","image_url":{"url":"data:image/png;base64,AA=="}},)";
  const auto e = chat_error(
      R"({"messages":[{"role":"user","content":[)" + parts + R"({"type":"text","text":"x"}]}]})",
      2);
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(std::string(e.what()).find("3 images; at most 2"), std::string::npos);
}

TEST(OpenAiChatRequest, PresenceAndFrequencyPenaltiesAreTakenInOpenAisRange) {
  const auto r = parse_chat_request(
      R"({"messages":[{"role":"user","content":"x"}],"presence_penalty":0.5,"frequency_penalty":-1.25})",
      defaults(), 8);
  EXPECT_DOUBLE_EQ(r.generation.presence_penalty, 0.5);
  EXPECT_DOUBLE_EQ(r.generation.frequency_penalty, -1.25);
  const auto nulls = parse_completion_request(
      R"({"prompt":"x","presence_penalty":null,"frequency_penalty":null})", defaults());
  EXPECT_EQ(nulls.generation.presence_penalty, 0.0);
  EXPECT_EQ(nulls.generation.frequency_penalty, 0.0);
  const ApiError e =
      chat_error(R"({"messages":[{"role":"user","content":"x"}],"frequency_penalty":3})");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "frequency_penalty");
  EXPECT_EQ(std::string(e.what()), "frequency_penalty: 3 is out of range [-2, 2]");
}

TEST(OpenAiChatRequest, LogitBiasIsTokenIdsToNumbersFromMinusToPlusAHundred) {
  const auto r = parse_chat_request(
      R"({"messages":[{"role":"user","content":"x"}],"logit_bias":{"5":1,"32000":-100}})",
      defaults(), 8);
  auto bias = r.generation.logit_bias;  // in the object's order, which JSON does not fix
  std::sort(bias.begin(), bias.end());
  EXPECT_EQ(bias, (std::vector<std::pair<int32_t, float>>{{5, 1.0f}, {32000, -100.0f}}));
  EXPECT_TRUE(parse_completion_request(R"({"prompt":"x","logit_bias":null})", defaults())
                  .generation.logit_bias.empty());
  auto refused = [](const std::string& bias) {
    return chat_error(R"({"messages":[{"role":"user","content":"x"}],"logit_bias":)" + bias + "}");
  };
  for (const char* bias :
       {R"({"a":1})", R"({"-1":1})", R"({"1.5":1})", R"({"5":101})", R"({"5":"1"})", "[1]"}) {
    const ApiError e = refused(bias);
    EXPECT_EQ(e.status, 400) << bias;
    EXPECT_EQ(e.param, "logit_bias") << bias;
  }
  EXPECT_EQ(std::string(refused(R"({"5":101})").what()),
            "logit_bias[5]: expected a number from -100 to 100, got 101");
  EXPECT_EQ(std::string(refused(R"({"a":1})").what()), "logit_bias: \"a\" is not a token id");
  std::string many = "{";
  for (int i = 0; i <= 1024; ++i)
    many += (i ? "," : "") + std::string("\"") + std::to_string(i) + "\":1";
  EXPECT_NE(std::string(refused(many + "}").what()).find("1025 token ids; at most 1024"),
            std::string::npos);
}

// n: choices from 1 to 128 (OpenAI's), each a request of its own; null keeps one.
TEST(OpenAiChatRequest, NIsAWholeNumberOfChoicesUpTo128) {
  auto with_n = [](const std::string& n) {
    return R"({"messages":[{"role":"user","content":"x"}],"n":)" + n + "}";
  };
  EXPECT_EQ(parse_chat_request(with_n("3"), defaults(), 8).choices, 3);
  EXPECT_EQ(parse_chat_request(with_n("128"), defaults(), 8).choices, 128);
  EXPECT_EQ(parse_chat_request(with_n("null"), defaults(), 8).choices, 1);
  EXPECT_EQ(
      parse_chat_request(R"({"messages":[{"role":"user","content":"x"}]})", defaults(), 8).choices,
      1);
  EXPECT_EQ(parse_completion_request(R"({"prompt":"x","n":2})", defaults()).choices, 2);
  for (const char* bad : {"0", "129", "-1", "1.5", "\"2\"", "true"}) {
    const ApiError e = chat_error(with_n(bad));
    EXPECT_EQ(e.status, 400) << bad;
    EXPECT_EQ(e.param, "n") << bad;
    EXPECT_NE(std::string(e.what()).find("from 1 to 128"), std::string::npos) << e.what();
  }
}

// response_format json_object: JSON mode, on both endpoints; text is the default.
TEST(OpenAiChatRequest, ResponseFormatJsonObjectAsksForJsonMode) {
  EXPECT_TRUE(
      parse_chat_request(
          R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}})",
          defaults(), 8)
          .generation.json_object);
  EXPECT_FALSE(
      parse_chat_request(
          R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"text"}})",
          defaults(), 8)
          .generation.json_object);
  EXPECT_TRUE(parse_completion_request(R"({"prompt":"x","response_format":{"type":"json_object"}})",
                                       defaults())
                  .generation.json_object);
  // json_schema: the schema as text, in the body's property order.
  const auto chat = parse_chat_request(
      R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{"type":"object","properties":{"b":{"type":"integer"},"a":{"type":"integer"}},"required":["b","a"]}}}})",
      defaults(), 8);
  EXPECT_TRUE(chat.generation.json_object);
  EXPECT_NE(chat.generation.json_schema.find(R"("x-llava-property-order":["b","a"])"),
            std::string::npos)
      << chat.generation.json_schema;
}

TEST(OpenAiChatRequest, UnsupportedParametersAreRefusedNotIgnored) {
  EXPECT_EQ(
      chat_error(R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]})")
          .param,
      "tools[0]");
  EXPECT_EQ(
      chat_error(R"({"messages":[{"role":"user","content":"x"}],"tool_choice":"auto"})").param,
      "tool_choice");
  EXPECT_EQ(chat_error(R"({"messages":[{"role":"user","content":"x"}],"store":true})").param,
            "store");
  EXPECT_EQ(
      chat_error(R"({"messages":[{"role":"user","content":"x"}],"service_tier":"flex"})").param,
      "service_tier");
  const ApiError schema = chat_error(
      R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{"type":"object","minProperties":1}}}})");
  EXPECT_EQ(schema.param, "response_format");
  EXPECT_NE(std::string(schema.what()).find("'minProperties' is not supported (at #)"),
            std::string::npos)
      << schema.what();
  EXPECT_EQ(
      chat_error(R"({"messages":[{"role":"user","content":"x"}],"response_format":"json"})").param,
      "response_format");
  // Zero penalties and a text response format are OpenAI's defaults: accepted.
  EXPECT_NO_THROW(parse_chat_request(
      R"({"messages":[{"role":"user","content":"x"}],"presence_penalty":0,"frequency_penalty":0,"logprobs":false,"response_format":{"type":"text"}})",
      defaults(), 8));
  // So are the defaults (and nulls, as some SDKs send every unset key) of what is not done.
  EXPECT_NO_THROW(parse_chat_request(
      R"({"messages":[{"role":"user","content":"x"}],"logit_bias":{},"metadata":null,"tools":[],"functions":null,"tool_choice":"none","function_call":null,"parallel_tool_calls":false,"store":false,"service_tier":"auto","modalities":["text"]})",
      defaults(), 8));
  for (const char* key :
       {"logit_bias", "tools", "tool_choice", "store", "service_tier", "modalities"}) {
    EXPECT_NO_THROW(parse_completion_request(std::string(R"({"prompt":"x",")") + key + R"(":null})",
                                             defaults()))
        << key;
  }
}

// Chat: logprobs true asks for each token's; top_logprobs (0-20) for the most likely
// alternatives too, and only with it. Completions: logprobs is that number (0-20).
TEST(OpenAiChatRequest, LogprobsAndTopLogprobsAreReadAsOpenAiTakesThem) {
  const std::string chat = R"({"messages":[{"role":"user","content":"x"}])";
  EXPECT_EQ(parse_chat_request(chat + "}", defaults(), 8).generation.logprobs, -1);
  EXPECT_EQ(parse_chat_request(chat + R"(,"logprobs":false})", defaults(), 8).generation.logprobs,
            -1);
  EXPECT_EQ(parse_chat_request(chat + R"(,"logprobs":true})", defaults(), 8).generation.logprobs,
            0);
  EXPECT_EQ(parse_chat_request(chat + R"(,"logprobs":true,"top_logprobs":20})", defaults(), 8)
                .generation.logprobs,
            20);
  EXPECT_EQ(parse_chat_request(chat + R"(,"logprobs":true,"top_logprobs":null})", defaults(), 8)
                .generation.logprobs,
            0);
  const ApiError alone = chat_error(chat + R"(,"top_logprobs":3})");
  EXPECT_EQ(alone.param, "top_logprobs");
  EXPECT_STREQ(alone.what(), "top_logprobs: only with \"logprobs\": true");
  EXPECT_STREQ(chat_error(chat + R"(,"logprobs":true,"top_logprobs":21})").what(),
               "top_logprobs: expected a whole number in [0, 20], got 21");
  EXPECT_EQ(chat_error(chat + R"(,"logprobs":true,"top_logprobs":-1})").param, "top_logprobs");
  EXPECT_EQ(chat_error(chat + R"(,"logprobs":true,"top_logprobs":1.5})").param, "top_logprobs");
  EXPECT_EQ(chat_error(chat + R"(,"logprobs":3})").param, "logprobs");

  EXPECT_EQ(parse_completion_request(R"({"prompt":"x"})", defaults()).generation.logprobs, -1);
  EXPECT_EQ(
      parse_completion_request(R"({"prompt":"x","logprobs":null})", defaults()).generation.logprobs,
      -1);
  EXPECT_EQ(
      parse_completion_request(R"({"prompt":"x","logprobs":0})", defaults()).generation.logprobs,
      0);
  EXPECT_EQ(
      parse_completion_request(R"({"prompt":"x","logprobs":5})", defaults()).generation.logprobs,
      5);
  for (const char* bad : {"21", "-1", "true", "\"5\""}) {
    try {
      parse_completion_request(std::string(R"({"prompt":"x","logprobs":)") + bad + "}", defaults());
      ADD_FAILURE() << "accepted logprobs " << bad;
    } catch (const ApiError& e) {
      EXPECT_EQ(e.param, "logprobs") << bad;
      EXPECT_EQ(e.status, 400);
    }
  }
}

TEST(OpenAiChatRequest, ImagesOutsideUserMessagesAreRefused) {
  const auto e = chat_error(
      R"({"messages":[{"role":"assistant","content":[{"type":"image_url","image_url":{"url":"x"}}]}]})");
  EXPECT_EQ(e.param, "messages[0].content[0]");
}

TEST(OpenAiChatRequest, IncludeUsageWithoutStreamIsRefused) {
  EXPECT_EQ(
      chat_error(
          R"({"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}})")
          .param,
      "stream_options");
}

TEST(OpenAiCompletionRequest, ReadsAPromptAndEcho) {
  const auto r = parse_completion_request(R"({"prompt":"Once","max_tokens":3})", defaults());
  EXPECT_FALSE(r.chat);
  EXPECT_EQ(r.prompt, "Once");
  EXPECT_EQ(r.generation.max_new_tokens, 3);
  EXPECT_FALSE(r.echo);
  // echo: the prompt's text first; with logprobs, its tokens' too; then max_tokens may be 0
  // (the prompt's logprobs alone, as evaluation harnesses ask).
  const auto echo = parse_completion_request(R"({"prompt":"x","echo":true})", defaults());
  EXPECT_TRUE(echo.echo);
  EXPECT_FALSE(echo.generation.prompt_logprobs);
  const auto scored = parse_completion_request(
      R"({"prompt":"x","echo":true,"logprobs":1,"max_tokens":0})", defaults());
  EXPECT_TRUE(scored.generation.prompt_logprobs);
  EXPECT_EQ(scored.generation.max_new_tokens, 0);
  EXPECT_FALSE(parse_completion_request(R"({"prompt":"x","logprobs":1})", defaults())
                   .generation.prompt_logprobs);
  try {
    parse_completion_request(R"({"prompt":"x","max_tokens":0})", defaults());
    ADD_FAILURE() << "max_tokens 0 without echo";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.param, "max_tokens");
  }
  EXPECT_THROW(parse_completion_request(R"({"prompt":"x","echo":1})", defaults()), ApiError);
  EXPECT_THROW(parse_completion_request(R"({"prompt":"x","suffix":"end"})", defaults()), ApiError);
  EXPECT_NO_THROW(
      parse_completion_request(R"({"prompt":"x","suffix":null,"echo":false})", defaults()));
  EXPECT_NO_THROW(parse_completion_request(R"({"prompt":"x","suffix":""})", defaults()));
  EXPECT_THROW(parse_completion_request(R"({"max_tokens":3})", defaults()), ApiError);
}

// OpenAI's prompt forms: a string or token ids, alone or as a list's one item; several
// prompts, or ids that are not whole numbers from 0, are refused naming the place.
TEST(OpenAiCompletionRequest, APromptIsAStringOrTokenIdsAloneOrAsAListsOneItem) {
  EXPECT_EQ(parse_completion_request(R"({"prompt":["Once"]})", defaults()).prompt, "Once");
  for (const char* body :
       {R"({"prompt":[1, 15043, 32063]})", R"({"prompt":[[1, 15043, 32063]]})"}) {
    const auto r = parse_completion_request(body, defaults());
    ASSERT_TRUE(r.prompt_ids.has_value()) << body;
    EXPECT_EQ(*r.prompt_ids, (std::vector<int32_t>{1, 15043, 32063})) << body;
  }
  EXPECT_FALSE(parse_completion_request(R"({"prompt":"Once"})", defaults()).prompt_ids);
  auto refusal = [](const std::string& body) {
    try {
      parse_completion_request(body, defaults());
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      EXPECT_EQ(e.param, "prompt");
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(refusal(R"({"prompt":["a", "b"]})"), "prompt: 2 prompts; a request takes one");
  EXPECT_EQ(refusal(R"({"prompt":[[1], [2]]})"), "prompt: 2 prompts; a request takes one");
  EXPECT_EQ(refusal(R"({"prompt":[1, -2]})"), "prompt[1]: expected a token id, got -2");
  EXPECT_EQ(refusal(R"({"prompt":[1, 2.5]})"), "prompt[1]: expected a token id, got 2.5");
  EXPECT_EQ(refusal(R"({"prompt":[18446744073709551615]})"),
            "prompt[0]: expected a token id, got 18446744073709551615");
  EXPECT_EQ(refusal(R"({"prompt":[2147483648]})"),
            "prompt[0]: expected a token id, got 2147483648");
  EXPECT_EQ(refusal(R"({"prompt":[]})"),
            "prompt: expected a string or a list of token ids, got []");
  EXPECT_EQ(refusal(R"({"prompt":[[]]})"),
            "prompt: expected a string or a list of token ids, got [[]]");
  EXPECT_EQ(refusal(R"({"prompt":{"a":1}})"),
            "prompt: expected a string or a list of token ids, got {\"a\":1}");
}

// vLLM's ignore_eos, which its benchmark clients always send (false unless asked).
TEST(OpenAiCompletionRequest, IgnoreEosIsReadAsVllmTakesIt) {
  EXPECT_FALSE(parse_completion_request(R"({"prompt":"x"})", defaults()).generation.ignore_eos);
  EXPECT_FALSE(parse_completion_request(R"({"prompt":"x","ignore_eos":false})", defaults())
                   .generation.ignore_eos);
  EXPECT_TRUE(parse_completion_request(R"({"prompt":"x","ignore_eos":true})", defaults())
                  .generation.ignore_eos);
  EXPECT_TRUE(
      parse_chat_request(R"({"messages":[{"role":"user","content":"x"}],"ignore_eos":true})",
                         defaults(), 8)
          .generation.ignore_eos);
  EXPECT_THROW(parse_completion_request(R"({"prompt":"x","ignore_eos":"yes"})", defaults()),
               ApiError);
}

TEST(OpenAiResponses, AWholeChatAnswerHasTheFieldsClientsRead) {
  const auto body = completion_body(true, "chatcmpl-1", 1700000000, "tiny",
                                    {{"Hi", "eos", nullptr}}, Usage{30, 2});
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(body["choices"][0]["message"]["content"], "Hi");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");  // eos and stop strings alike
  EXPECT_EQ(body["usage"]["total_tokens"], 32);
  EXPECT_EQ(completion_body(false, "c", 0, "m", {{"x", "length", nullptr}},
                            Usage{})["choices"][0]["finish_reason"],
            "length");
}

TEST(OpenAiResponses, ChoicesAreIndexedInOrderWithTheirOwnTextFinishAndLogprobs) {
  const auto body = completion_body(
      true, "c", 0, "m", {{"a", "eos", nullptr}, {"bb", "length", {{"content", 1}}}}, Usage{4, 3});
  ASSERT_EQ(body["choices"].size(), 2u);
  EXPECT_EQ(body["choices"][0]["index"], 0);
  EXPECT_EQ(body["choices"][1]["index"], 1);
  EXPECT_EQ(body["choices"][1]["message"]["content"], "bb");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["choices"][1]["finish_reason"], "length");
  EXPECT_TRUE(body["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(body["choices"][1]["logprobs"]["content"], 1);
  EXPECT_EQ(body["usage"]["total_tokens"], 7);
  EXPECT_EQ(chunk_body(false, "c", 0, "m", "t", false, "", nullptr, 5)["choices"][0]["index"], 5);
}

TEST(OpenAiResponses, StreamChunksCarryTheRoleFirstThenDeltasThenTheFinish) {
  const auto first = chunk_body(true, "id", 1, "m", "", true, "");
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  const auto text = chunk_body(true, "id", 1, "m", "é", false, "");
  EXPECT_FALSE(text["choices"][0]["delta"].contains("role"));
  EXPECT_EQ(text["choices"][0]["delta"]["content"], "é");
  const auto last = chunk_body(true, "id", 1, "m", "", false, "length");
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  const auto usage = usage_chunk_body(true, "id", 1, "m", Usage{5, 6});
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 11);
}

// Three tokens: " Hi", the first byte of "é" (a byte-fallback token: not a character
// alone) and "</s>"; the second's alternative was banned (-inf).
std::vector<TokenLogprob> three_tokens() {
  const float inf = std::numeric_limits<float>::infinity();
  return {{15043, " Hi", -0.25f, {{15043, " Hi", -0.25f}, {6324, " Hello", -1.5f}}},
          {234, "\xc3", -0.5f, {{234, "\xc3", -0.5f}, {32000, "<image>", -inf}}},
          {2, "</s>", -0.125f, {{29889, ".", -2.0f}, {13, "\n", -3.0f}}}};
}

TEST(OpenAiResponses, ChatLogprobsGiveEachTokenItsBytesAndItsAlternatives) {
  TextCursor cursor;
  const auto json = logprobs_json(true, three_tokens(), " Hi\xc3", cursor);
  EXPECT_TRUE(json["refusal"].is_null());
  const auto& content = json["content"];
  ASSERT_EQ(content.size(), 3u);
  EXPECT_EQ(content[0]["token"], " Hi");
  EXPECT_EQ(content[0]["logprob"], -0.25);
  EXPECT_EQ(content[0]["bytes"], nlohmann::json({32, 72, 105}));
  ASSERT_EQ(content[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(content[0]["top_logprobs"][1]["token"], " Hello");
  EXPECT_EQ(content[0]["top_logprobs"][1]["logprob"], -1.5);
  // A part of a character: U+FFFD as text, its byte exact.
  EXPECT_EQ(content[1]["token"], "\xef\xbf\xbd");
  EXPECT_EQ(content[1]["bytes"], nlohmann::json({0xc3}));
  EXPECT_EQ(content[1]["top_logprobs"][1]["logprob"], -9999.0);  // OpenAI's floor for -inf
  // The chosen token need not be among the alternatives (they are the most likely).
  EXPECT_EQ(content[2]["token"], "</s>");
  EXPECT_EQ(content[2]["top_logprobs"][0]["token"], ".");
  EXPECT_NO_THROW(json_text(json));  // valid UTF-8 throughout
}

TEST(OpenAiResponses, CompletionLogprobsAreParallelListsWithTheTokenAmongItsAlternatives) {
  // The answer so far: "ab" (7 characters streamed before: the cursor), then these tokens'
  // text: "Hi" (its space dropped at a text's start) and a lone byte (U+FFFD in the text).
  const std::string text =
      "ab\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac"
      "Hi\xef\xbf\xbd";
  TextCursor cursor{17, 7};
  const auto json = logprobs_json(false, three_tokens(), text, cursor);
  EXPECT_EQ(json["tokens"], nlohmann::json({" Hi", "\xef\xbf\xbd", "</s>"}));
  EXPECT_EQ(json["token_logprobs"], nlohmann::json({-0.25, -0.5, -0.125}));
  EXPECT_EQ(json["text_offset"], nlohmann::json({7, 9, 10}));  // </s> takes no room
  EXPECT_EQ(cursor.characters, 10u);
  ASSERT_EQ(json["top_logprobs"].size(), 3u);
  EXPECT_EQ(json["top_logprobs"][0], nlohmann::json({{" Hi", -0.25}, {" Hello", -1.5}}));
  // The chosen token is always there, even when it is not among the most likely.
  EXPECT_EQ(json["top_logprobs"][2], nlohmann::json({{".", -2.0}, {"\n", -3.0}, {"</s>", -0.125}}));
  // Mid-text, a token's space is the text's: " Hi" after "x" is found with it.
  TextCursor mid{1, 1};
  EXPECT_EQ(
      logprobs_json(false, {three_tokens()[0], three_tokens()[0]}, "x Hi Hi", mid)["text_offset"],
      nlohmann::json({1, 4}));
  // An echoed prompt's first token has no logprob: null, and null alternatives.
  TokenLogprob first{1, "<s>", std::numeric_limits<float>::quiet_NaN(), {}, false};
  TextCursor start;
  const auto echoed = logprobs_json(false, {first, three_tokens()[0]}, "Hi", start);
  EXPECT_EQ(echoed["token_logprobs"], nlohmann::json({nullptr, -0.25}));
  EXPECT_TRUE(echoed["top_logprobs"][0].is_null());
  EXPECT_EQ(echoed["text_offset"], nlohmann::json({0, 0}));
  const auto body = completion_body(false, "c", 0, "m", {{"Hi", "eos", json}}, Usage{1, 3});
  EXPECT_EQ(body["choices"][0]["logprobs"]["tokens"].size(), 3u);
  EXPECT_TRUE(completion_body(false, "c", 0, "m", {{"x", "eos", nullptr}},
                              Usage{})["choices"][0]["logprobs"]
                  .is_null());
  TextCursor unused;
  EXPECT_EQ(chunk_body(true, "id", 1, "m", "x", false, "",
                       logprobs_json(true, three_tokens(), "",
                                     unused))["choices"][0]["logprobs"]["content"]
                .size(),
            3u);
}

// Two tokens may read the same (byte tokens shown as U+FFFD, a word with and without a
// marker): the chosen token's own logprob is the one under its text.
TEST(OpenAiResponses, TheChosenTokensLogprobIsUnderItsTextWhereAnAlternativeReadsTheSame) {
  TextCursor cursor;
  const TokenLogprob chosen{10, "a", -2.0f, {{11, "a", -0.5f}, {12, "b", -1.0f}}};
  const auto json = logprobs_json(false, {chosen}, "a", cursor);
  EXPECT_EQ(json["top_logprobs"][0], nlohmann::json({{"a", -2.0}, {"b", -1.0}}));
  EXPECT_EQ(json["token_logprobs"][0], -2.0);
  TextCursor by_id;  // by id, both are there
  EXPECT_EQ(logprobs_json(false, {chosen}, "a", by_id, true)["top_logprobs"][0],
            nlohmann::json({{"token_id:10", -2.0}, {"token_id:11", -0.5}, {"token_id:12", -1.0}}));
}

// vLLM's return_tokens_as_token_ids: each token and alternative named by its id, in both
// forms; the text offsets still come from the tokens' texts.
TEST(OpenAiResponses, TokensAsIdsNameEachTokenByItsId) {
  TextCursor chat_cursor;
  const auto chat = logprobs_json(true, three_tokens(), " Hi\xc3", chat_cursor, true);
  EXPECT_EQ(chat["content"][0]["token"], "token_id:15043");
  EXPECT_EQ(chat["content"][1]["token"], "token_id:234");
  EXPECT_EQ(chat["content"][1]["bytes"],
            nlohmann::json({'t', 'o', 'k', 'e', 'n', '_', 'i', 'd', ':', '2', '3', '4'}));
  EXPECT_EQ(chat["content"][1]["top_logprobs"][1]["token"], "token_id:32000");
  TextCursor cursor;
  const auto legacy = logprobs_json(false, three_tokens(), "Hi\xef\xbf\xbd", cursor, true);
  EXPECT_EQ(legacy["tokens"], nlohmann::json({"token_id:15043", "token_id:234", "token_id:2"}));
  EXPECT_EQ(
      legacy["top_logprobs"][2],
      nlohmann::json({{"token_id:29889", -2.0}, {"token_id:13", -3.0}, {"token_id:2", -0.125}}));
  EXPECT_EQ(legacy["text_offset"], nlohmann::json({0, 2, 3}));
  // Asked for as vLLM takes it, on both endpoints; null and false ask for none.
  EXPECT_TRUE(
      parse_completion_request(R"({"prompt":"x","return_tokens_as_token_ids":true})", defaults())
          .tokens_as_ids);
  EXPECT_FALSE(
      parse_completion_request(R"({"prompt":"x","return_tokens_as_token_ids":null})", defaults())
          .tokens_as_ids);
  EXPECT_TRUE(
      parse_chat_request(
          R"({"messages":[{"role":"user","content":"x"}],"return_tokens_as_token_ids":true})",
          defaults(), 1)
          .tokens_as_ids);
  EXPECT_THROW(
      parse_completion_request(R"({"prompt":"x","return_tokens_as_token_ids":1})", defaults()),
      ApiError);
}

// An answer's text as tool calls: a named function's arguments object; "required"'s list,
// each call's arguments in the order the model wrote them; nothing from a cut answer.
TEST(OpenAiResponses, ToolCallsAreReadFromTheAnswer) {
  CompletionRequest named;
  named.tool_use = ToolUse::kNamed;
  named.tool_name = "get_weather";
  const nlohmann::json one = tool_calls_of(named, R"( {"city":"Oslo","days":2})");
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0]["type"], "function");
  EXPECT_EQ(one[0]["function"]["name"], "get_weather");
  EXPECT_EQ(one[0]["function"]["arguments"], R"({"city":"Oslo","days":2})");
  const std::string id = one[0]["id"];
  EXPECT_EQ(id.rfind("call_", 0), 0u);
  EXPECT_EQ(id.size(), 29u);
  EXPECT_TRUE(tool_calls_of(named, R"({"city":"Os)").is_null());

  CompletionRequest required;
  required.tool_use = ToolUse::kRequired;
  const nlohmann::json two = tool_calls_of(
      required,
      R"({"tool_calls":[{"name":"get_weather","parameters":{"days":2,"city":"Oslo"}},{"name":"search","parameters":{}}]})");
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0]["function"]["arguments"], R"({"days":2,"city":"Oslo"})");
  EXPECT_EQ(two[1]["function"]["name"], "search");
  EXPECT_EQ(two[1]["function"]["arguments"], "{}");
  EXPECT_NE(two[0]["id"], two[1]["id"]);
  EXPECT_TRUE(tool_calls_of(required, R"({"tool_calls":[{"name":"search")").is_null());
  // A key written twice (the schema keeps it out of an answer): the value the parser keeps.
  const nlohmann::json twice =
      tool_calls_of(required, R"({"tool_calls":[{"name":"a","parameters":{},"parameters":1}]})");
  ASSERT_EQ(twice.size(), 1u);
  EXPECT_EQ(twice[0]["function"]["arguments"], "1");
  EXPECT_TRUE(tool_calls_of(CompletionRequest{}, "{}").is_null());

  // In a whole answer: no content, the calls, finish "tool_calls"; in a chunk, the delta.
  const nlohmann::json body =
      completion_body(true, "chatcmpl-1", 1, "m", {{"{}", "eos", nullptr, one}}, Usage{3, 4});
  const auto& choice = body["choices"][0];
  EXPECT_TRUE(choice["message"]["content"].is_null());
  EXPECT_EQ(choice["message"]["tool_calls"], one);
  EXPECT_EQ(choice["finish_reason"], "tool_calls");
  const nlohmann::json chunk =
      chunk_body(true, "chatcmpl-1", 1, "m", "", false, "", nullptr, 0, one);
  EXPECT_EQ(chunk["choices"][0]["delta"]["tool_calls"], one);
  EXPECT_FALSE(chunk["choices"][0]["delta"].contains("content"));
  EXPECT_EQ(finish_reason("tool_calls"), "tool_calls");
}

// A "required" answer read as it grows: each call's id and name once the name is whole, then
// its parameters as written, whatever pieces the text comes in; the deltas add up to the
// whole answer's calls.
TEST(OpenAiResponses, RequiredToolCallsStreamAsTheyAreWritten) {
  const std::string text =
      " { \"tool_calls\" : [ {\"name\": \"get_weather\", \"parameters\" : { \"city\": \"Os}\\\"lo, "
      "]\","
      "\n  \"days\": [1, {\"a\": null}] } } ,{ \"name\":\"se\\u0061rch\",\"parameters\":{}},"
      "{\"name\":\"count\",\"parameters\": 12 } ] }";
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"get_weather", R"({ "city": "Os}\"lo, ]",)"
                      "\n  "
                      R"("days": [1, {"a": null}] })"},
      {"search", "{}"},
      {"count", "12"}};
  CompletionRequest required;
  required.tool_use = ToolUse::kRequired;
  const nlohmann::json whole = tool_calls_of(required, text);
  ASSERT_EQ(whole.size(), expected.size()) << whole.dump();
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(whole[i]["function"]["name"], expected[i].first);
    EXPECT_EQ(whole[i]["function"]["arguments"], expected[i].second);
  }
  // Every piece size, and every single cut.
  std::vector<std::vector<size_t>> cuttings;
  for (size_t size = 1; size <= text.size(); ++size) {
    std::vector<size_t> cuts;
    for (size_t at = size; at < text.size(); at += size) cuts.push_back(at);
    cuttings.push_back(cuts);
  }
  for (size_t at = 1; at < text.size(); ++at) cuttings.push_back({at});
  for (const auto& cuts : cuttings) {
    ToolCallReader reader;
    std::vector<std::string> ids(expected.size()), names(expected.size()),
        arguments(expected.size());
    size_t from = 0;
    std::vector<size_t> ends = cuts;
    ends.push_back(text.size());
    for (const size_t to : ends) {
      for (const auto& delta : reader.take(std::string_view(text).substr(from, to - from))) {
        const size_t i = delta["index"];
        ASSERT_LT(i, expected.size()) << delta.dump();
        if (delta.contains("id")) {
          EXPECT_TRUE(ids[i].empty()) << "a second id for call " << i;
          EXPECT_EQ(delta["type"], "function");
          ids[i] = delta["id"];
          names[i] = delta["function"]["name"];
        } else {
          EXPECT_FALSE(ids[i].empty()) << "arguments of call " << i << " before its id";
          EXPECT_FALSE(delta["function"].contains("name"));
        }
        arguments[i] += delta["function"]["arguments"].get<std::string>();
      }
      from = to;
    }
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(ids[i].rfind("call_", 0), 0u);
      EXPECT_EQ(names[i], expected[i].first);
      ASSERT_EQ(arguments[i], expected[i].second) << "pieces of " << (cuts.empty() ? 0 : cuts[0]);
      EXPECT_EQ(reader.calls()[i].arguments, expected[i].second);
      EXPECT_EQ(reader.calls()[i].id, ids[i]);
    }
  }
  // Nothing until a name is whole; a call cut in its parameters has what came.
  ToolCallReader cut;
  EXPECT_TRUE(cut.take(R"({"tool_calls":[{"name":"get_wea)").empty());
  const nlohmann::json head = cut.take(R"(ther","parameters":{"ci)");
  ASSERT_EQ(head.size(), 1u) << head.dump();
  EXPECT_EQ(head[0]["function"]["name"], "get_weather");
  EXPECT_EQ(head[0]["function"]["arguments"], R"({"ci)");
  // Whitespace between a call's values is not arguments; a list under another key is no call.
  EXPECT_TRUE(cut.take("").empty());
  ToolCallReader other;
  EXPECT_TRUE(other.take(R"({"calls":[{"name":"x","parameters":{}}]})").empty());
  EXPECT_TRUE(other.calls().empty());
}

TEST(OpenAiResponses, SseFramesOneJsonEventPerDataLineAndEndsWithDone) {
  EXPECT_EQ(sse_event({{"a", "line\nbreak"}}), "data: {\"a\":\"line\\nbreak\"}\n\n");
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
}

TEST(OpenAiResponses, ErrorsUseTheOpenAiEnvelope) {
  const auto body = error_body(429, "overloaded", "", "");
  EXPECT_EQ(body["error"]["message"], "overloaded");
  EXPECT_EQ(body["error"]["type"], "rate_limit_error");
  EXPECT_TRUE(body["error"]["param"].is_null());
  EXPECT_TRUE(body["error"]["code"].is_null());
  EXPECT_EQ(error_body(400, "x", "messages[0].role")["error"]["param"], "messages[0].role");
  EXPECT_EQ(error_body(401, "x")["error"]["type"], "authentication_error");
}

// The coordinator gives each failure its kind (tests/pipeline checks which failure gets
// which); the server maps kinds, never words of the message, to statuses.
TEST(OpenAiErrors, TheCoordinatorsErrorKindsMapToTheirStatus) {
  EXPECT_EQ(HttpServer::status_for(ErrorKind::kBadRequest), 400);
  EXPECT_EQ(HttpServer::status_for(ErrorKind::kOverloaded), 429);
  EXPECT_EQ(HttpServer::status_for(ErrorKind::kUnavailable), 503);
  EXPECT_EQ(HttpServer::status_for(ErrorKind::kInternal), 500);
  EXPECT_EQ(HttpServer::status_for(ErrorKind::kNone), 500);
  EXPECT_STREQ(error_kind_name(ErrorKind::kBadRequest), "bad_request");
  EXPECT_STREQ(error_kind_name(ErrorKind::kOverloaded), "overloaded");
}

TEST(OpenAiImages, DecodesBase64StrictlyWithOrWithoutPadding) {
  EXPECT_EQ(decode_base64("aGVsbG8=", "p"), "hello");
  EXPECT_EQ(decode_base64("aGVsbG8", "p"), "hello");
  EXPECT_EQ(decode_base64("", "p"), "");
  try {
    decode_base64("aGV$bG8=", "messages[0].content[1]");
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "messages[0].content[1]");
    EXPECT_NE(std::string(e.what()).find("byte 3"), std::string::npos) << e.what();
  }
  EXPECT_THROW(decode_base64("a", "p"), ApiError);
}

TEST(OpenAiImages, DataUrisMustBeImagesInBase64) {
  ServerSection server;
  EXPECT_THROW(fetch_image("data:text/plain;base64,aGk=", "p", server), ApiError);
  EXPECT_THROW(fetch_image("data:image/png,rawbytes", "p", server), ApiError);
  // Valid base64 of bytes that are no image: refused here, before the vision stage.
  try {
    fetch_image("data:image/png;base64,aGVsbG8=", "p", server);
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_NE(std::string(e.what()).find("not a JPEG, PNG, GIF or BMP"), std::string::npos);
  }
  EXPECT_EQ(fetch_image("data:image/png;base64,iVBORw0KGgo=", "p", server), "\x89PNG\r\n\x1A\n");
}

TEST(OpenAiImages, SizesComeFromTheHeadersOfEachFormat) {
  auto file = [](const char* name) {
    std::ifstream in(std::string(LLAVA_PIPE_SOURCE_DIR "/tests/data/images/") + name,
                     std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  EXPECT_EQ(image_size(file("img00_64x48_RGB.png")), std::make_pair(uint64_t{64}, uint64_t{48}));
  EXPECT_EQ(image_size(file("img02_240x320_RGB.jpg")),
            std::make_pair(uint64_t{240}, uint64_t{320}));
  EXPECT_EQ(image_size(std::string("GIF89a\x10\x00\x20\x00", 10)),
            std::make_pair(uint64_t{16}, uint64_t{32}));
  EXPECT_EQ(image_size("not an image"), std::make_pair(uint64_t{0}, uint64_t{0}));
}

TEST(OpenAiImages, AnImageOverTheConfiguredPixelsIsRefusedWithItsSize) {
  ServerSection server;
  server.max_image_pixels = 1000;
  const std::string tiny_gif = "data:image/gif;base64,R0lGODlhQABAAA==";  // a 64x64 GIF header
  try {
    fetch_image(tiny_gif, "messages[0].content[0]", server);
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_NE(std::string(e.what()).find("64x64, over server.max_image_pixels (1000)"),
              std::string::npos)
        << e.what();
  }
}

TEST(OpenAiImages, FileAndHttpUrlsAreOffUnlessTheConfigAllowsThem) {
  ServerSection server;
  try {
    fetch_image("file:///etc/passwd", "p", server);
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_NE(std::string(e.what()).find("server.image_root"), std::string::npos);
  }
  try {
    fetch_image("http://127.0.0.1:1/x.png", "p", server);
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_NE(std::string(e.what()).find("server.allow_remote_images"), std::string::npos);
  }
  EXPECT_THROW(fetch_image("ftp://host/x.png", "p", server), ApiError);
}

#if LLAVA_PIPE_HTTP && LLAVA_PIPE_CURL
// http(s) image URLs against a real server on 127.0.0.1: refused while private addresses are
// off; then the bytes arrive whole, a redirect is followed, and a file over the cap, a 404, a
// server slower than the timeout and a body that is no image are each refused with a
// message that names what went wrong.
TEST(OpenAiImages, HttpUrlsAreFetchedFromALocalServerWithinTheirLimits) {
  std::ifstream in(LLAVA_PIPE_SOURCE_DIR "/tests/data/images/img01_320x240_RGB.jpg", std::ios::binary);
  const std::string jpeg((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(jpeg.size(), 1000u);
  httplib::Server server;
  server.Get("/cat.jpg", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(jpeg, "image/jpeg");
  });
  server.Get("/moved", [](const httplib::Request&, httplib::Response& res) {
    res.set_redirect("/cat.jpg");
  });
  server.Get("/big.jpg", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(jpeg + std::string(4096, '\0'), "image/jpeg");
  });
  server.Get("/page.html", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("<html>not an image</html>", "text/html");
  });
  // Answers only after the client has given up (the client's timeout is what is tested).
  std::mutex mutex;
  std::condition_variable released;
  bool release = false;
  server.Get("/slow.jpg", [&](const httplib::Request&, httplib::Response& res) {
    std::unique_lock<std::mutex> lock(mutex);
    released.wait_for(lock, std::chrono::seconds(10), [&] { return release; });
    res.set_content(jpeg, "image/jpeg");
  });
  const int port = server.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  std::thread thread([&] { server.listen_after_bind(); });
  // bind_to_any_port has the socket listening: connections wait in its backlog until the
  // thread accepts them.
  const std::string base = "http://127.0.0.1:" + std::to_string(port);

  ServerSection config;
  config.allow_remote_images = true;
  config.remote_image_timeout_ms = 300;
  config.max_image_bytes = jpeg.size() + 100;
  // 127.0.0.1 is the server's own machine: refused until private addresses are allowed,
  // before a connection is made.
  try {
    fetch_image(base + "/cat.jpg", "messages[0].content[1]", config);
    ADD_FAILURE() << "an image was fetched from 127.0.0.1 with private addresses off";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(std::string(e.what()), "messages[0].content[1]: " + base +
                                         "/cat.jpg leads to 127.0.0.1, not a public address "
                                         "(server.allow_private_image_addresses allows it)");
  }
  // The address checked is the one resolved, not the URL's text.
  try {
    fetch_image("http://localhost:" + std::to_string(port) + "/cat.jpg", "p", config);
    ADD_FAILURE() << "an image was fetched from localhost with private addresses off";
  } catch (const ApiError& e) {
    EXPECT_NE(std::string(e.what()).find("/cat.jpg leads to "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(", not a public address"), std::string::npos) << e.what();
  }
  config.allow_private_image_addresses = true;
  EXPECT_EQ(fetch_image(base + "/cat.jpg", "p", config), jpeg);
  EXPECT_EQ(fetch_image(base + "/moved", "p", config), jpeg);
  auto refusal = [&](const std::string& path) {
    try {
      fetch_image(base + path, "messages[0].content[1]", config);
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400) << path;
      EXPECT_EQ(std::string(e.what()).rfind("messages[0].content[1]: ", 0), 0u) << e.what();
      return std::string(e.what());
    }
    ADD_FAILURE() << path << " was accepted";
    return std::string();
  };
  EXPECT_NE(refusal("/big.jpg").find("over server.max_image_bytes"), std::string::npos);
  EXPECT_NE(refusal("/missing.jpg").find("404"), std::string::npos);
  EXPECT_NE(refusal("/page.html").find("not a JPEG, PNG, GIF or BMP image"), std::string::npos);
  const std::string slow = refusal("/slow.jpg");
  EXPECT_NE(slow.find("cannot fetch"), std::string::npos) << slow;
  EXPECT_NE(slow.find("imed out"), std::string::npos) << slow;  // "Timed out" / "timed out"
  {
    std::lock_guard<std::mutex> lock(mutex);
    release = true;
  }
  released.notify_all();
  server.stop();
  thread.join();
}

// The environment's proxy variables for one test: all unset but `name`, then put back.
class ProxyEnvironment {
 public:
  ProxyEnvironment(const char* name, const std::string& value) {
    for (const char* name : {"http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                             "no_proxy", "NO_PROXY"}) {
      const char* old = std::getenv(name);
      saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
      unsetenv(name);
    }
    setenv(name, value.c_str(), 1);
  }
  ~ProxyEnvironment() {
    for (const auto& [name, value] : saved_) {
      if (value) {
        setenv(name.c_str(), value->c_str(), 1);
      } else {
        unsetenv(name.c_str());
      }
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

// Through a forward proxy (the environment's http_proxy; here a server on 127.0.0.1 that
// answers for any URL and records what it is asked): the proxy's own private address is
// allowed, as the operator's, and each URL's host, the client's and every redirect's, is
// resolved and checked before the proxy is asked for it. 93.184.216.34 stands for a public
// host: only the proxy is ever connected to, so no network is needed.
TEST(OpenAiImages, ThroughAProxyEveryUrlIsCheckedBeforeTheProxyIsAskedForIt) {
  std::ifstream in(LLAVA_PIPE_SOURCE_DIR "/tests/data/images/img01_320x240_RGB.jpg",
                   std::ios::binary);
  const std::string jpeg((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(jpeg.size(), 1000u);
  const std::string site = "http://93.184.216.34";
  httplib::Server proxy;
  std::mutex mutex;
  std::vector<std::string> asked;
  proxy.Get(R"(.*)", [&](const httplib::Request& req, httplib::Response& res) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      asked.push_back(req.target);
    }
    if (req.target == site + "/cat.jpg") {
      res.set_content(jpeg, "image/jpeg");
    } else if (req.target == site + "/to-public") {
      res.set_redirect(site + "/cat.jpg");
    } else if (req.target == site + "/to-private") {
      res.set_redirect("http://10.0.0.1/secret.jpg");
    } else if (req.target == site + "/to-metadata-by-name") {
      res.set_redirect("http://localhost/latest/meta-data/");
    } else if (req.target == site + "/loop") {
      res.set_redirect(site + "/loop");
    } else {
      res.status = 404;
    }
  });
  const int port = proxy.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  std::thread thread([&] { proxy.listen_after_bind(); });
  const ProxyEnvironment environment("http_proxy", "127.0.0.1:" + std::to_string(port));

  ServerSection config;
  config.allow_remote_images = true;
  config.max_image_bytes = jpeg.size() + 100;
  auto fetched = [&](const std::string& url) {
    try {
      return fetch_image(url, "p", config);
    } catch (const std::exception& e) {
      ADD_FAILURE() << url << ": " << e.what();
      return std::string();
    }
  };
  EXPECT_EQ(fetched(site + "/cat.jpg"), jpeg);
  EXPECT_EQ(fetched(site + "/to-public"), jpeg);
  auto refusal = [&](const std::string& url) {
    try {
      fetch_image(url, "messages[0].content[1]", config);
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400) << url;
      return std::string(e.what());
    }
    ADD_FAILURE() << url << " was accepted";
    return std::string();
  };
  const std::string not_public =
      ", not a public address (server.allow_private_image_addresses allows it)";
  EXPECT_EQ(refusal(site + "/to-private"),
            "messages[0].content[1]: " + site + "/to-private leads to 10.0.0.1" + not_public);
  EXPECT_EQ(refusal("http://169.254.169.254/latest/meta-data/"),
            "messages[0].content[1]: http://169.254.169.254/latest/meta-data/ leads to "
            "169.254.169.254" +
                not_public);
  EXPECT_EQ(refusal("http://[::1]:8080/x.jpg"),
            "messages[0].content[1]: http://[::1]:8080/x.jpg leads to ::1" + not_public);
  // A name is resolved here: localhost is the server's own machine.
  const std::string by_name = refusal(site + "/to-metadata-by-name");
  EXPECT_NE(by_name.find("/to-metadata-by-name leads to "), std::string::npos) << by_name;
  EXPECT_NE(by_name.find(not_public), std::string::npos) << by_name;
  // The proxy's port is not a way to the proxy's machine either.
  const std::string direct = "http://127.0.0.1:" + std::to_string(port) + "/cat.jpg";
  EXPECT_EQ(refusal(direct),
            "messages[0].content[1]: " + direct + " leads to 127.0.0.1" + not_public);
  const std::string invalid = refusal("http://no-such-host.invalid/x.jpg");
  EXPECT_NE(invalid.find("cannot fetch http://no-such-host.invalid/x.jpg (its host "
                         "'no-such-host.invalid' does not resolve here"),
            std::string::npos)
      << invalid;
  EXPECT_NE(refusal(site + "/loop").find("(more than 5 redirects)"), std::string::npos);
  {
    std::lock_guard<std::mutex> lock(mutex);
    // No private URL reached the proxy: it was asked for the public ones only.
    const std::vector<std::string> expected = {site + "/cat.jpg",
                                               site + "/to-public",
                                               site + "/cat.jpg",
                                               site + "/to-private",
                                               site + "/to-metadata-by-name",
                                               site + "/loop",
                                               site + "/loop",
                                               site + "/loop",
                                               site + "/loop",
                                               site + "/loop",
                                               site + "/loop"};
    EXPECT_EQ(asked, expected);
    asked.clear();
  }
  // With private addresses allowed the proxy is asked for anything (its answer here: 404).
  config.allow_private_image_addresses = true;
  EXPECT_NE(refusal("http://10.0.0.1/secret.jpg").find("404"), std::string::npos);
  {
    std::lock_guard<std::mutex> lock(mutex);
    EXPECT_EQ(asked, std::vector<std::string>{"http://10.0.0.1/secret.jpg"});
  }
  proxy.stop();
  thread.join();
}
#endif

// The addresses a remote image may not come from by default, and some it may.
TEST(OpenAiImages, PrivateLoopbackLinkLocalAndMappedAddressesAreNotPublic) {
  for (const char* address : {"127.0.0.1",
                              "127.255.0.9",
                              "10.1.2.3",
                              "172.16.0.1",
                              "172.31.255.255",
                              "192.168.1.1",
                              "169.254.169.254",
                              "100.64.0.1",
                              "100.127.255.255",
                              "0.0.0.0",
                              "0.1.2.3",
                              "224.0.0.1",
                              "239.255.255.250",
                              "240.0.0.1",
                              "255.255.255.255",
                              "192.0.0.170",
                              "198.18.0.1",
                              "198.19.255.255",
                              "::",
                              "::1",
                              "::127.0.0.1",
                              "::ffff:127.0.0.1",
                              "::ffff:10.0.0.1",
                              "::ffff:169.254.169.254",
                              "64:ff9b::10.0.0.1",
                              "fe80::1",
                              "febf::1",
                              "fec0::1",
                              "fc00::1",
                              "fd12:3456::1",
                              "ff02::1",
                              "not an address",
                              "",
                              "localhost"}) {
    EXPECT_TRUE(is_private_address(address)) << address;
  }
  for (const char* address :
       {"8.8.8.8", "1.1.1.1", "172.15.255.255", "172.32.0.1", "100.63.255.255", "100.128.0.1",
        "169.253.0.1", "192.169.0.1", "198.17.0.1", "198.20.0.1", "223.255.255.255",
        "2001:4860:4860::8888", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "fbff::1",
        "fe7f::1"}) {
    EXPECT_FALSE(is_private_address(address)) << address;
  }
}

TEST(OpenAiImages, FileUrlsOutsideTheImageRootAreRefused) {
  ServerSection server;
  server.image_root = LLAVA_PIPE_SOURCE_DIR "/tests/data/images";
  const std::string inside =
      "file://" LLAVA_PIPE_SOURCE_DIR "/tests/data/images/img00_64x48_RGB.png";
  EXPECT_EQ(fetch_image(inside, "p", server).substr(1, 3), "PNG");
  EXPECT_THROW(
      fetch_image("file://" LLAVA_PIPE_SOURCE_DIR "/tests/data/images/../tiny-llava/config.json",
                  "p", server),
      ApiError);
}

}  // namespace
}  // namespace llava
