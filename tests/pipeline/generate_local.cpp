// In-process generation with the worker's own code (no coordinator, no processes): the
// reference the multi-process pipeline tests compare against.
//   generate_local CHECKPOINT MAX_NEW_TOKENS IDS_CSV [IMAGE ...]   -> prints tokens, CSV
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "stages/checkpoint/checkpoint.h"
#include "stages/language/generator.h"
#include "stages/vision/vision_encoder.h"

int main(int argc, char** argv) {
  c10::InferenceMode inference;
  if (argc < 4) {
    std::fprintf(stderr, "usage: generate_local CHECKPOINT MAX_NEW_TOKENS IDS_CSV [IMAGE ...]\n");
    return 2;
  }
  const std::string folder = argv[1];
  llava::LlavaConfig config = llava::load_llava_config(folder);
  llava::Checkpoint checkpoint(folder);
  const auto options = at::TensorOptions().dtype(at::kFloat);
  std::vector<int32_t> ids;
  std::stringstream csv(argv[3]);
  for (std::string item; std::getline(csv, item, ',');) ids.push_back(std::stoi(item));
  std::vector<at::Tensor> images;
  if (argc > 4) {
    llava::VisionEncoder vision(config, checkpoint, options);
    std::vector<at::Tensor> pixels;
    for (int i = 4; i < argc; ++i) {
      std::ifstream in(argv[i], std::ios::binary);
      std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
      pixels.push_back(vision.pixels(bytes.data(), bytes.size()));
    }
    at::Tensor embeddings = vision.encode(at::stack(pixels));
    for (int64_t i = 0; i < embeddings.size(0); ++i) images.push_back(embeddings[i]);
  }
  llava::LlamaDecoder decoder(config, checkpoint, options);
  llava::Generator generator(decoder, 1, config.text.max_position_embeddings);
  llava::SamplingParams params;
  params.max_new_tokens = std::stoi(argv[2]);
  for (int64_t eos : config.text.eos_token_ids) params.stop_token_ids.push_back(static_cast<int32_t>(eos));
  std::vector<llava::TokenEvent> events = {generator.start(1, ids, images, params)};
  while (events.back().finish == llava::Finish::kNone) events.push_back(generator.step().at(0));
  for (size_t i = 0; i < events.size(); ++i) std::printf("%s%d", i ? "," : "", events[i].token);
  std::printf("\n");
  return 0;
}
