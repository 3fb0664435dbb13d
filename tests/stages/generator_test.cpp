#include "stages/language/generator.h"

#include <gtest/gtest.h>

#include "common/errors.h"
#include "tiny_model.h"

namespace {

using llava::Finish;
using llava::Generator;
using llava::SamplingParams;
using llava::TokenEvent;
using llava::test::data_path;
using llava::test::ids_of;
using llava::test::load_tensors;
using llava::test::TinyModel;

struct Prompt {
  std::vector<int32_t> ids;
  std::vector<at::Tensor> images;
  std::vector<int32_t> greedy;  // transformers' 32 greedy tokens
};

Prompt prompt(const TinyModel& model, int c) {
  auto ref = load_tensors("reference/a_case" + std::to_string(c) + ".safetensors");
  Prompt p{ids_of(ref["input_ids"]), {}, ids_of(ref["greedy"])};
  if (ref.count("pixel_values")) {
    at::Tensor features = model.image_features(ref["pixel_values"]);
    for (int64_t i = 0; i < features.size(0); ++i) p.images.push_back(features[i]);
  }
  return p;
}

// Runs one request alone to its end.
std::vector<TokenEvent> run_alone(Generator& g, uint64_t id, const Prompt& p, const SamplingParams& s) {
  std::vector<TokenEvent> events = {g.start(id, p.ids, p.images, s)};
  while (events.back().finish == Finish::kNone) events.push_back(g.step().at(0));
  return events;
}

std::vector<int32_t> tokens_of(const std::vector<TokenEvent>& events) {
  std::vector<int32_t> out;
  for (const auto& e : events) out.push_back(e.token);
  return out;
}

TEST(Generator, GreedyMatchesTransformersAndStopsAtMaxNewTokens) {
  TinyModel model(data_path("tiny-llava"));
  Generator g(model.decoder, 2, 256);
  SamplingParams s;
  s.max_new_tokens = 32;
  auto p = prompt(model, 0);
  auto events = run_alone(g, 1, p, s);
  EXPECT_EQ(tokens_of(events), p.greedy);
  EXPECT_EQ(events.back().finish, Finish::kLength);
  EXPECT_EQ(g.active(), 0u);
  EXPECT_TRUE(g.has_capacity());
}

TEST(Generator, StopsOnAStopToken) {
  TinyModel model(data_path("tiny-llava"));
  Generator g(model.decoder, 1, 256);
  auto p = prompt(model, 0);
  // The 4th greedy token, at its first occurrence, acts as EOS.
  const int32_t stop = p.greedy[3];
  size_t first = std::find(p.greedy.begin(), p.greedy.end(), stop) - p.greedy.begin();
  SamplingParams s;
  s.max_new_tokens = 32;
  s.stop_token_ids = {stop};
  auto events = run_alone(g, 1, p, s);
  ASSERT_EQ(events.size(), first + 1);
  EXPECT_EQ(events.back().token, stop);
  EXPECT_EQ(events.back().finish, Finish::kStop);
}

TEST(Generator, SequencesJoinAndLeaveBetweenSteps) {
  TinyModel model(data_path("tiny-llava"));
  SamplingParams s;
  s.max_new_tokens = 12;
  std::vector<Prompt> prompts = {prompt(model, 0), prompt(model, 2), prompt(model, 3)};
  Generator g(model.decoder, 3, 256);
  std::map<uint64_t, std::vector<int32_t>> got;
  auto take = [&](const TokenEvent& e) { got[e.id].push_back(e.token); };
  take(g.start(10, prompts[0].ids, prompts[0].images, s));
  for (auto& e : g.step()) take(e);
  take(g.start(11, prompts[1].ids, prompts[1].images, s));  // joins mid-way
  for (int i = 0; i < 4; ++i) for (auto& e : g.step()) take(e);
  take(g.start(12, prompts[2].ids, prompts[2].images, s));
  while (g.active() > 0) for (auto& e : g.step()) take(e);
  for (size_t i = 0; i < 3; ++i) {
    std::vector<int32_t> expected(prompts[i].greedy.begin(), prompts[i].greedy.begin() + 12);
    EXPECT_EQ(got[10 + i], expected) << "request " << 10 + i;
  }
}

TEST(Generator, SameSeedSameSampledTokens) {
  TinyModel model(data_path("tiny-llava"));
  Generator g(model.decoder, 1, 256);
  auto p = prompt(model, 1);
  SamplingParams s;
  s.max_new_tokens = 16;
  s.temperature = 1.0f;
  s.top_p = 0.9f;
  s.seed = 5;
  auto a = tokens_of(run_alone(g, 1, p, s)), b = tokens_of(run_alone(g, 2, p, s));
  s.seed = 6;
  auto c = tokens_of(run_alone(g, 3, p, s));
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(Generator, FullContextEndsTheSequence) {
  TinyModel model(data_path("tiny-llava"));
  auto p = prompt(model, 3);  // text only
  Generator g(model.decoder, 1, static_cast<int64_t>(p.ids.size()) + 3);
  SamplingParams s;
  s.max_new_tokens = 100;
  auto events = run_alone(g, 1, p, s);
  EXPECT_EQ(events.size(), 4u);  // 3 fit in the cache; the 4th is chosen and not stored
  EXPECT_EQ(events.back().finish, Finish::kContext);
}

TEST(Generator, BadRequestsFailAloneWithoutTakingASlot) {
  TinyModel model(data_path("tiny-llava"));
  Generator g(model.decoder, 1, 64);
  SamplingParams s;
  std::vector<int32_t> long_prompt(100, 5);
  EXPECT_THROW(g.start(1, long_prompt, {}, s), llava::RequestError);
  EXPECT_THROW(g.start(2, {1, 800, 5}, {}, s), llava::RequestError);  // image token, no image
  EXPECT_TRUE(g.has_capacity());
  auto p = prompt(model, 3);
  EXPECT_EQ(g.start(3, p.ids, {}, s).token, p.greedy[0]);
  EXPECT_TRUE(g.cancel(3));
  EXPECT_TRUE(g.has_capacity());
}

}  // namespace
