#include "stages/checkpoint/checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "common/errors.h"
#include "common/model_config.h"
#include "tests/stages/reference.h"

namespace {

using llava::CheckpointError;
using llava::test::data_path;

// Writes a safetensors file with the given header text and `data_bytes` bytes of data.
std::string write_safetensors(const std::string& name, const std::string& header,
                              size_t data_bytes, int64_t declared_header = -1) {
  std::string path = testing::TempDir() + name;
  std::ofstream out(path, std::ios::binary);
  uint64_t n = declared_header >= 0 ? static_cast<uint64_t>(declared_header) : header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << std::string(data_bytes, '\x01');
  return path;
}

std::string error_of(const std::string& path) {
  try {
    llava::SafetensorsFile file(path);
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, ReadsAValidFile) {
  auto path = write_safetensors(
      "ok.safetensors", R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}})", 16);
  llava::SafetensorsFile file(path);
  EXPECT_EQ(file.view("w").sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(file.view("w").scalar_type(), at::kFloat);
}

TEST(Safetensors, RejectsOffsetPastEndOfFile) {
  auto path = write_safetensors(
      "past.safetensors", R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8);
  EXPECT_NE(error_of(path).find("tensor 'w': bytes [0, 16) lie outside the 8-byte data section"),
            std::string::npos)
      << error_of(path);
}

TEST(Safetensors, RejectsSizeThatDisagreesWithShape) {
  auto path = write_safetensors(
      "lie.safetensors", R"({"w": {"dtype": "F16", "shape": [3], "data_offsets": [0, 8]}})", 8);
  EXPECT_NE(error_of(path).find("tensor 'w': holds 8 bytes but dtype and shape need 6"),
            std::string::npos);
}

// Found by tests/fuzz: an offset past 2^64 (a float to nlohmann) must be an error, not a cast.
TEST(Safetensors, RejectsNumbersThatAreNotSixtyFourBitIntegers) {
  auto huge = write_safetensors(
      "huge-offset.safetensors",
      R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [228888888888888888888, 0]}})", 8);
  EXPECT_NE(error_of(huge).find("data_offsets: expected a non-negative integer"), std::string::npos)
      << error_of(huge);
  auto fractional = write_safetensors(
      "fraction.safetensors", R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", 8);
  EXPECT_NE(error_of(fractional).find("shape: expected an integer"), std::string::npos);
}

TEST(Safetensors, RejectsHeaderLongerThanFile) {
  auto path = write_safetensors("long.safetensors", "{}", 0, /*declared_header=*/1 << 20);
  EXPECT_NE(error_of(path).find("does not fit"), std::string::npos);
}

TEST(Safetensors, RejectsTruncatedAndGarbageFiles) {
  std::string tiny = testing::TempDir() + "tiny.safetensors";
  std::ofstream(tiny) << "abc";
  EXPECT_NE(error_of(tiny).find("too short"), std::string::npos);
  auto garbage = write_safetensors("garbage.safetensors", "{not json", 0);
  EXPECT_NE(error_of(garbage).find("not valid JSON"), std::string::npos);
  auto dtype = write_safetensors(
      "dtype.safetensors", R"({"w": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}})", 1);
  EXPECT_NE(error_of(dtype).find("unknown dtype 'F7'"), std::string::npos);
  auto huge = write_safetensors(
      "huge.safetensors",
      R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 8], "data_offsets": [0, 4]}})", 4);
  EXPECT_NE(error_of(huge).find("shape overflows 64 bits"), std::string::npos);
  EXPECT_NE(error_of(testing::TempDir() + "missing.safetensors").find("cannot open"),
            std::string::npos);
}

TEST(Checkpoint, MapsTheThreeNameLayoutsToOneForm) {
  using llava::canonical_tensor_name;
  EXPECT_EQ(canonical_tensor_name("language_model.model.layers.3.mlp.up_proj.weight"),
            "language.layers.3.mlp.up_proj.weight");
  EXPECT_EQ(canonical_tensor_name("model.language_model.layers.3.mlp.up_proj.weight"),
            "language.layers.3.mlp.up_proj.weight");
  EXPECT_EQ(canonical_tensor_name("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"),
            "vision.encoder.layers.0.mlp.fc1.weight");
  EXPECT_EQ(canonical_tensor_name("vision_tower.encoder.layers.0.mlp.fc1.weight"),
            "vision.encoder.layers.0.mlp.fc1.weight");
  EXPECT_EQ(canonical_tensor_name("model.vision_tower.vision_model.pre_layrnorm.bias"),
            "vision.pre_layrnorm.bias");
  EXPECT_EQ(canonical_tensor_name("language_model.lm_head.weight"), "lm_head.weight");
  EXPECT_EQ(canonical_tensor_name("lm_head.weight"), "lm_head.weight");
  EXPECT_EQ(canonical_tensor_name("model.multi_modal_projector.linear_1.bias"),
            "projector.linear_1.bias");
  EXPECT_EQ(canonical_tensor_name("something.else"), "");
}

