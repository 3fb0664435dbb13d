// A LLaVA checkpoint's config.json, with transformers' defaults (LlamaConfig,
// CLIPVisionConfig, LlavaConfig) applied to every field the file leaves out.
// LibTorch-free so that the plan (`llava-pipe check`) and the workers share it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llava {

struct TextConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // = num_attention_heads when absent
  int64_t head_dim = 128;            // = hidden_size / num_attention_heads when absent
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::string rope_type = "default";  // "default" or "linear"
  double rope_factor = 1.0;           // linear scaling: positions are divided by it
  std::string hidden_act = "silu";
  bool attention_bias = false;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  std::vector<int64_t> eos_token_ids = {2};
  int64_t bos_token_id = 1;
  int64_t pad_token_id = -1;  // -1: none declared
};

struct VisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t num_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 32;
  double layer_norm_eps = 1e-5;
  std::string hidden_act = "quick_gelu";
  int64_t patches_per_side() const { return image_size / patch_size; }
  int64_t num_positions() const { return patches_per_side() * patches_per_side() + 1; }
};

struct LlavaConfig {
  TextConfig text;
  VisionConfig vision;
  int64_t image_token_index = 32000;
  std::string projector_hidden_act = "gelu";
  bool projector_bias = true;
  // Hidden-state indices (into [embeddings, layer 1, ..., layer N]) whose outputs are
  // concatenated; negative counts from the end. Usually one: -2.
  std::vector<int64_t> vision_feature_layers = {-2};
  std::string vision_feature_select_strategy = "default";  // "default" drops CLS, "full" keeps it

  // Encoder layers that must run to reach every feature layer.
  int64_t vision_layers_needed() const;
  // Embeddings one image becomes (576 for LLaVA-1.5).
  int64_t image_tokens() const;
  int64_t vision_parameters() const;     // the layers that run, plus embeddings
  int64_t projector_parameters() const;
  int64_t language_parameters() const;
  // Bytes of K and V for one token across all layers, at `element_bytes` per value.
  int64_t kv_bytes_per_token(int64_t element_bytes) const;
};

// Parses `folder`/config.json. Throws CheckpointError naming the file and field.
LlavaConfig load_llava_config(const std::string& folder);
LlavaConfig parse_llava_config(const std::string& json_text, const std::string& name_for_errors);

}  // namespace llava
