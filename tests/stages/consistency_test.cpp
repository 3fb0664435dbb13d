// The KV cache and batching must not change results.
#include <gtest/gtest.h>

#include "common/errors.h"
#include "tests/stages/tiny_model.h"

namespace {

using llava::test::data_path;
using llava::test::ids_of;
using llava::test::load_tensors;
using llava::test::TinyModel;

TEST(Consistency, KvCacheDecodeEqualsFullRecompute) {
  TinyModel model(data_path("tiny-llava"));
  auto ref = load_tensors("reference/a_case0.safetensors");
  auto ids = ids_of(ref["input_ids"]);
  auto generated = model.greedy(ids, ref["pixel_values"], 8);
  // Recompute the whole sequence from scratch: its logits at every generated position
  // must equal the cached decode's, and pick the same tokens.
  std::vector<int32_t> all = ids;
  all.insert(all.end(), generated.begin(), generated.end() - 1);
  llava::KvCache cache(model.config.text, 1, static_cast<int64_t>(all.size()), model.options);
  at::Tensor full = model.prompt_logits(all, ref["pixel_values"], cache, cache.acquire());
  for (size_t i = 0; i < generated.size(); ++i) {
    int64_t position = static_cast<int64_t>(ids.size() + i) - 1;
    EXPECT_EQ(full[position].argmax().item<int64_t>(), generated[i]) << i;
  }
  // And the cached step's logits themselves agree to float rounding.
  llava::KvCache step_cache(model.config.text, 1, static_cast<int64_t>(all.size()), model.options);
  int slot = step_cache.acquire();
  model.prompt_logits(ids, ref["pixel_values"], step_cache, slot);
  at::Tensor x = model.decoder.embed(at::tensor({static_cast<int64_t>(generated[0])}).view({1, 1}));
  at::Tensor stepped = model.decoder.logits(model.decoder.forward(x, step_cache, {slot}))[0][0];
  EXPECT_LT((stepped - full[static_cast<int64_t>(ids.size())]).abs().max().item<double>(), 1e-4);
}

TEST(Consistency, BatchOfThreeEqualsThreeSingles) {
  TinyModel model(data_path("tiny-llava"));
  std::vector<std::vector<int32_t>> prompts;
  std::vector<at::Tensor> pixels;
  for (int c : {0, 1, 3}) {  // different lengths; one without an image
    auto ref = load_tensors("reference/a_case" + std::to_string(c) + ".safetensors");
    prompts.push_back(ids_of(ref["input_ids"]));
    pixels.push_back(ref.count("pixel_values") ? ref["pixel_values"] : at::Tensor());
  }
  constexpr int kSteps = 6;
  std::vector<std::vector<int32_t>> single;
  for (size_t i = 0; i < 3; ++i) single.push_back(model.greedy(prompts[i], pixels[i], kSteps));

  llava::KvCache cache(model.config.text, 3, 256, model.options);
  std::vector<int> slots;
  std::vector<std::vector<int32_t>> batched(3);
  for (size_t i = 0; i < 3; ++i) {
    slots.push_back(cache.acquire());
    at::Tensor logits = model.prompt_logits(prompts[i], pixels[i], cache, slots.back());
    batched[i].push_back(static_cast<int32_t>(logits[-1].argmax().item<int64_t>()));
  }
  for (int step = 1; step < kSteps; ++step) {
    std::vector<int64_t> last;
    for (const auto& b : batched) last.push_back(b.back());
    at::Tensor x = model.decoder.embed(at::tensor(last).view({3, 1}));
    at::Tensor logits = model.decoder.logits(model.decoder.forward(x, cache, slots));  // [3, 1, V]
    for (size_t i = 0; i < 3; ++i) {
      batched[i].push_back(static_cast<int32_t>(logits[static_cast<int64_t>(i)][0].argmax().item<int64_t>()));
    }
  }
  EXPECT_EQ(batched, single);
}

TEST(Consistency, PromptLongerThanTheCacheIsARequestError) {
  TinyModel model(data_path("tiny-llava"));
  llava::KvCache cache(model.config.text, 1, 4, model.options);
  EXPECT_THROW(model.prompt_logits({1, 5, 6, 7, 8, 9}, at::Tensor(), cache, cache.acquire()),
               llava::RequestError);
}

TEST(Consistency, ImageTokenCountMustMatchTheImages) {
  TinyModel model(data_path("tiny-llava"));
  std::vector<int32_t> ids = {1, 800, 800, 5};  // two image tokens, one 16-row image
  EXPECT_THROW(model.decoder.embed_prompt(ids, {at::zeros({16, 64})}), llava::RequestError);
  EXPECT_THROW(model.decoder.embed_prompt({1, 5000}, {}), llava::RequestError);
}

TEST(Consistency, NonFiniteImageEmbeddingsAreARequestError) {
  TinyModel model(data_path("tiny-llava"));
  std::vector<int32_t> ids(18, 800);
  ids[0] = 1, ids[17] = 5;
  at::Tensor image = at::zeros({16, 64});
  EXPECT_NO_THROW(model.decoder.embed_prompt(ids, {image}));
  image[3][7] = NAN;
  try {
    model.decoder.embed_prompt(ids, {image});
    FAIL();
  } catch (const llava::RequestError& e) {
    EXPECT_STREQ(e.what(), "the image embeddings contain NaN or Inf");
  }
  image[3][7] = INFINITY;
  EXPECT_THROW(model.decoder.embed_prompt(ids, {image}), llava::RequestError);
}

}  // namespace
