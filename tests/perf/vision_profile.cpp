// Times the vision stage's steps for one image file, as its worker runs them
// (Worker::encode_images): decode + preprocess on the host, CLIP + projector on the
// device, the copy of the embeddings into pinned host memory. ms per call, median of 20.
//   vision_profile IMAGE CHECKPOINT [DEVICE [DTYPE]]
// Without DEVICE only the host steps run (the checkpoint's preprocessor_config.json). With
// LLAVA_PIPE_PROFILE set, ncu measures one encode at batch 32 (profile_range.h).
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "stages/device.h"
#include "stages/parallel.h"
#include "stages/vision/image.h"
#include "stages/vision/preprocess.h"
#include "stages/vision/vision_encoder.h"
#include "tests/perf/profile_range.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: vision_profile IMAGE CHECKPOINT [DEVICE [DTYPE]]\n");
    return 2;
  }
  c10::InferenceMode inference;
  std::ifstream file(argv[1], std::ios::binary);
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  const std::string folder = argv[2];
  const llava::PreprocessorConfig config = llava::load_preprocessor_config(folder);
  auto time_ms = [&](const std::string& name, int runs, const std::function<void()>& op) {
    std::vector<double> ms;
    for (int i = 0; i < runs + 2; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      op();
      if (i >= 2) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("%-44s %9.3f ms\n", name.c_str(), ms[ms.size() / 2]);
  };
  const llava::RgbImage image = llava::decode_image(bytes.data(), bytes.size());
  std::printf("image %dx%d -> 3x%dx%d\n", image.width, image.height, config.crop_height, config.crop_width);
  time_ms("host: decode", 20, [&] { llava::decode_image(bytes.data(), bytes.size()); });
  time_ms("host: preprocess (resize, crop, normalize)", 20, [&] { llava::preprocess(image, config); });
  // As the vision worker takes a single image: its rows in bands over the cores.
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  time_ms("host: preprocess on " + std::to_string(cores) + " threads", 20,
          [&] { llava::preprocess(image, config, cores); });
  if (argc < 4) return 0;

  const at::Device device(argv[3]);
  const std::string dtype = argc > 4 ? argv[4] : "float16";
  llava::initialize_device(device);
  const auto options = at::TensorOptions()
                           .dtype(dtype == "float32" ? at::kFloat : dtype == "bfloat16" ? at::kBFloat16 : at::kHalf)
                           .device(device);
  llava::Checkpoint checkpoint(folder);
  llava::VisionEncoder encoder(llava::load_llava_config(folder), checkpoint, options);
  for (int batch : {1, 32, 31}) {
    const std::string b = "batch " + std::to_string(batch) + ": ";
    const at::Tensor stacked = encoder.pixel_batch(batch);  // pinned on CUDA, as the worker's
    time_ms(
        b + "pixels (host, on " + std::to_string(std::thread::hardware_concurrency()) + " threads)",
        10, [&] {
          llava::run_parallel(static_cast<size_t>(batch), [&](size_t i) {
            encoder.pixels_into(bytes.data(), bytes.size(), stacked[static_cast<int64_t>(i)]);
          });
        });
    at::Tensor embeddings;
    const auto first = std::chrono::steady_clock::now();
    embeddings = encoder.encode(stacked);
    llava::synchronize(device);
    std::printf("%-44s %9.3f ms\n", (b + "encode, first call (graph, plans)").c_str(),
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - first).count());
    time_ms(b + "encode (to device, CLIP, projector)", 10, [&] {
      embeddings = encoder.encode(stacked);
      llava::synchronize(device);
    });
    if (batch == 32) {  // with LLAVA_PIPE_PROFILE set, ncu measures this one (pixels on the device)
      const at::Tensor on_device = stacked.to(device);
      // Pixels on the device, as the bench's tower figure: each call waited for (median)
      // against calls queued back to back (the host never waits between them).
      time_ms(b + "encode (pixels on the device)", 20, [&] {
        encoder.encode(on_device);
        llava::synchronize(device);
      });
      const int queued = 100;
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < queued; ++i) encoder.encode(on_device);
      llava::synchronize(device);
      std::printf(
          "%-44s %9.3f ms\n",
          (b + "encode, " + std::to_string(queued) + " queued, per call").c_str(),
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                  .count() /
              queued);
      llava::profile_range(true);
      encoder.encode(on_device);
      llava::synchronize(device);
      llava::profile_range(false);
    }
    time_ms(b + "embeddings to pinned host memory", 10, [&] {
      at::Tensor host = at::empty(embeddings.sizes(), embeddings.options().device(at::kCPU).pinned_memory(device.is_cuda()));
      host.copy_(embeddings);
    });
  }
  return 0;
}
