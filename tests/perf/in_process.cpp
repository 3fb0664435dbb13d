// The pipeline's work in one process, as its two workers do it: REQUESTS requests of one
// image, submitted together. One loop: the vision stage's next batch (host preprocessing
// on threads, encode, copy to pinned host memory) while embeddings are not waiting, the
// language stage's admissions (prefill) while it has slots, then one decode step for
// every running sequence. Prints JSON to set beside `llava-pipe bench --throughput`, with
// the vision tower's own images/s (pixels on the device) at batch 1 and VISION_BATCH.
//   in_process CHECKPOINT DEVICE IMAGE REQUESTS NEW_TOKENS VISION_BATCH LANGUAGE_BATCH
//              PROMPT_TOKENS [PREFILL_CHUNK]
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "stages/device.h"
#include "stages/language/generator.h"
#include "stages/language/llama_decoder.h"
#include "stages/parallel.h"
#include "stages/vision/vision_encoder.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 9) {
    std::fprintf(stderr, "usage: in_process CHECKPOINT DEVICE IMAGE REQUESTS NEW_TOKENS VISION_BATCH "
                         "LANGUAGE_BATCH PROMPT_TOKENS [PREFILL_CHUNK]\n");
    return 2;
  }
  c10::InferenceMode inference;
  const std::string folder = argv[1];
  const at::Device device(argv[2]);
  std::ifstream file(argv[3], std::ios::binary);
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  const int requests = std::stoi(argv[4]), new_tokens = std::stoi(argv[5]);
  const int vision_batch = std::stoi(argv[6]), language_batch = std::stoi(argv[7]);
  const int prompt_tokens = std::stoi(argv[8]);
  const int64_t prefill_chunk = argc > 9 ? std::stoll(argv[9]) : 1024;

  llava::initialize_device(device);
  const auto options = at::TensorOptions().dtype(device.is_cuda() ? at::kHalf : at::kFloat).device(device);
  const auto load_start = std::chrono::steady_clock::now();
  const llava::LlavaConfig config = llava::load_llava_config(folder);
  llava::Checkpoint checkpoint(folder);
  llava::VisionEncoder vision(config, checkpoint, options);
  llava::LlamaDecoder decoder(config, checkpoint, options);
  llava::Generator generator(decoder, language_batch, prompt_tokens + new_tokens + 8, prefill_chunk);
  const double load_seconds = seconds_since(load_start);

  // BOS, 5 text tokens, the image's tokens, the rest of the text.
  const int64_t image_tokens = config.image_tokens();
  std::vector<int32_t> ids = {1};
  for (int i = 0; static_cast<int64_t>(ids.size()) < prompt_tokens; ++i) {
    if (ids.size() == 6) ids.insert(ids.end(), image_tokens, static_cast<int32_t>(config.image_token_index));
    const auto id = static_cast<int32_t>(3 + (i * 7919) % (config.text.vocab_size - 3));
    ids.push_back(id == config.image_token_index ? 4 : id);
  }
  llava::SamplingParams params;
  params.max_new_tokens = new_tokens;
  for (int64_t eos : config.text.eos_token_ids) params.stop_token_ids.push_back(static_cast<int32_t>(eos));
  uint64_t next_id = 0;

  // n copies of the image, preprocessed as the worker does: into one pinned batch.
  auto pixel_batch = [&](int n) {
    at::Tensor pixels = vision.pixel_batch(n);
    llava::run_parallel(static_cast<size_t>(n), [&](size_t i) {
      vision.pixels_into(bytes.data(), bytes.size(), pixels[static_cast<int64_t>(i)]);
    });
    return pixels;
  };
  // One vision batch as the worker runs it: embeddings in pinned host memory.
  auto encode_batch = [&](int n) {
    at::Tensor embeddings = vision.encode(pixel_batch(n));
    at::Tensor host = at::empty(embeddings.sizes(), embeddings.options().device(at::kCPU).pinned_memory(device.is_cuda()));
    return host.copy_(embeddings);
  };
  // Warm-up, as the bench's earlier phases warm the workers: a full vision batch and one
  // request through the language stage.
  {
    at::Tensor embeddings = encode_batch(std::min(vision_batch, requests));
    llava::SamplingParams two = params;
    two.max_new_tokens = 2;
    generator.start(next_id++, ids, {embeddings[0]}, two);
    while (generator.active() > 0) generator.step();
    llava::synchronize(device);
  }
  // The vision tower + projector alone, on pixels already on the device (what
  // transformers' get_image_features is timed on): images/s, median of 5.
  std::string tower;
  for (int batch : {1, vision_batch}) {
    const at::Tensor on_device = pixel_batch(batch).to(options);
    std::vector<double> times;
    for (int i = 0; i < 6; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      vision.encode(on_device);
      llava::synchronize(device);
      if (i > 0) times.push_back(seconds_since(t0));
    }
    std::sort(times.begin(), times.end());
    tower += (tower.empty() ? "" : ", ") + std::string("\"batch") + std::to_string(batch) + "\": " +
             std::to_string(batch / times[2]);
  }
  const auto start = std::chrono::steady_clock::now();
  double vision_seconds = 0, language_seconds = 0;
  int encoded = 0, finished = 0, generated = 0;
  std::deque<at::Tensor> ready;  // embeddings waiting for a language slot
  while (finished < requests) {
    if (encoded < requests && ready.empty()) {
      const auto t0 = std::chrono::steady_clock::now();
      const int n = std::min(vision_batch, requests - encoded);
      at::Tensor host = encode_batch(n);
      for (int i = 0; i < n; ++i) ready.push_back(host[i]);
      encoded += n;
      vision_seconds += seconds_since(t0);
    }
    const auto t0 = std::chrono::steady_clock::now();
    while (generator.has_capacity() && !ready.empty()) {
      const llava::TokenEvent first = generator.start(next_id++, ids, {ready.front()}, params);
      ready.pop_front();
      ++generated;
      finished += first.finish != llava::Finish::kNone;
    }
    for (const auto& event : generator.step()) {
      ++generated;
      finished += event.finish != llava::Finish::kNone;
    }
    language_seconds += seconds_since(t0);
  }
  const double seconds = seconds_since(start);
  std::printf("{\"requests\": %d, \"new_tokens\": %d, \"prompt_tokens\": %zu, \"load_seconds\": %.2f, "
              "\"seconds\": %.3f, \"requests_per_s\": %.3f, \"generated_tokens\": %d, \"tokens_per_s\": %.1f, "
              "\"vision_seconds\": %.3f, \"language_seconds\": %.3f, \"vision_tower_images_per_s\": {%s}}\n",
              requests, new_tokens, ids.size(), load_seconds, seconds, requests / seconds, generated,
              generated / seconds, vision_seconds, language_seconds, tower.c_str());
  return 0;
}
