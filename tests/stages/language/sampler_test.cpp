#include "stages/language/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>

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

// vLLM's min_tokens: the stop ids are out of the draw for the answer's first tokens (a
// resumed answer's count its tokens so far), greedy and sampled alike; then they are back.
TEST(Sampler, NoStopIdIsDrawnBeforeMinTokens) {
  for (double temperature : {0.0, 1.0}) {
    SamplingParams p;
    p.temperature = temperature;
    p.seed = 7;
    p.stop_token_ids = {1, 4};  // the two best scores of kLogits
    p.min_tokens = 3;
    const std::vector<int32_t> prompt = {9, 9};
    Sampler s(p, prompt.size());
    std::vector<int32_t> history = prompt;
    for (int i = 0; i < 3; ++i) {
      const int32_t token = s.next(kLogits, history);
      EXPECT_TRUE(token != 1 && token != 4) << "token " << i << " at temperature " << temperature;
      history.push_back(token);
    }
    if (temperature == 0.0) {
      EXPECT_EQ(s.next(kLogits, history), 1);  // the best is back
    }
    Sampler resumed(p, prompt.size());
    EXPECT_EQ(resumed.next(kLogits, {9, 9, 2, 2, 2}) == 1, temperature == 0.0);
  }
  SamplingParams never;
  never.min_tokens = 5;  // no stop ids (ignore_eos): nothing to hold back
  EXPECT_EQ(Sampler(never, 0).next(kLogits, {}), 1);
}

// A worker died after 10 tokens: the resumed task's sampler, given the prompt and those
// tokens, draws the rest as the uninterrupted one did (a seeded answer is the same answer).
TEST(Sampler, AResumedAnswerDrawsTheRestAsTheUninterruptedOne) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 42;
  const std::vector<int32_t> prompt = {1, 2, 3};
  Sampler whole(p, prompt.size());
  std::vector<int32_t> history = prompt;
  for (int i = 0; i < 30; ++i) history.push_back(whole.next(kLogits, history));
  Sampler resumed(p, prompt.size());
  std::vector<int32_t> again(history.begin(), history.begin() + 13);  // the prompt and 10 tokens
  for (int i = 10; i < 30; ++i) again.push_back(resumed.next(kLogits, again));
  EXPECT_EQ(again, history);
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

