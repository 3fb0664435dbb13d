// JSON mode: the recognizer (common/json_schema.h) on the schema of any object, byte by
// byte, the mask it puts on a vocabulary's scores, and a sampler that follows it whatever
// the scores prefer. Schemas of their own: tests/common/json_schema_test.cpp.
#include "stages/language/json_constraint.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "stages/language/sampler.h"

namespace llava {
namespace {

// JSON mode's recognizer.
struct JsonState : SchemaState {
  JsonState() : SchemaState(JsonSchema::any_object().get()) {}
};

bool accepts_whole(const std::string& text) {
  JsonState state;
  return state.feed(text) && state.complete();
}

TEST(JsonState, AcceptsCompactObjectsAndCompletesAtTheirLastByte) {
  for (const std::string text :
       {R"({})", R"({"a":1})", R"( {"k":""})", R"({"a":-0.5E+3,"b":0,"c":12.25e-2,"d":-0})",
        R"({"a":[1,2.5,-3e10,true,false,null,"x\"y\\\/\b\f\n\r\t\u00e9"],"b":{"c":{},"d":[]}})",
        "{\"caf\xc3\xa9\":\"\xe2\x82\xac\"}", R"({"a":[[[]]]})"}) {
    EXPECT_TRUE(accepts_whole(text)) << text;
    JsonState state;
    ASSERT_TRUE(state.feed(text.substr(0, text.size() - 1))) << text;
    EXPECT_FALSE(state.complete()) << text;
  }
}

TEST(JsonState, RefusesWhatIsNotOneCompactObject) {
  for (const std::string text : {R"([])",
                                 R"("a")",
                                 R"(1)",
                                 R"({"a" :1})",
                                 R"({"a": 1})",
                                 R"({ "a":1})",
                                 R"({"a":01})",
                                 R"({"a":1,})",
                                 R"({"a"})",
                                 R"({"a":tru})",
                                 R"({'a':1})",
                                 R"({"a":1}x)",
                                 R"({"a":1}})",
                                 "{\"a\":\"\x01\"}",
                                 "{\"a\":\"line\nbreak\"}",
                                 R"({"a":"\q"})",
                                 R"({"a":"\u12G4"})",
                                 R"({"a":-})",
                                 R"({"a":1.})",
                                 R"({"a":1e})",
                                 R"({"a":.5})",
                                 R"({"a":+1})",
                                 R"({1:2})",
                                 R"({"a":[1 ]})",
                                 R"({"a":[1,]})",
                                 R"({"a":]})",
                                 R"({"a":[}])",
                                 "     {}",
                                 R"({"a":nul})"}) {
    EXPECT_FALSE(accepts_whole(text)) << text;
  }
}

TEST(JsonState, RefusesNestingPastItsDepth) {
  std::string deep = "{\"a\":";
  for (int i = 1; i < JsonState::kMaxDepth; ++i) deep += "[";
  JsonState state;
  ASSERT_TRUE(state.feed(deep));  // kMaxDepth open
  EXPECT_FALSE(state.feed('['));
  std::string whole = deep + std::string(JsonState::kMaxDepth - 1, ']') + "}";
  EXPECT_TRUE(accepts_whole(whole));
}

// A small vocabulary: 0-2 special (no bytes; 2 is </s>), then pieces.
std::shared_ptr<const TokenTable> table() {
  auto t = std::make_shared<TokenTable>();
  for (const char* piece :
       {"", "", "", "{", "}", "\"", "a", ":", "1", " {", "{\"", "x}", "\"a\":1}", "\n", "]"}) {
    t->push_back(piece);
  }
  return t;
}
constexpr int32_t kEos = 2;

std::vector<int32_t> allowed(const JsonConstraint& json, size_t vocab) {
  std::vector<float> scores(vocab, 0.0f);
  json.mask(scores.data(), vocab);
  std::vector<int32_t> out;
  for (size_t id = 0; id < vocab; ++id) {
    if (!std::isinf(scores[id])) out.push_back(static_cast<int32_t>(id));
  }
  return out;
}