TEST(Checkpoint, EveryLayoutHoldsTheSameWeights) {
  llava::Checkpoint v5(data_path("tiny-llava"));
  llava::Checkpoint hub(data_path("tiny-llava-layouts/hub-sharded"));
  llava::Checkpoint v452(data_path("tiny-llava-layouts/v452-f16"));
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  for (const char* name : {"language.layers.2.self_attn.k_proj.weight", "lm_head.weight",
                           "vision.encoder.layers.1.mlp.fc2.bias", "projector.linear_2.weight",
                           "vision.embeddings.class_embedding", "language.embed_tokens.weight"}) {
    const auto shape = v5.shape(name);
    at::Tensor a = v5.load(name, shape, f32);
    EXPECT_TRUE(at::equal(a, hub.load(name, shape, f32))) << name;
    // float16 copy: equal after rounding to float16
    EXPECT_TRUE(at::equal(a.to(at::kHalf).to(at::kFloat), v452.load(name, shape, f32))) << name;
  }
  EXPECT_EQ(hub.original_name("lm_head.weight"), "language_model.lm_head.weight");
  EXPECT_EQ(v452.original_name("lm_head.weight"), "lm_head.weight");
}

// Loads to CUDA in the file's dtype go through the pinned staging ring: byte for byte the
// file's tensors. The ring alone: a buffer of 10 MB + 3 bytes through 2 buffers of 1 MiB +
// 5 bytes (chunks straddle, buffers are reused), and through the default ring (one chunk,
// copied out of the source by several threads); the source changes as soon as copy returns.
TEST(Checkpoint, OnCudaStagedLoadsGiveTheFilesBytes) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  llava::Checkpoint ckpt(data_path("tiny-llava"));
  const auto cpu = at::TensorOptions().dtype(at::kFloat), cuda = cpu.device(at::kCUDA);
  for (const char* name :
       {"language.embed_tokens.weight", "language.layers.2.self_attn.k_proj.weight",
        "vision.encoder.layers.1.mlp.fc2.bias", "projector.linear_2.weight"}) {
    const auto shape = ckpt.shape(name);
    EXPECT_TRUE(at::equal(ckpt.load(name, shape, cuda).cpu(), ckpt.load(name, shape, cpu))) << name;
  }
  ckpt.release_staging();
  auto pattern = [](size_t i) { return static_cast<uint8_t>((i * 131 + i / 7) & 0xff); };
  for (int ring = 0; ring < 2; ++ring) {
    std::vector<uint8_t> bytes(10'000'003);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = pattern(i);
    at::Tensor device = at::empty({static_cast<int64_t>(bytes.size())},
                                  at::TensorOptions().dtype(at::kByte).device(at::kCUDA));
    {
      auto staging = ring == 0 ? std::make_unique<llava::PinnedStaging>((1 << 20) + 5, 2)
                               : std::make_unique<llava::PinnedStaging>();
      staging->copy(bytes.data(), device.data_ptr(), bytes.size(), device.device());
      std::fill(bytes.begin(), bytes.end(), 0);
    }
    const at::Tensor back = device.cpu();
    const uint8_t* got = back.data_ptr<uint8_t>();
    size_t wrong = 0;
    for (size_t i = 0; i < bytes.size(); ++i) wrong += got[i] != pattern(i);
    EXPECT_EQ(wrong, 0u) << "ring " << ring;
  }
}

TEST(Checkpoint, MissingTensorIsNamedWithItsExpectedShape) {
  llava::Checkpoint ckpt(data_path("tiny-llava"));
  try {
    ckpt.load("language.layers.9.mlp.up_proj.weight", {128, 64}, at::TensorOptions());
    FAIL();
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "missing tensor 'language.layers.9.mlp.up_proj.weight' (expected shape [128, 64])"),
              std::string::npos)
        << e.what();
  }
}

TEST(Checkpoint, MisShapedTensorIsNamedWithBothShapes) {
  llava::Checkpoint ckpt(data_path("tiny-llava"));
  try {
    ckpt.load("language.layers.0.mlp.up_proj.weight", {64, 128}, at::TensorOptions());
    FAIL();
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'language_model.model.layers.0.mlp.up_proj.weight'"
                                         " has shape [128, 64], expected [64, 128]"),
              std::string::npos)
        << e.what();
  }
}

TEST(Checkpoint, FolderWithoutWeightsIsAnError) {
  EXPECT_THROW(llava::Checkpoint(data_path("hub-configs/llava-1.5-7b-hf")), CheckpointError);
}

}  // namespace

namespace {

TEST(Safetensors, SavedFileReadsBackExactly) {
  std::map<std::string, at::Tensor> tensors = {
      {"a", at::randn({3, 5})}, {"b", at::arange(7, at::kLong)}, {"c", at::randn({2}).to(at::kHalf)}};
  const std::string path = testing::TempDir() + "saved.safetensors";
  llava::save_safetensors(path, tensors);
  llava::SafetensorsFile file(path);
  for (const auto& [name, tensor] : tensors) EXPECT_TRUE(at::equal(file.view(name), tensor)) << name;
}

}  // namespace
