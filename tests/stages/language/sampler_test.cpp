#include "stages/language/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
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

// probabilities 0.5, 0.3, 0.15, 0.05 (logits are their logs, at temperature 1)
const std::vector<float> kFour = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};

TEST(Sampler, MinPDropsExactlyTheTokensBelowItsShareOfTheTopProbability) {
  // min_p 0.25: the bar is 0.25 x 0.5 = 0.125, so 0.05 goes and 0.15 stays.
  SamplingParams p;
  p.temperature = 1.0;
  p.min_p = 0.25;
  const auto d = Sampler(p).distribution(kFour, {});
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d[0].first, 0);
  EXPECT_EQ(d[1].first, 1);
  EXPECT_EQ(d[2].first, 2);
  EXPECT_NEAR(d[0].second, 0.5 / 0.95, 1e-6);
  EXPECT_NEAR(d[1].second, 0.3 / 0.95, 1e-6);
  EXPECT_NEAR(d[2].second, 0.15 / 0.95, 1e-6);
  // min_p 0.5: the bar is 0.25, so 0.15 goes too.
  p.min_p = 0.5;
  const auto two = Sampler(p).distribution(kFour, {});
  ASSERT_EQ(two.size(), 2u);
  EXPECT_NEAR(two[0].second, 0.5 / 0.8, 1e-6);
  EXPECT_NEAR(two[1].second, 0.3 / 0.8, 1e-6);
  // Off (0): every token stays, with its own probability.
  p.min_p = 0.0;
  const auto all = Sampler(p).distribution(kFour, {});
  ASSERT_EQ(all.size(), 4u);
  EXPECT_NEAR(all[3].second, 0.05, 1e-6);
}

TEST(Sampler, MinPComesAfterTemperature) {
  // Temperature 2 flattens 0.5 / 0.05 (10x) to sqrt(10) ~ 3.16x: the last token is now
  // ~0.316 of the top one, above min_p 0.25, so it stays.
  SamplingParams p;
  p.temperature = 2.0;
  p.min_p = 0.25;
  const auto d = Sampler(p).distribution(kFour, {});
  ASSERT_EQ(d.size(), 4u);
  EXPECT_NEAR(d[3].second / d[0].second, std::sqrt(0.1), 1e-6);
}

TEST(Sampler, MinPNeverDrawsADroppedToken) {
  SamplingParams p;
  p.temperature = 1.0;
  p.min_p = 0.25;
  p.seed = 3;
  Sampler s(p);
  std::map<int, int> counts;
  for (int i = 0; i < 2000; ++i) counts[s.next(kFour, {})]++;
  EXPECT_EQ(counts[3], 0);
  EXPECT_NEAR(counts[2] / 2000.0, 0.15 / 0.95, 0.03);
}

TEST(Sampler, TheDistributionOfTopPIsTheNucleusRenormalized) {
  SamplingParams p;
  p.temperature = 1.0;
  p.top_p = 0.7;
  const auto d = Sampler(p).distribution(kFour, {});
  ASSERT_EQ(d.size(), 2u);  // 0.5 + 0.3 reaches 0.7
  EXPECT_NEAR(d[0].second, 0.5 / 0.8, 1e-6);
  EXPECT_NEAR(d[1].second, 0.3 / 0.8, 1e-6);
}

TEST(Sampler, TheGreedyDistributionIsTheLargestAlone) {
  const auto d = Sampler(SamplingParams{}).distribution(kLogits, {});
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].first, 1);
  EXPECT_EQ(d[0].second, 1.0);
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
