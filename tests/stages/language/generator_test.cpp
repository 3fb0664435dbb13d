#include "stages/language/generator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "common/errors.h"
#include "tests/stages/tiny_model.h"

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

// Logprobs are the log-softmax of the model's scores at each token's place (banned ids
// out), before any sampling setting: the first token's against transformers' scores after
// the prompt; each later one, greedy or sampled, in a batch with a row that asks for none,
// against a prefill of the prompt and the tokens before it.
TEST(Generator, LogprobsAreTheLogSoftmaxOfTheModelsScoresAtEachTokensPlace) {
  TinyModel model(data_path("tiny-llava"));
  auto ref = load_tensors("reference/a_case0.safetensors");
  auto p = prompt(model, 0);
  Generator g(model.decoder, 4, 256);
  at::Tensor last = ref["logits"][-1].to(at::kDouble).clone();
  for (int64_t id : g.banned_tokens()) last[id] = -std::numeric_limits<double>::infinity();
  const at::Tensor want = last.log_softmax(-1);
  const auto want_top = want.topk(5);

  SamplingParams greedy;
  greedy.max_new_tokens = 12;
  greedy.logprobs = 5;
  const auto events = run_alone(g, 1, p, greedy);
  ASSERT_TRUE(events[0].logprobs);
  const auto& first = *events[0].logprobs;
  EXPECT_NEAR(first.logprob, want[events[0].token].item<double>(), 1e-4);
  ASSERT_EQ(first.top_ids.size(), 5u);
  for (int64_t j = 0; j < 5; ++j) {
    EXPECT_EQ(first.top_ids[j], std::get<1>(want_top)[j].item<int64_t>()) << j;
    EXPECT_NEAR(first.top_logprobs[j], std::get<0>(want_top)[j].item<double>(), 1e-4) << j;
  }
  for (const auto& e : events) {  // greedy: the token is the best, its logprob the best's
    ASSERT_TRUE(e.logprobs);
    EXPECT_EQ(e.logprobs->top_ids[0], e.token);
    EXPECT_EQ(e.logprobs->logprob, e.logprobs->top_logprobs[0]);
    EXPECT_LE(e.logprobs->logprob, 0.0f);
    EXPECT_TRUE(std::is_sorted(e.logprobs->top_logprobs.rbegin(), e.logprobs->top_logprobs.rend()));
  }

  SamplingParams sampled = greedy;
  sampled.temperature = 1.5;
  sampled.top_k = 20;  // draws among the 20 most likely, whose logprobs the reference has
  sampled.seed = 7;
  sampled.logprobs = 20;
  SamplingParams plain;
  plain.max_new_tokens = 12;
  std::vector<int32_t> tokens;
  std::vector<llava::TokenLogprobs> got;
  auto take = [&](const TokenEvent& e) {
    if (e.id == 3) {
      EXPECT_FALSE(e.logprobs);  // asked for none
      return;
    }
    ASSERT_TRUE(e.logprobs);
    tokens.push_back(e.token);
    got.push_back(*e.logprobs);
  };
  take(g.start(2, p.ids, p.images, sampled));
  take(g.start(3, p.ids, p.images, plain));
  while (g.active() > 0) {
    for (const auto& e : g.step()) take(e);
  }
  ASSERT_EQ(tokens.size(), 12u);
  int compared = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::vector<int32_t> prefix = p.ids;
    prefix.insert(prefix.end(), tokens.begin(), tokens.begin() + static_cast<long>(i));
    Generator fresh(model.decoder, 1, 256);
    SamplingParams one;
    one.max_new_tokens = 1;
    one.logprobs = 20;
    const TokenEvent e = fresh.start(9, prefix, p.images, one, p.ids.size());
    EXPECT_EQ(got[i].top_ids, e.logprobs->top_ids) << "token " << i;
    for (size_t j = 0; j < got[i].top_ids.size(); ++j) {
      EXPECT_NEAR(got[i].top_logprobs[j], e.logprobs->top_logprobs[j], 1e-4) << i << ", " << j;
      if (got[i].top_ids[j] == tokens[i]) {
        EXPECT_NEAR(got[i].logprob, e.logprobs->top_logprobs[j], 1e-4) << "token " << i;
        ++compared;
      }
    }
  }
  EXPECT_EQ(compared, 12);
  EXPECT_NE(tokens, std::vector<int32_t>(p.greedy.begin(), p.greedy.begin() + 12));  // sampled
}