TEST(JsonConstraint, AllowsTheTokensThatContinueTheObjectAndTheEndOnlyOnceItIsClosed) {
  JsonConstraint json(table(), {kEos});
  std::vector<int32_t> history = {1, 6, 6};  // a prompt of three; the answer from 3 on
  json.take(history, 3);
  EXPECT_EQ(allowed(json, 15), (std::vector<int32_t>{3, 9, 10, 13}));  // "{", " {", "{\"", "\n"
  history.push_back(9);                                                // " {"
  json.take(history, 3);
  EXPECT_EQ(allowed(json, 15), (std::vector<int32_t>{4, 5, 12}));  // "}", "\"", "\"a\":1}"
  history.push_back(12);
  json.take(history, 3);
  EXPECT_TRUE(json.complete());
  EXPECT_EQ(allowed(json, 15), (std::vector<int32_t>{kEos}));
  // Ids past the table (a model's padded vocabulary) are never allowed.
  JsonConstraint fresh(table(), {kEos});
  fresh.take({}, 0);
  EXPECT_EQ(allowed(fresh, 20), (std::vector<int32_t>{3, 9, 10, 13}));
}

TEST(JsonConstraint, AResumedAnswerIsTakenInFromItsTokensAndAnotherHistoryAfresh) {
  JsonConstraint json(table(), {kEos});
  json.take({7, 3, 5, 6}, 1);  // resumed after "{", "\"", "a": a key's string is open
  // Any string bytes, or the quote that ends the key (not "\"a\":1}": a colon must follow)
  EXPECT_EQ(allowed(json, 15), (std::vector<int32_t>{3, 4, 5, 6, 7, 8, 9, 10, 11, 14}));
  json.take({7, 3}, 1);  // not a continuation: taken afresh
  EXPECT_EQ(allowed(json, 15), (std::vector<int32_t>{4, 5, 12}));
}

TEST(JsonConstraint, WhereNoTokenFitsOnlyTheEndIsLeftAndWithoutOneNothingIsMasked) {
  auto t = std::make_shared<TokenTable>();
  for (const char* piece : {"", "", "", "{", "a"}) t->push_back(piece);  // no '"' nor '}'
  JsonConstraint json(t, {kEos});
  json.take({3}, 0);
  EXPECT_EQ(allowed(json, 5), (std::vector<int32_t>{kEos}));
  JsonConstraint no_end(t, {});
  no_end.take({3}, 0);
  EXPECT_EQ(allowed(no_end, 5), (std::vector<int32_t>{0, 1, 2, 3, 4}));
}

// Scores that prefer what breaks JSON (the end at once, "\n" anywhere) still give a JSON
// object, then the end; sampled and greedy alike.
TEST(JsonConstraint, TheSamplerFollowsItWhateverTheScoresPrefer) {
  for (double temperature : {0.0, 1.0}) {
    SamplingParams params;
    params.temperature = temperature;
    params.seed = 3;
    params.json_object = true;
    params.json_tokens = table();
    params.stop_token_ids = {kEos};
    Sampler sampler(params, 1);
    std::vector<int32_t> history = {1};
    std::mt19937 scores_rng(5);
    std::string text;
    for (int step = 0; step < 400; ++step) {  // "\n" is taken once, at the start
      std::vector<float> scores(15);
      for (auto& s : scores) s = std::uniform_real_distribution<float>(0, 1)(scores_rng);
      scores[kEos] = scores[13] = 9;  // "</s>", "\n"
      const int32_t next = sampler.next(scores, history);
      history.push_back(next);
      if (sampler.is_stop(next)) break;
      text += (*params.json_tokens)[static_cast<size_t>(next)];
    }
    ASSERT_EQ(history.back(), kEos) << "temperature " << temperature << ": " << text;
    EXPECT_TRUE(nlohmann::json::parse(text).is_object()) << text;
  }
}

}  // namespace
}  // namespace llava
