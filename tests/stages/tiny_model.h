// The tiny LLaVA loaded in-process on the CPU in float32, for tests.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "common/model_config.h"
#include "reference.h"
#include "stages/checkpoint/checkpoint.h"
#include "stages/language/kv_cache.h"
#include "stages/language/llama_decoder.h"
#include "stages/vision/clip_vision.h"
#include "stages/vision/projector.h"

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

}  // namespace llava::test
