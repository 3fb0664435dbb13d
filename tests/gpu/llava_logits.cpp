// Runs our model on prompts prepared by check_7b.py and writes what transformers is
// compared against: per case, prompt logits [T, V] (float32) and 8 greedy tokens (KV cache).
// Also times loading, prefill (with the vision tower, and the language model's part alone)
// and decode at batch 1, 8 and 32. QUANTIZE (none, int8, int4)
// and RESIDENT (layers kept on the device, the rest streamed; -1 = all) are optional. With
// LLAVA_PIPE_PROFILE set, ncu measures one vision forward at batch 32 (profile_range.h).
//   llava_logits CHECKPOINT DEVICE DTYPE INPUTS.safetensors OUTPUTS.safetensors [QUANTIZE [RESIDENT]]
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>

#include "common/model_config.h"
#include "stages/checkpoint/checkpoint.h"
#include "stages/checkpoint/safetensors.h"
#include "stages/device.h"
#include "stages/language/generator.h"
#include "stages/language/kv_cache.h"
#include "stages/language/llama_decoder.h"
#include "stages/vision/clip_vision.h"
#include "stages/vision/projector.h"
#include "tests/perf/profile_range.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  c10::InferenceMode inference;
  if (argc < 6 || argc > 8) {
    std::cerr << "usage: llava_logits CHECKPOINT DEVICE DTYPE INPUTS OUTPUTS [QUANTIZE [RESIDENT]]\n";
    return 2;
  }
  llava::WeightPlacement placement;
  const std::string quantize = argc > 6 ? argv[6] : "none";
  placement.quantize = quantize == "int8"   ? llava::Quantize::kInt8
                       : quantize == "int4" ? llava::Quantize::kInt4
                                            : llava::Quantize::kNone;
  placement.resident_layers = argc > 7 ? std::stoi(argv[7]) : -1;
  placement.embeddings_on_host = placement.quantize != llava::Quantize::kNone || placement.resident_layers >= 0;
  const std::string folder = argv[1];
  const at::Device device(argv[2]);
  const std::string dtype_name = argv[3];
  const at::ScalarType dtype = dtype_name == "float16" ? at::kHalf
                               : dtype_name == "bfloat16" ? at::kBFloat16 : at::kFloat;
  const auto options = at::TensorOptions().dtype(dtype).device(device);

  auto start = std::chrono::steady_clock::now();
  llava::LlavaConfig config = llava::load_llava_config(folder);
  llava::Checkpoint checkpoint(folder);
  llava::ClipVision vision(config, checkpoint, options);
  llava::Projector projector(config, checkpoint, options);
  llava::LlamaDecoder decoder(config, checkpoint, options, placement);
  const bool fused = std::getenv("LLAVA_PIPE_UNFUSED") == nullptr;  // compare with LibTorch's kernels
  decoder.use_fused_kernels(fused);
  (void)at::zeros({1}, options).sum().item<float>();  // synchronize
  const double load_seconds = seconds_since(start);

  llava::SafetensorsFile inputs(argv[4]);
  std::map<std::string, at::Tensor> outputs;
  const int64_t max_tokens = 4096;
  llava::KvCache cache(config.text, 1, max_tokens, options);
  // Prefill as timed since round 2 (vision tower + projector + the decoder over the prompt +
  // every row's logits), and the language model's part alone (the decoder over the prompt
  // and the last row's token: what the language stage does for a first token).
  double prefill_seconds = 0, language_seconds = 0;
  int64_t prefill_tokens = 0;
  for (int c = 0;; ++c) {
    const std::string key = "input_ids." + std::to_string(c);
    if (!inputs.has(key)) break;
    at::Tensor ids64 = inputs.view(key).to(at::kLong);
    std::vector<int32_t> ids(ids64.data_ptr<int64_t>(), ids64.data_ptr<int64_t>() + ids64.numel());
    at::Tensor pixels = inputs.view("pixel_values." + std::to_string(c)).to(options);
    for (int repeat = 0; repeat < 2; ++repeat) {  // the second run is the timed one
      int slot = cache.acquire();
      auto t0 = std::chrono::steady_clock::now();
      at::Tensor features = projector.forward(vision.forward(pixels));
      std::vector<at::Tensor> images;
      for (int64_t i = 0; i < features.size(0); ++i) images.push_back(features[i]);
      llava::synchronize(device);
      const auto t1 = std::chrono::steady_clock::now();
      at::Tensor hidden = decoder.forward(decoder.embed_prompt(ids, images), cache, {slot});
      (void)decoder.logits(hidden[0][-1]).argmax().item<int64_t>();
      const double language = seconds_since(t1);
      at::Tensor logits = decoder.logits(hidden)[0];
      int64_t next = logits[-1].argmax().item<int64_t>();
      if (repeat == 1) {
        prefill_seconds += seconds_since(t0);
        language_seconds += language;
        prefill_tokens += static_cast<int64_t>(ids.size());
        std::vector<int64_t> greedy = {next};
        while (greedy.size() < 8) {
          at::Tensor x = decoder.embed(at::tensor({greedy.back()}, at::kLong).to(device).view({1, 1}));
          greedy.push_back(decoder.logits(decoder.forward(x, cache, {slot}))[0][-1].argmax().item<int64_t>());
        }
        outputs["logits." + std::to_string(c)] = logits;
        outputs["greedy." + std::to_string(c)] = at::tensor(greedy, at::kLong);
      }
      cache.release(slot);
    }
  }
  // Decode speed through the Generator (continuous batching): B sequences of the first
  // prompt, then 64 greedy steps for all of them together.
  std::string decode_json;
  {
    at::Tensor ids64 = inputs.view("input_ids.0").to(at::kLong);
    std::vector<int32_t> ids(ids64.data_ptr<int64_t>(), ids64.data_ptr<int64_t>() + ids64.numel());
    at::Tensor features = projector.forward(vision.forward(inputs.view("pixel_values.0").to(options)));
    const int steps = 64;
    for (bool graphs : {true, false}) {
      for (int batch : {1, 8, 32}) {
        llava::Generator generator(decoder, batch, static_cast<int64_t>(ids.size()) + steps + 8, 512, graphs);
        llava::SamplingParams params;
        params.max_new_tokens = steps + 1;
        for (int r = 0; r < batch; ++r) generator.start(static_cast<uint64_t>(r), ids, {features[0]}, params);
        generator.step();  // warm-up (and the first graph capture)
        llava::synchronize(device);
        auto t0 = std::chrono::steady_clock::now();
        int tokens = 0;
        for (int i = 0; i < steps - 1; ++i) tokens += static_cast<int>(generator.step().size());
        const double s = seconds_since(t0);
        char buffer[160];
        std::snprintf(buffer, sizeof buffer, ", \"decode_tokens_per_s_batch%d%s\": %.1f", batch,
                      graphs ? "" : "_no_graphs", tokens / s);
        decode_json += buffer;
        if (graphs) {
          std::snprintf(buffer, sizeof buffer, ", \"cuda_graphs_batch%d\": %zu", batch, generator.cuda_graphs());
          decode_json += buffer;
        }
      }
    }
  }
  // The vision tower + projector alone on preprocessed pixels (what transformers'
  // get_image_features measures): images/s at batch 1 and 32, median of 5.
  {
    at::Tensor pixels = inputs.view("pixel_values.0").to(options);
    for (int batch : {1, 32}) {
      at::Tensor px = pixels.expand({batch, -1, -1, -1}).contiguous();
      std::vector<double> times;
      for (int i = 0; i < 7; ++i) {
        llava::synchronize(device);
        const bool profiled = batch == 32 && i == 5;
        if (profiled) llava::profile_range(true);
        auto t0 = std::chrono::steady_clock::now();
        (void)projector.forward(vision.forward(px));
        llava::synchronize(device);
        if (profiled) llava::profile_range(false);
        if (i > 0 && !profiled) times.push_back(seconds_since(t0));
      }
      std::sort(times.begin(), times.end());
      char buffer[96];
      std::snprintf(buffer, sizeof buffer, ", \"vision_images_per_s_batch%d\": %.1f", batch, batch / times[2]);
      decode_json += buffer;
    }
  }
  llava::save_safetensors(argv[5], outputs);
  std::printf("{\"quantize\": \"%s\", \"fused_kernels\": %s, \"resident_layers\": %d, \"device_weight_bytes\": %lld, "
              "\"host_weight_bytes\": %lld, \"load_seconds\": %.2f, \"prefill_tokens_per_s\": %.1f, "
              "\"language_prefill_tokens_per_s\": %.1f%s}\n",
              quantize.c_str(), fused ? "true" : "false", placement.resident_layers,
              static_cast<long long>(decoder.device_weight_bytes()),
              static_cast<long long>(decoder.host_weight_bytes()), load_seconds,
              prefill_tokens / prefill_seconds, prefill_tokens / language_seconds, decode_json.c_str());
  return 0;
}