// A prompt's logprobs (echo): each token from the second on under transformers' scores at
// the place before it, the banned image token's -inf included, across prefill chunks.
TEST(Generator, PromptLogprobsAreTransformersScoresAtEachPlaceAcrossPrefillChunks) {
  TinyModel model(data_path("tiny-llava"));
  auto ref = load_tensors("reference/a_case0.safetensors");
  auto p = prompt(model, 0);
  Generator g(model.decoder, 1, 256, /*prefill_chunk=*/7);    // 29 tokens: 5 chunks
  at::Tensor scores = ref["logits"].to(at::kDouble).clone();  // [29, V]
  for (int64_t id : g.banned_tokens())
    scores.select(1, id).fill_(-std::numeric_limits<double>::infinity());
  const at::Tensor want = scores.log_softmax(-1);
  SamplingParams s;
  s.max_new_tokens = 1;
  s.logprobs = 2;
  s.prompt_logprobs = true;
  const TokenEvent e = g.start(1, p.ids, p.images, s);
  ASSERT_EQ(e.prompt_logprobs.size(), p.ids.size() - 1);
  int banned = 0;
  for (size_t i = 0; i + 1 < p.ids.size(); ++i) {
    const double w = want[static_cast<int64_t>(i)][p.ids[i + 1]].item<double>();
    const auto& got = e.prompt_logprobs[i];
    if (std::isinf(w)) {  // the next token is an image placeholder: never generated
      EXPECT_TRUE(std::isinf(got.logprob) && got.logprob < 0) << i;
      ++banned;
    } else {
      EXPECT_NEAR(got.logprob, w, 1e-4) << i;
    }
    const auto best = want[static_cast<int64_t>(i)].topk(2);
    ASSERT_EQ(got.top_ids.size(), 2u);
    for (int64_t j = 0; j < 2; ++j) {
      EXPECT_EQ(got.top_ids[j], std::get<1>(best)[j].item<int64_t>()) << i;
      EXPECT_NEAR(got.top_logprobs[j], std::get<0>(best)[j].item<double>(), 1e-4) << i;
    }
  }
  EXPECT_GT(banned, 0);  // the prompt has its image's tokens
  // Not asked: none.
  s.prompt_logprobs = false;
  EXPECT_TRUE(
      Generator(model.decoder, 1, 256).start(2, p.ids, p.images, s).prompt_logprobs.empty());
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

// Choices of one request (the API's n): the second and third find the first running with
// the same prompt and images, copy its keys and values and run only the prompt's last
// token; their answers are transformers' greedy ones all the same. The same ids with other
// images (another key), or asking for the prompt's logprobs, run the whole prompt.
TEST(Generator, ATwinPromptCopiesTheRunningOnesKeysAndRunsOnlyItsLastToken) {
  TinyModel model(data_path("tiny-llava"));
  SamplingParams s;
  s.max_new_tokens = 12;
  const Prompt p = prompt(model, 0);
  ASSERT_FALSE(p.images.empty());
  const int64_t length = static_cast<int64_t>(model.decoder.embed_prompt(p.ids, p.images).size(1));
  Generator g(model.decoder, 5, 256);
  std::map<uint64_t, std::vector<int32_t>> got;
  auto take = [&](const TokenEvent& e) { got[e.id].push_back(e.token); };
  take(g.start(1, p.ids, p.images, s, SIZE_MAX, 77));
  EXPECT_EQ(g.prefilled_tokens(), length);
  for (auto& e : g.step()) take(e);
  take(g.start(2, p.ids, p.images, s, SIZE_MAX, 77));  // joins a step later: still a twin
  take(g.start(3, p.ids, p.images, s, SIZE_MAX, 77));
  EXPECT_EQ(g.prefilled_tokens(), length + 2);
  take(g.start(4, p.ids, p.images, s, SIZE_MAX, 78));  // other images
  EXPECT_EQ(g.prefilled_tokens(), 2 * length + 2);
  SamplingParams scored = s;
  scored.logprobs = 0;
  scored.prompt_logprobs = true;
  take(g.start(5, p.ids, p.images, scored, SIZE_MAX, 77));
  EXPECT_EQ(g.prefilled_tokens(), 3 * length + 2);
  while (g.active() > 0)
    for (auto& e : g.step()) take(e);
  const std::vector<int32_t> expected(p.greedy.begin(), p.greedy.begin() + 12);
  for (uint64_t id = 1; id <= 5; ++id) EXPECT_EQ(got[id], expected) << "request " << id;
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

// The image and pad tokens (tiny-llava: 800, 801) are never sampled, even near-uniformly
// (temperature 100: each of 1,024 ids ~1/1,024 a draw; ~7,000 draws would hold ~14 of them).
TEST(Generator, NeverSamplesTheImageOrPadToken) {
  TinyModel model(data_path("tiny-llava"));
  constexpr int kSequences = 32, kContext = 256;  // the tiny model's positions
  Generator g(model.decoder, kSequences, kContext);
  EXPECT_EQ(g.banned_tokens(), (std::vector<int64_t>{800, 801}));
  auto p = prompt(model, 3);
  SamplingParams s;
  s.max_new_tokens = kContext - static_cast<int>(p.ids.size()) - 1;
  s.temperature = 100.0f;
  std::map<int32_t, int> drawn;
  std::vector<TokenEvent> events;
  for (uint64_t id = 1; id <= kSequences; ++id) {
    s.seed = id;
    events.push_back(g.start(id, p.ids, p.images, s));
  }
  while (g.active() > 0) {
    for (const auto& e : g.step()) events.push_back(e);
  }
  for (const auto& e : events) ++drawn[e.token];
  EXPECT_EQ(events.size(), static_cast<size_t>(kSequences * s.max_new_tokens));
  EXPECT_GT(drawn.size(), 900u) << "not near-uniform: the test would prove nothing";
  EXPECT_EQ(drawn.count(800), 0u);
  EXPECT_EQ(drawn.count(801), 0u);
}

// A resumed request: ids past `placeholders_end` are an earlier attempt's tokens, text even
// when one equals the image token.
TEST(Generator, TheImageTokenAfterThePromptIsText) {
  TinyModel model(data_path("tiny-llava"));
  Generator g(model.decoder, 1, 64);
  SamplingParams s;
  EXPECT_THROW(g.start(1, {1, 5, 800}, {}, s), llava::RequestError);  // a placeholder, no image
  EXPECT_NO_THROW(g.start(2, {1, 5, 800}, {}, s, 2));
}

TEST(Generator, ChunkedPrefillGivesTheSameTokens) {
  TinyModel model(data_path("tiny-llava"));
  SamplingParams s;
  s.max_new_tokens = 16;
  for (int c : {0, 1}) {
    auto p = prompt(model, c);
    for (int64_t chunk : {7, 64}) {  // 7 does not divide the prompt; 64 splits the image
      Generator g(model.decoder, 1, 256, chunk);
      auto tokens = tokens_of(run_alone(g, 1, p, s));
      EXPECT_EQ(tokens, std::vector<int32_t>(p.greedy.begin(), p.greedy.begin() + 16))
          << "case " << c << " chunk " << chunk;
    }
  }
}

// A decode step's rows are cache slots: a sequence in slot 2 while slots 0 and 1 are free
// decodes next to rows that carry nothing, and gets its own tokens.
TEST(Generator, FreeSlotsBelowARunningSequenceChangeNothing) {
  TinyModel model(data_path("tiny-llava"));
  SamplingParams s;
  s.max_new_tokens = 12;
  auto a = prompt(model, 0), b = prompt(model, 3);
  Generator g(model.decoder, 4, 256);
  std::map<uint64_t, std::vector<int32_t>> got;
  auto take = [&](const TokenEvent& e) { got[e.id].push_back(e.token); };
  take(g.start(1, a.ids, a.images, s));  // slot 0
  take(g.start(2, a.ids, a.images, s));  // slot 1
  take(g.start(3, b.ids, b.images, s));  // slot 2
  EXPECT_TRUE(g.cancel(1));
  EXPECT_TRUE(g.cancel(2));
  while (g.active() > 0) for (auto& e : g.step()) take(e);
  EXPECT_EQ(got[3], std::vector<int32_t>(b.greedy.begin(), b.greedy.begin() + 12));
}

TEST(DecodeStep, RowsAndKeysRoundUpToRepeatingShapes) {
  EXPECT_EQ(llava::DecodeStep::rows_for(1, 32), 1);
  EXPECT_EQ(llava::DecodeStep::rows_for(3, 32), 4);
  EXPECT_EQ(llava::DecodeStep::rows_for(17, 32), 32);
  EXPECT_EQ(llava::DecodeStep::rows_for(5, 6), 6);  // never past the cache's slots
  EXPECT_EQ(llava::DecodeStep::keys_for(1, 4096), 256);
  EXPECT_EQ(llava::DecodeStep::keys_for(256, 4096), 256);
  EXPECT_EQ(llava::DecodeStep::keys_for(600, 4096), 768);
  EXPECT_EQ(llava::DecodeStep::keys_for(600, 700), 700);  // never past the context
}

// CUDA graphs replay what was captured: the same tokens as launching every kernel, with
// sequences joining and leaving (new row and key shapes) and a graph per shape.
TEST(DecodeStep, CudaGraphsGiveTheSameTokensAsLaunchingEachKernel) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const std::string folder = data_path("tiny-llava");
  const auto config = llava::load_llava_config(folder);
  llava::Checkpoint checkpoint(folder);
  llava::LlamaDecoder decoder(config, checkpoint, at::TensorOptions().dtype(at::kHalf).device(at::kCUDA));
  auto run = [&](bool graphs, size_t* captured) {
    Generator g(decoder, 4, 512, 512, graphs);
    std::map<uint64_t, std::vector<int32_t>> got;
    SamplingParams s;
    s.max_new_tokens = 300;  // crosses a key bucket
    std::vector<int32_t> prompt;
    for (int i = 0; i < 40; ++i) prompt.push_back(3 + (i * 37) % 900);
    got[1].push_back(g.start(1, prompt, {}, s).token);
    for (int i = 0; i < 5; ++i) for (auto& e : g.step()) got[e.id].push_back(e.token);
    prompt.back() = 5;
    got[2].push_back(g.start(2, prompt, {}, s).token);
    while (g.active() > 0) for (auto& e : g.step()) got[e.id].push_back(e.token);
    *captured = g.cuda_graphs();
    return got;
  };
  size_t with = 0, without = 0;
  auto a = run(true, &with), b = run(false, &without);
  EXPECT_EQ(a, b);
  EXPECT_EQ(without, 0u);
  EXPECT_GE(with, 3u);  // (1 row | 2 rows) x (256 | 512 keys), as the two sequences went
}

}  // namespace
