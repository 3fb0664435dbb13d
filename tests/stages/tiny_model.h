// The tiny LLaVA loaded in-process on the CPU in float32, for tests.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>

#include <memory>
#include <string>

#include "common/model_config.h"
#include "stages/checkpoint/checkpoint.h"
#include "stages/language/kv_cache.h"
#include "stages/language/llama_decoder.h"
#include "stages/vision/clip_vision.h"
#include "stages/vision/projector.h"
#include "tests/stages/reference.h"

namespace llava::test {

struct TinyModel {
  explicit TinyModel(const std::string& folder, at::ScalarType dtype = at::kFloat,
                     const WeightPlacement& placement = {}, at::Device device = at::kCPU)
      : config(load_llava_config(folder)),
        checkpoint(folder),
        options(at::TensorOptions().dtype(dtype).device(device)),
        vision(config, checkpoint, options),
        projector(config, checkpoint, options),
        decoder(config, checkpoint, options, placement) {}

  // pixel_values [N, 3, S, S] -> [N, tokens, H]
  at::Tensor image_features(const at::Tensor& pixels) const {
    return projector.forward(vision.forward(pixels));
  }

  // Prompt logits [T, V] for one sequence, in a fresh cache slot.
  at::Tensor prompt_logits(const std::vector<int32_t>& ids, const at::Tensor& pixels,
                           KvCache& cache, int slot) const {
    std::vector<at::Tensor> images;
    if (pixels.defined()) {
      at::Tensor features = image_features(pixels);
      for (int64_t i = 0; i < features.size(0); ++i) images.push_back(features[i]);
    }
    at::Tensor x = decoder.embed_prompt(ids, images);
    return decoder.logits(decoder.forward(x, cache, {slot}))[0];
  }

  // Greedy tokens with the KV cache: the first from the prompt, then one step at a time.
  std::vector<int32_t> greedy(const std::vector<int32_t>& ids, const at::Tensor& pixels,
                              int count) const {
    KvCache cache(config.text, 1, static_cast<int64_t>(ids.size()) + count, options);
    int slot = cache.acquire();
    at::Tensor logits = prompt_logits(ids, pixels, cache, slot);
    std::vector<int32_t> out = {static_cast<int32_t>(logits[-1].argmax().item<int64_t>())};
    while (static_cast<int>(out.size()) < count) {
      at::Tensor x = decoder.embed(at::tensor({static_cast<int64_t>(out.back())}).view({1, 1}));
      at::Tensor next = decoder.logits(decoder.forward(x.to(options), cache, {slot}))[0][-1];
      out.push_back(static_cast<int32_t>(next.argmax().item<int64_t>()));
    }
    return out;
  }

  LlavaConfig config;
  Checkpoint checkpoint;
  at::TensorOptions options;
  ClipVision vision;
  Projector projector;
  LlamaDecoder decoder;
};

inline std::vector<int32_t> ids_of(const at::Tensor& t) {
  auto l = t.to(at::kLong).contiguous();
  return std::vector<int32_t>(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + l.numel());
}

// Our model against transformers' references (make_tiny_llava.py's references() format):
// every case's image features, prompt logits within 1e-4 relative (float32), and greedy
// tokens: all 32, or up to and with the first `eos` when `eos` >= 0 (a trained model's
// answer ends there, and transformers' margins past it are small).
inline void check_reference_cases(const std::string& folder, const std::string& reference_dir,
                                  const std::string& tag, int32_t eos = -1) {
  TinyModel model(data_path(folder));
  auto cases = load_json(reference_dir + "/" + tag + "_cases.json");
  ASSERT_GE(cases.size(), 3u);
  auto until_eos = [&](std::vector<int32_t> ids) {
    auto at = std::find(ids.begin(), ids.end(), eos);
    if (eos >= 0 && at != ids.end()) ids.erase(at + 1, ids.end());
    return ids;
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c["file"].get<std::string>());
    auto ref = load_tensors(reference_dir + "/" + c["file"].get<std::string>());
    auto ids = ids_of(ref["input_ids"]);
    at::Tensor pixels = ref.count("pixel_values") ? ref["pixel_values"] : at::Tensor();
    if (pixels.defined()) {
      EXPECT_LT(relative_error(model.image_features(pixels), ref["image_features"]), 1e-5);
    }
    KvCache cache(model.config.text, 1, static_cast<int64_t>(ids.size()), model.options);
    EXPECT_LT(relative_error(model.prompt_logits(ids, pixels, cache, cache.acquire()), ref["logits"]), 1e-4);
    EXPECT_EQ(until_eos(model.greedy(ids, pixels, 32)), until_eos(ids_of(ref["greedy"])));
  }
}

}  // namespace llava::test
