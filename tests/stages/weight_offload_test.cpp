// release: offload: the weights go to host memory and come back with the same answers.
#include <gtest/gtest.h>

#include <set>

#include "stages/device.h"
#include "stages/vision/vision_encoder.h"
#include "stages/weight_offload.h"
#include "tests/stages/tiny_model.h"

namespace {

using llava::WeightOffload;
using llava::test::data_path;
using llava::test::TinyModel;

WeightOffload::Visit over(std::vector<at::Tensor>& tensors) {
  return [&tensors](const std::function<void(at::Tensor&)>& f) {
    for (auto& t : tensors) f(t);
  };
}

WeightOffload::Visit over(llava::LlamaDecoder& decoder) {
  return [&decoder](const std::function<void(at::Tensor&)>& f) { decoder.visit_tensors(f); };
}

TEST(WeightOffload, SharedTensorsAreCopiedOnceAndComeBackShared) {
  at::Tensor a = at::arange(10, at::kFloat), b = at::arange(7, at::kLong).view({7, 1});
  std::vector<at::Tensor> tensors = {a, b, a, at::Tensor()};
  WeightOffload offload(/*cpu_too=*/true);
  offload.offload(over(tensors));
  EXPECT_TRUE(offload.offloaded());
  EXPECT_EQ(offload.bytes(), 256u + 256u);  // two distinct tensors, each on a 256-byte boundary
  EXPECT_NE(tensors[0].data_ptr(), a.data_ptr());
  EXPECT_EQ(tensors[0].data_ptr(), tensors[2].data_ptr());
  EXPECT_FALSE(tensors[3].defined());
  a.fill_(-1);  // the originals are free to go: the host copy does not read them
  offload.restore(over(tensors), at::kCPU);
  EXPECT_FALSE(offload.offloaded());
  EXPECT_TRUE(at::equal(tensors[0], at::arange(10, at::kFloat)));
  EXPECT_TRUE(at::equal(tensors[1], at::arange(7, at::kLong).view({7, 1})));
  EXPECT_EQ(tensors[0].data_ptr(), tensors[2].data_ptr());
  EXPECT_EQ(tensors[1].sizes().vec(), (std::vector<int64_t>{7, 1}));
}

TEST(WeightOffload, AModelWithOtherTensorsThanAtTheFirstOffloadIsRefused) {
  std::vector<at::Tensor> tensors = {at::ones({4}), at::ones({3})};
  WeightOffload offload(true);
  offload.offload(over(tensors));
  offload.restore(over(tensors), at::kCPU);
  tensors.push_back(at::ones({2}));
  EXPECT_THROW(offload.offload(over(tensors)), std::logic_error);
}

TEST(WeightOffload, OnlyDeviceTensorsMoveUnlessAskedToMoveHostOnesToo) {
  std::vector<at::Tensor> tensors = {at::ones({4})};
  const void* before = tensors[0].data_ptr();
  WeightOffload offload;  // a CPU tensor is already in host memory
  offload.offload(over(tensors));
  EXPECT_EQ(tensors[0].data_ptr(), before);
  EXPECT_EQ(offload.bytes(), 0u);
}

// Every tensor the decoder keeps is visited: what the decoder counts as its weights plus
// the two RoPE tables, each once.
TEST(WeightOffload, TheDecoderVisitsEveryWeightItCounts) {
  TinyModel model(data_path("tiny-llava"));
  std::set<const void*> seen;
  int64_t bytes = 0;
  model.decoder.visit_tensors([&](at::Tensor& t) {
    if (seen.insert(t.data_ptr()).second) bytes += static_cast<int64_t>(t.nbytes());
  });
  const auto& text = model.config.text;
  const int64_t rope = 2 * text.max_position_embeddings * text.head_dim * 4;
  EXPECT_EQ(bytes, model.decoder.device_weight_bytes() + rope);
}

// Offloaded and restored twice (the second time from the copy the first made), the
// decoder gives the same tokens and logits, in each weight layout.
TEST(WeightOffload, TheDecoderAnswersAlikeAfterRoundTrips) {
  for (const llava::WeightPlacement& placement :
       {llava::WeightPlacement{}, llava::WeightPlacement{llava::Quantize::kInt8, true, -1},
        llava::WeightPlacement{llava::Quantize::kNone, false, 1}}) {
    TinyModel model(data_path("tiny-llava"), at::kFloat, placement);
    const std::vector<int32_t> before = model.greedy({1, 319, 724, 38}, at::Tensor(), 8);
    WeightOffload offload(true);
    for (int round = 0; round < 2; ++round) {
      offload.offload(over(model.decoder));
      model.decoder.visit_tensors([&](at::Tensor& t) { EXPECT_TRUE(offload.holds(t)); });
      offload.restore(over(model.decoder), at::kCPU);
      EXPECT_EQ(model.greedy({1, 319, 724, 38}, at::Tensor(), 8), before)
          << "round " << round << ", resident layers " << placement.resident_layers;
    }
  }
}

TEST(WeightOffload, TheVisionEncoderAnswersAlikeAfterARoundTrip) {
  const std::string folder = data_path("tiny-llava");
  const auto config = llava::load_llava_config(folder);
  llava::Checkpoint checkpoint(folder);
  llava::VisionEncoder encoder(config, checkpoint, at::TensorOptions().dtype(at::kFloat), false);
  const int64_t size = config.vision.image_size;
  at::Tensor pixels = at::randn({2, 3, size, size});
  at::Tensor before = encoder.encode(pixels).clone();
  WeightOffload offload(true);
  auto visit = [&](const std::function<void(at::Tensor&)>& f) { encoder.visit_tensors(f); };
  offload.offload(visit);
  encoder.forget_graphs();
  offload.restore(visit, at::kCPU);
  EXPECT_TRUE(at::allclose(encoder.encode(pixels), before, 0, 0));
}

// On a GPU: the device's memory is given back while offloaded, and the answers and the
// CUDA graphs' answers are the same after the weights return to new addresses.
TEST(WeightOffload, OnCudaFreesTheDeviceAndAnswersAlike) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Device cuda(at::kCUDA, 0);
  TinyModel model(data_path("tiny-llava"), at::kHalf, {}, cuda);
  const std::vector<int32_t> before = model.greedy({1, 319, 724, 38}, at::Tensor(), 8);
  WeightOffload offload;
  const int64_t loaded = llava::device_memory(cuda).allocated;
  offload.offload(over(model.decoder));
  model.decoder.visit_tensors([&](at::Tensor& t) { EXPECT_TRUE(offload.holds(t)); });
  EXPECT_LE(llava::device_memory(cuda).allocated + model.decoder.device_weight_bytes() / 2, loaded);
  offload.restore(over(model.decoder), cuda);
  model.decoder.visit_tensors([&](at::Tensor& t) { EXPECT_TRUE(t.device().is_cuda()); });
  EXPECT_EQ(model.greedy({1, 319, 724, 38}, at::Tensor(), 8), before);

  const auto config = llava::load_llava_config(data_path("tiny-llava"));
  llava::Checkpoint checkpoint(data_path("tiny-llava"));
  llava::VisionEncoder encoder(config, checkpoint, at::TensorOptions().dtype(at::kHalf).device(cuda), true);
  at::Tensor pixels = at::randn({2, 3, config.vision.image_size, config.vision.image_size});
  at::Tensor expected = encoder.encode(pixels).cpu();  // captures the graph of 2 images
  WeightOffload vision_offload;
  auto visit = [&](const std::function<void(at::Tensor&)>& f) { encoder.visit_tensors(f); };
  vision_offload.offload(visit);
  encoder.forget_graphs();
  vision_offload.restore(visit, cuda);
  EXPECT_TRUE(at::equal(encoder.encode(pixels).cpu(), expected));
}

}  // namespace
