#include "common/model_config.h"

#include <gtest/gtest.h>

#include "common/errors.h"

namespace {

const std::string kHub7b = std::string(LLAVA_PIPE_SOURCE_DIR) + "/tests/data/hub-configs/llava-1.5-7b-hf";

TEST(ModelConfig, HubConfigGetsLlamaAndClipDefaults) {
  auto c = llava::load_llava_config(kHub7b);
  EXPECT_EQ(c.text.hidden_size, 4096);
  EXPECT_EQ(c.text.num_hidden_layers, 32);
  EXPECT_EQ(c.text.num_attention_heads, 32);
  EXPECT_EQ(c.text.num_key_value_heads, 32);
  EXPECT_EQ(c.text.intermediate_size, 11008);
  EXPECT_EQ(c.text.head_dim, 128);
  EXPECT_EQ(c.text.vocab_size, 32064);
  EXPECT_DOUBLE_EQ(c.text.rms_norm_eps, 1e-5);  // the file says so
  EXPECT_DOUBLE_EQ(c.text.rope_theta, 10000.0);
  EXPECT_EQ(c.vision.hidden_act, "quick_gelu");
  EXPECT_DOUBLE_EQ(c.vision.layer_norm_eps, 1e-5);
  EXPECT_EQ(c.image_token_index, 32000);
  EXPECT_EQ(c.image_tokens(), 576);
  EXPECT_EQ(c.vision_layers_needed(), 23);
}

TEST(ModelConfig, CountsLlava7bParameters) {
  auto c = llava::load_llava_config(kHub7b);
  // The full model has 7,063,427,072 parameters; the vision tower's last layer and
  // post-layernorm (12.6M) are not used by LLaVA and are not counted.
  EXPECT_EQ(c.language_parameters(), 6'738'939'904);
  EXPECT_EQ(c.projector_parameters(), 20'979'712);
  EXPECT_EQ(c.language_parameters() + c.projector_parameters() + c.vision_parameters(),
            7'063'427'072 - 12'596'224 - 2048);
  EXPECT_EQ(c.kv_bytes_per_token(2), 524288);
}

TEST(ModelConfig, ReadsRopeParametersOfTransformers5) {
  auto c = llava::parse_llava_config(
      R"({"text_config": {"rope_parameters": {"rope_type": "linear", "rope_theta": 500000.0,
          "factor": 2.0}, "num_key_value_heads": 8}})",
      "config.json");
  EXPECT_EQ(c.text.rope_type, "linear");
  EXPECT_DOUBLE_EQ(c.text.rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.text.rope_factor, 2.0);
  EXPECT_EQ(c.text.num_key_value_heads, 8);
  // No vision_config at all: LlavaConfig's own CLIP-L/336 defaults.
  EXPECT_EQ(c.vision.image_size, 336);
  EXPECT_EQ(c.vision.patch_size, 14);
}

TEST(ModelConfig, ReadsRopeScalingOfTransformers4) {
  auto c = llava::parse_llava_config(
      R"({"text_config": {"rope_theta": 20000, "rope_scaling": {"type": "linear", "factor": 4}}})",
      "config.json");
  EXPECT_EQ(c.text.rope_type, "linear");
  EXPECT_DOUBLE_EQ(c.text.rope_theta, 20000.0);
  EXPECT_DOUBLE_EQ(c.text.rope_factor, 4.0);
}

TEST(ModelConfig, AcceptsImageTokenIdAndFeatureLayerList) {
  auto c = llava::parse_llava_config(
      R"({"image_token_id": 7, "vision_feature_layer": [-3, -1],
          "vision_feature_select_strategy": "full"})",
      "config.json");
  EXPECT_EQ(c.image_token_index, 7);
  EXPECT_EQ(c.vision_feature_layers, (std::vector<int64_t>{-3, -1}));
  EXPECT_EQ(c.vision_layers_needed(), 24);
  EXPECT_EQ(c.image_tokens(), 577);
}

TEST(ModelConfig, RejectsUnusableConfigsByName) {
  auto message = [](const std::string& text) -> std::string {
    try {
      llava::parse_llava_config(text, "config.json");
    } catch (const llava::CheckpointError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(message(R"({"text_config": {"num_attention_heads": 32, "num_key_value_heads": 5}})"),
            "config.json: text_config: num_attention_heads (32) is not a multiple of "
            "num_key_value_heads (5)");
  EXPECT_EQ(message(R"({"text_config": {"hidden_size": "big"}})"),
            "config.json: text_config: field 'hidden_size' must be a whole number");
  EXPECT_EQ(message(R"({"vision_feature_layer": [-2.5]})"),
            "config.json: vision_feature_layer must be a whole number");
  EXPECT_EQ(message(R"({"text_config": {"hidden_size": 1e30}})"),
            "config.json: text_config: field 'hidden_size' must be a whole number");
  EXPECT_EQ(message(R"({"vision_feature_layer": -40})"),
            "config.json: vision_feature_layer -40 is outside the 24 vision layers");
  EXPECT_EQ(message("{not json"), message("{not json"));
  EXPECT_NE(message("{not json").find("not valid JSON"), std::string::npos);
  // Nested past 128 levels (common/json_depth.h): refused before anything copies it.
  const std::string deep =
      R"({"text_config": {"x": )" + std::string(200000, '[') + std::string(200000, ']') + "}}";
  EXPECT_NE(message(deep).find("config.json: not valid JSON ([json.exception.parse_error.101] "
                               "parse error at byte 149: nested deeper than 128 levels)"),
            std::string::npos)
      << message(deep);
  EXPECT_NE(message(R"({"text_config": {"rope_scaling": {"type": "yarn"}}})").find("yarn"),
            std::string::npos);
}

}  // namespace
