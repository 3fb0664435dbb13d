// The trained shapes LLaVA (tests/data/shapes-llava, tests/data/make_shapes_llava.py): its
// logits against transformers', and how closely int8 / int4 weight-only decoders follow
// float32 on real answers (top-1 agreement over every prompt position). The task accuracy
// of each through the whole pipeline is tests/pipeline/shapes_accuracy_test.cpp.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "stages/vision/image.h"
#include "stages/vision/preprocess.h"
#include "tests/stages/tiny_model.h"

namespace {

using llava::Quantize;
using llava::WeightPlacement;
using llava::test::data_path;
using llava::test::ids_of;
using llava::test::load_json;
using llava::test::load_tensors;
using llava::test::read_file;
using llava::test::relative_error;
using llava::test::check_reference_cases;
using llava::test::TinyModel;

// Greedy tokens up to and with </s> (id 2): what follows is never generated.
TEST(ShapesParity, TrainedModelMatchesTransformers) {
  check_reference_cases("shapes-llava", "shapes-reference", "shapes", 2);
  auto cases = load_json("shapes-reference/shapes_cases.json");
  ASSERT_EQ(cases.size(), 4u);
  // The answers themselves (transformers' greedy text, recorded with the references).
  EXPECT_EQ(cases[0]["greedy_text"], cases[0]["expected"]);
}

// The prompts: the three questions of the reference cases (their token ids), each asked of
// the first `images` held-out pictures, preprocessed by our own code.
struct Prompts {
  std::vector<std::vector<int32_t>> ids;
  std::vector<at::Tensor> pixels;
};

Prompts shapes_prompts(int images) {
  auto cases = load_json("shapes-reference/shapes_cases.json");
  const auto config = llava::load_preprocessor_config(data_path("shapes-llava"));
  Prompts p;
  for (int i = 0; i < images; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "shapes-eval/e%03d.png", i);
    auto bytes = read_file(data_path(name));
    const std::vector<float> values = llava::preprocess(llava::decode_image(bytes.data(), bytes.size()), config);
    at::Tensor pixels = at::tensor(values).view({1, 3, config.crop_height, config.crop_width});
    for (int c = 0; c < 3; ++c) {
      p.ids.push_back(ids_of(load_tensors("shapes-reference/" + cases[c]["file"].get<std::string>())["input_ids"]));
      p.pixels.push_back(pixels);
    }
  }
  return p;
}

// Top-1 agreement of `quantized` with `reference` over every position of every prompt.
double top1_agreement(const TinyModel& reference, const TinyModel& quantized, const Prompts& prompts) {
  int64_t same = 0, total = 0;
  for (size_t i = 0; i < prompts.ids.size(); ++i) {
    const auto& ids = prompts.ids[i];
    llava::KvCache a(reference.config.text, 1, static_cast<int64_t>(ids.size()), reference.options);
    llava::KvCache b(quantized.config.text, 1, static_cast<int64_t>(ids.size()), quantized.options);
    at::Tensor want = reference.prompt_logits(ids, prompts.pixels[i].to(reference.options), a, a.acquire()).argmax(-1);
    at::Tensor got = quantized.prompt_logits(ids, prompts.pixels[i].to(quantized.options), b, b.acquire()).argmax(-1);
    same += (want.cpu() == got.cpu()).sum().item<int64_t>();
    total += want.numel();
  }
  return static_cast<double>(same) / static_cast<double>(total);
}

void expect_quantized_agreement(at::Device device, at::ScalarType dtype) {
  const Prompts prompts = shapes_prompts(20);  // 60 prompts x 78 positions
  TinyModel reference(data_path("shapes-llava"), at::kFloat, {}, device);
  for (auto [kind, floor] : {std::pair{Quantize::kInt8, 0.99}, std::pair{Quantize::kInt4, 0.95}}) {
    TinyModel quantized(data_path("shapes-llava"), dtype, WeightPlacement{kind, false, -1}, device);
    const double agreement = top1_agreement(reference, quantized, prompts);
    std::printf("%s %s top-1 agreement with float32: %.4f\n", llava::to_string(kind),
                device.is_cuda() ? "cuda" : "cpu", agreement);
    EXPECT_GE(agreement, floor) << llava::to_string(kind);
    EXPECT_LT(agreement, 1.0 + 1e-9);
  }
}

TEST(ShapesQuantized, Int8AndInt4FollowFloat32OnTheCpu) { expect_quantized_agreement(at::kCPU, at::kFloat); }

// Our CUDA int8 / int4 kernels, float16 activations, against float32 on the same GPU.
TEST(ShapesQuantized, Int8AndInt4FollowFloat32OnCuda) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  expect_quantized_agreement(at::kCUDA, at::kHalf);
}

}  // namespace
