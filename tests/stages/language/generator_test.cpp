#include "stages/language/generator.h"

#include <gtest/gtest.h>

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
