#include "stages/language/sampler.h"

#include <gtest/gtest.h>

#include <map>

namespace {

using llava::Sampler;
using llava::SamplingParams;

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 0.5f, 2.9f};

TEST(Sampler, GreedyPicksTheLargest) {
  Sampler s(SamplingParams{});
  EXPECT_EQ(s.next(kLogits, {}), 1);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  Sampler s(p);
  EXPECT_EQ(s.next(kLogits, {1}), 4);  // 3.0 -> 1.5, so 2.9 wins
  EXPECT_EQ(s.next({-1.0f, -1.5f}, {0}), 1);  // -1.0 -> -2.0
}

TEST(Sampler, SameSeedSameTokens) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 42;
  Sampler a(p), b(p);
  std::vector<int32_t> ta, tb;
  for (int i = 0; i < 50; ++i) ta.push_back(a.next(kLogits, {})), tb.push_back(b.next(kLogits, {}));
  EXPECT_EQ(ta, tb);
  p.seed = 43;
  Sampler c(p);
  std::vector<int32_t> tc;
  for (int i = 0; i < 50; ++i) tc.push_back(c.next(kLogits, {}));
  EXPECT_NE(ta, tc);
}

TEST(Sampler, TopKOneIsGreedy) {
  SamplingParams p;
  p.temperature = 5.0f;
  p.top_k = 1;
  Sampler s(p);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.next(kLogits, {}), 1);
}

TEST(Sampler, TopPKeepsOnlyTheNucleus) {
  // probabilities 0.5, 0.3, 0.2: top_p 0.7 keeps the first two only
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.7f;
  p.seed = 1;
  Sampler s(p);
  std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  std::map<int, int> counts;
  for (int i = 0; i < 2000; ++i) counts[s.next(logits, {})]++;
  EXPECT_EQ(counts[2], 0);
  // 0.5 / 0.8 = 62.5% of draws for token 0
  EXPECT_NEAR(counts[0] / 2000.0, 0.625, 0.04);
}

TEST(Sampler, TemperatureFollowsTheSoftmax) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 7;
  Sampler s(p);
  std::vector<float> logits = {0.0f, std::log(3.0f)};  // 25% / 75%
  int ones = 0;
  for (int i = 0; i < 4000; ++i) ones += s.next(logits, {}) == 1;
  EXPECT_NEAR(ones / 4000.0, 0.75, 0.03);
}

TEST(Sampler, StopTokens) {
  SamplingParams p;
  p.stop_token_ids = {2, 7};
  Sampler s(p);
  EXPECT_TRUE(s.is_stop(7));
  EXPECT_FALSE(s.is_stop(3));
}

}  // namespace