// What the filters keep, computed the plain way: the whole vocabulary stably sorted, the
// softmax in double, top-k, top-p and min-p cut in turn.
std::vector<std::pair<int32_t, double>> reference_distribution(std::vector<float> logits,
                                                               const SamplingParams& p) {
  for (float& s : logits) s = static_cast<float>(s / p.temperature);
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  size_t keep = p.top_k > 0 ? std::min(order.size(), static_cast<size_t>(p.top_k)) : order.size();
  std::vector<double> w(keep);
  for (size_t i = 0; i < keep; ++i) w[i] = std::exp(double(logits[order[i]]) - logits[order[0]]);
  auto sum = [&] { return std::accumulate(w.begin(), w.begin() + static_cast<long>(keep), 0.0); };
  if (p.top_p < 1.0) {
    double total = sum(), cumulative = 0;
    for (size_t i = 0; i < keep; ++i) {
      if ((cumulative += w[i] / total) >= p.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (p.min_p > 0) {
    size_t cut = 1;
    while (cut < keep && w[cut] >= p.min_p) ++cut;
    keep = cut;
  }
  std::vector<std::pair<int32_t, double>> out;
  const double total = sum();
  for (size_t i = 0; i < keep; ++i) out.emplace_back(order[i], w[i] / total);
  return out;
}

// A model's row: 32,064 scores, a few far ahead, many tied (rounded to 1/8).
std::vector<float> vocabulary_row(uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0.0f, 2.5f);
  std::vector<float> row(32064);
  for (float& s : row) s = std::round(n(g) * 8) / 8;
  for (int i = 0; i < 5; ++i) row[g() % row.size()] = 12.0f + 2.0f * i;
  return row;
}

TEST(Sampler, RanksOnlyAsFarAsItReadsYetKeepsWhatTheWholeSortKeeps) {
  struct Case {
    double temperature, top_p, min_p;
    int top_k;
  };
  // Past the first few hundred, top_p's prefix is found by buckets of scores, not ranked
  // (5.0 / 0.5, 100 / 0.3, and every case on the flat rows).
  const Case cases[] = {{1.0, 1.0, 0.0, 0},     {0.7, 0.9, 0.0, 0},   {1.3, 0.95, 0.0, 40},
                        {2.0, 1.0, 0.0, 5000},  {1.0, 1.0, 0.05, 0},  {5.0, 0.5, 0.0, 0},
                        {1.0, 0.99, 1e-3, 0},   {100.0, 0.3, 0.0, 0}, {0.5, 1.0, 0.0, 1},
                        {3.0, 0.8, 0.0, 20000}, {1.5, 0.95, 1e-2, 0}};
  for (uint32_t seed = 1; seed <= 5; ++seed) {
    std::vector<float> row = vocabulary_row(seed);
    if (seed > 3) {  // flat: nothing far ahead; seed 5 without ties
      std::mt19937 g(seed);
      std::normal_distribution<float> n(0.0f, 1.0f);
      for (float& s : row) s = seed == 4 ? std::round(n(g) * 16) / 16 : n(g);
      // Banned ids, as the generator gives them (the image and pad tokens): never kept.
      for (int32_t id : {7, 32000, 32001}) row[static_cast<size_t>(id)] = -INFINITY;
    }
    for (const Case& k : cases) {
      SamplingParams p;
      p.temperature = k.temperature;
      p.top_p = k.top_p;
      p.min_p = k.min_p;
      p.top_k = k.top_k;
      const auto got = Sampler(p).distribution(row, {});
      const auto want = reference_distribution(row, p);
      ASSERT_EQ(got.size(), want.size()) << "temperature " << k.temperature << " top_p " << k.top_p
                                         << " min_p " << k.min_p << " top_k " << k.top_k;
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(got[i].first, want[i].first) << "rank " << i;
        ASSERT_NEAR(got[i].second, want[i].second, 1e-6 * want[i].second + 1e-12) << "rank " << i;
      }
    }
  }
}

TEST(Sampler, DrawsFollowTheDistributionDeepIntoTheRanking) {
  // Temperature 50 over the row: the best tokens hold little, so most draws land past the
  // first parts the ranking sorts.
  const std::vector<float> row = vocabulary_row(9);
  SamplingParams p;
  p.temperature = 50.0;
  p.seed = 11;
  Sampler s(p);
  const auto d = Sampler(p).distribution(row, {});
  std::map<int32_t, double> probability(d.begin(), d.end());
  const int draws = 500;
  double expected_rank_sum = 0, rank_sum = 0;
  std::map<int32_t, size_t> rank;
  for (size_t i = 0; i < d.size(); ++i) {
    rank[d[i].first] = i;
    expected_rank_sum += static_cast<double>(i) * d[i].second;
  }
  for (int i = 0; i < draws; ++i) rank_sum += static_cast<double>(rank.at(s.next(row, {})));
  // The mean rank of the draws is the distribution's (about 16,000; its spread over 500
  // draws is about 420). A draw this deep sorts the whole row: a few ms.
  EXPECT_NEAR(rank_sum / draws, expected_rank_sum, 2000.0);
  EXPECT_GT(expected_rank_sum, 10000.0);
}

TEST(Sampler, PenaltiesOverAGrowingHistoryAreTheFreshOnes) {
  // Greedy with a penalty: each token is the largest after its history's ids are penalized.
  // One sampler along a growing history, a fresh one at each step, and one given histories
  // that do not grow from the last must all choose alike.
  std::vector<float> row = vocabulary_row(4);
  for (int penalties = 0; penalties < 2; ++penalties) {  // then with presence and frequency too
    SamplingParams p;
    p.repetition_penalty = 1.8;
    p.presence_penalty = penalties ? 0.7 : 0.0;
    p.frequency_penalty = penalties ? 0.4 : 0.0;
    Sampler along(p, 2);
    std::vector<int32_t> history = {7, 7, 12};
    for (int step = 0; step < 300; ++step) {
      const int32_t token = along.next(row, history);
      ASSERT_EQ(token, Sampler(p, 2).next(row, history)) << "step " << step;
      history.push_back(token);
    }
    Sampler jumping(p, 2);
    std::mt19937 g(5);
    for (int step = 0; step < 50; ++step) {
      std::vector<int32_t> other(g() % 400);
      for (auto& id : other) id = static_cast<int32_t>(g() % row.size());
      ASSERT_EQ(jumping.next(row, other), Sampler(p, 2).next(row, other)) << "step " << step;
    }
  }
}

TEST(Sampler, PresenceAndFrequencyPenaltiesWeighOnlyTheAnswersTokens) {
  SamplingParams p;
  p.presence_penalty = 0.2;
  p.frequency_penalty = 0.3;
  // The prompt {1, 1, 1} is not counted: 3.0 stays the best; counted, 3.0 - 0.2 - 0.9 = 1.9
  // would lose to the answer's 4 (2.9 - 0.5 = 2.4).
  EXPECT_EQ(Sampler(p, 3).next(kLogits, {1, 1, 1, 4}), 1);
  EXPECT_EQ(Sampler(p, 0).next(kLogits, {1, 1, 1, 4}), 4);
  // The distribution: each answer token's score less presence + frequency x its count.
  p.temperature = 1.0;
  const std::vector<int32_t> history = {0, 3, 2, 2, 4, 2};  // answer from 2: 2 x3, 4 x1
  const auto d = Sampler(p, 2).distribution(kLogits, history);
  std::vector<double> score = {1.0, 3.0, 2.0 - 0.2 - 0.9, 0.5, 2.9 - 0.2 - 0.3};
  double total = 0;
  for (double s : score) total += std::exp(s);
  ASSERT_EQ(d.size(), 5u);
  for (const auto& [id, probability] : d)
    EXPECT_NEAR(probability, std::exp(score[id]) / total, 1e-6) << id;
  // Negative values favour the answer's tokens.
  p.temperature = 0;
  p.presence_penalty = -1.5;
  p.frequency_penalty = 0;
  EXPECT_EQ(Sampler(p, 1).next(kLogits, {1, 2}), 2);  // 2.0 + 1.5 against 3.0
}

TEST(Sampler, LogitBiasIsAddedToTheScoresFirst) {
  SamplingParams p;
  p.logit_bias = {{0, 2.5f}, {1, -100.0f}, {99, 50.0f}};  // 99: past the vocabulary, left out
  EXPECT_EQ(Sampler(p).next(kLogits, {}), 0);             // 1.0 + 2.5 against 2.9
  p.temperature = 1.0;
  const auto d = Sampler(p).distribution(kLogits, {});
  const std::vector<double> score = {3.5, -97.0, 2.0, 0.5, 2.9};
  double total = 0;
  for (double s : score) total += std::exp(s);
  for (const auto& [id, probability] : d)
    EXPECT_NEAR(probability, std::exp(score[id]) / total, 1e-6) << id;
  // Before the repetition penalty: 3.5 / 2 = 1.75 loses to 2.9.
  p.temperature = 0;
  p.repetition_penalty = 2.0;
  EXPECT_EQ(Sampler(p).next(kLogits, {0}), 4);
}

TEST(Sampler, StopTokens) {
  SamplingParams p;
  p.stop_token_ids = {2, 7};
  Sampler s(p);
  EXPECT_TRUE(s.is_stop(7));
  EXPECT_FALSE(s.is_stop(3));
}

}  // namespace
