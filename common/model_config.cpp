// config.json -> LlavaConfig. Field names and defaults follow transformers 4.3x-5.x.
#include "common/model_config.h"

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <type_traits>

#include "common/errors.h"
#include "common/json_depth.h"

namespace llava {
namespace {

using json = nlohmann::json;

// An integer field must hold a JSON integer: nlohmann would cast 1e30 to one with a result
// that is undefined.
int64_t whole_number(const json& value, const std::string& what) {
  if (!value.is_number_integer() ||
      (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))) {
    throw CheckpointError(what + " must be a whole number");
  }
  return value.get<int64_t>();
}

class Fields {
 public:
  Fields(const json& object, std::string where) : object_(object), where_(std::move(where)) {}

  template <typename T>
  void read(const char* key, T& into) const {
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return;
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      into = static_cast<T>(whole_number(*it, where_ + ": field '" + key + "'"));
      return;
    }
    try {
      into = it->get<T>();
    } catch (const json::exception&) {
      throw CheckpointError(where_ + ": field '" + key + "' has the wrong type (" +
                            it->type_name() + ")");
    }
  }
  bool has(const char* key) const { return object_.contains(key) && !object_[key].is_null(); }
  const json& raw() const { return object_; }
  const std::string& where() const { return where_; }

 private:
  const json& object_;
  std::string where_;
};

void require_positive(const std::string& where, const char* key, int64_t value) {
  if (value <= 0) {
    throw CheckpointError(where + ": " + key + " must be positive, got " + std::to_string(value));
  }
}

TextConfig parse_text(const json& object, const std::string& where) {
  Fields f(object, where);
  TextConfig t;
  f.read("vocab_size", t.vocab_size);
  f.read("hidden_size", t.hidden_size);
  f.read("intermediate_size", t.intermediate_size);
  f.read("num_hidden_layers", t.num_hidden_layers);
  f.read("num_attention_heads", t.num_attention_heads);
  t.num_key_value_heads = t.num_attention_heads;
  f.read("num_key_value_heads", t.num_key_value_heads);
  t.head_dim = t.num_attention_heads > 0 ? t.hidden_size / t.num_attention_heads : 0;
  f.read("head_dim", t.head_dim);
  f.read("max_position_embeddings", t.max_position_embeddings);
  f.read("rms_norm_eps", t.rms_norm_eps);
  f.read("rope_theta", t.rope_theta);
  f.read("hidden_act", t.hidden_act);
  f.read("attention_bias", t.attention_bias);
  f.read("mlp_bias", t.mlp_bias);
  f.read("tie_word_embeddings", t.tie_word_embeddings);
  f.read("bos_token_id", t.bos_token_id);
  f.read("pad_token_id", t.pad_token_id);
  if (f.has("eos_token_id")) {
    const json& eos = object["eos_token_id"];
    t.eos_token_ids.clear();
    if (eos.is_array()) {
      for (const auto& id : eos) t.eos_token_ids.push_back(whole_number(id, where + ": eos_token_id"));
    } else {
      t.eos_token_ids.push_back(whole_number(eos, where + ": eos_token_id"));
    }
  }
  // RoPE: 4.x writes rope_theta + rope_scaling {type|rope_type, factor};
  // 5.x writes rope_parameters {rope_type, rope_theta, factor}.
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!f.has(key)) continue;
    const json& rope = object[key];
    if (!rope.is_object()) throw CheckpointError(where + ": " + key + " must be an object");
    Fields r(rope, where + "." + key);
    r.read("rope_theta", t.rope_theta);
    std::string type = t.rope_type;
    r.read("type", type);
    r.read("rope_type", type);
    t.rope_type = type;
    r.read("factor", t.rope_factor);
  }
  if (t.rope_type != "default" && t.rope_type != "linear") {
    throw CheckpointError(where + ": rope type '" + t.rope_type +
                          "' is not supported (default or linear)");
  }
  if (t.rope_type == "default") t.rope_factor = 1.0;
  if (t.hidden_act != "silu") {
    throw CheckpointError(where + ": hidden_act '" + t.hidden_act + "' is not supported (silu)");
  }
  for (auto [key, value] : {std::pair{"vocab_size", t.vocab_size}, {"hidden_size", t.hidden_size},
                            {"intermediate_size", t.intermediate_size},
                            {"num_hidden_layers", t.num_hidden_layers},
                            {"num_attention_heads", t.num_attention_heads},
                            {"num_key_value_heads", t.num_key_value_heads},
                            {"head_dim", t.head_dim}}) {
    require_positive(where, key, value);
  }
  if (t.num_attention_heads % t.num_key_value_heads != 0) {
    throw CheckpointError(where + ": num_attention_heads (" +
                          std::to_string(t.num_attention_heads) +
                          ") is not a multiple of num_key_value_heads (" +
                          std::to_string(t.num_key_value_heads) + ")");
  }
  if (t.head_dim % 2 != 0) throw CheckpointError(where + ": head_dim must be even for RoPE");
  return t;
}

VisionConfig parse_vision(const json& object, const std::string& where) {
  Fields f(object, where);
  VisionConfig v;
  f.read("hidden_size", v.hidden_size);
  f.read("intermediate_size", v.intermediate_size);
  f.read("num_hidden_layers", v.num_hidden_layers);
  f.read("num_attention_heads", v.num_attention_heads);
  f.read("num_channels", v.num_channels);
  f.read("image_size", v.image_size);
  f.read("patch_size", v.patch_size);
  f.read("layer_norm_eps", v.layer_norm_eps);
  f.read("hidden_act", v.hidden_act);
  for (auto [key, value] : {std::pair{"hidden_size", v.hidden_size},
                            {"intermediate_size", v.intermediate_size},
                            {"num_hidden_layers", v.num_hidden_layers},
                            {"num_attention_heads", v.num_attention_heads},
                            {"num_channels", v.num_channels}, {"image_size", v.image_size},
                            {"patch_size", v.patch_size}}) {
    require_positive(where, key, value);
  }
  if (v.hidden_size % v.num_attention_heads != 0) {
    throw CheckpointError(where + ": hidden_size is not a multiple of num_attention_heads");
  }
  if (v.image_size % v.patch_size != 0) {
    throw CheckpointError(where + ": image_size " + std::to_string(v.image_size) +
                          " is not a multiple of patch_size " + std::to_string(v.patch_size));
  }
  if (v.hidden_act != "quick_gelu" && v.hidden_act != "gelu") {
    throw CheckpointError(where + ": hidden_act '" + v.hidden_act +
                          "' is not supported (quick_gelu or gelu)");
  }
  return v;
}

}  // namespace

int64_t LlavaConfig::vision_layers_needed() const {
  int64_t deepest = 0;
  for (int64_t layer : vision_feature_layers) {
    int64_t index = layer < 0 ? vision.num_hidden_layers + 1 + layer : layer;
    deepest = std::max(deepest, index);
  }
  return deepest;
}

int64_t LlavaConfig::image_tokens() const {
  int64_t patches = vision.patches_per_side() * vision.patches_per_side();
  return vision_feature_select_strategy == "full" ? patches + 1 : patches;
}

int64_t LlavaConfig::vision_parameters() const {
  const int64_t h = vision.hidden_size, i = vision.intermediate_size;
  int64_t embeddings = vision.num_channels * vision.patch_size * vision.patch_size * h + h +
                       vision.num_positions() * h + 2 * h;  // patch, class, positions, pre-norm
  int64_t layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h;
  return embeddings + vision_layers_needed() * layer;
}

int64_t LlavaConfig::projector_parameters() const {
  const int64_t in = vision.hidden_size * static_cast<int64_t>(vision_feature_layers.size());
  const int64_t out = text.hidden_size;
  return in * out + out * out + (projector_bias ? 2 * out : 0);
}

int64_t LlavaConfig::language_parameters() const {
  const TextConfig& t = text;
  const int64_t q = t.num_attention_heads * t.head_dim, kv = t.num_key_value_heads * t.head_dim;
  int64_t attention = t.hidden_size * (q + 2 * kv) + q * t.hidden_size +
                      (t.attention_bias ? q + 2 * kv + t.hidden_size : 0);
  int64_t mlp = 3 * t.hidden_size * t.intermediate_size +
                (t.mlp_bias ? 2 * t.intermediate_size + t.hidden_size : 0);
  int64_t layer = attention + mlp + 2 * t.hidden_size;
  int64_t embed = t.vocab_size * t.hidden_size;
  return embed * (t.tie_word_embeddings ? 1 : 2) + t.num_hidden_layers * layer + t.hidden_size;
}

int64_t LlavaConfig::kv_bytes_per_token(int64_t element_bytes) const {
  return 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * element_bytes;
}

LlavaConfig parse_llava_config(const std::string& json_text, const std::string& where) {
  json root;
  try {
    root = parse_json(json_text);
  } catch (const json::parse_error& e) {
    throw CheckpointError(where + ": not valid JSON (" + e.what() + ")");
  }
  if (!root.is_object()) throw CheckpointError(where + ": expected a JSON object");
  LlavaConfig config;
  Fields f(root, where);
  static const json kEmpty = json::object();
  // LlavaConfig's own defaults when a sub-config is absent altogether.
  json vision_default = {{"hidden_size", 1024}, {"intermediate_size", 4096}, {"patch_size", 14},
                         {"image_size", 336}, {"num_hidden_layers", 24},
                         {"num_attention_heads", 16}};
  const json& vision = f.has("vision_config") ? root["vision_config"] : vision_default;
  const json& text = f.has("text_config") ? root["text_config"] : kEmpty;
  if (!vision.is_object() || !text.is_object()) {
    throw CheckpointError(where + ": text_config and vision_config must be objects");
  }
  config.text = parse_text(text, where + ": text_config");
  config.vision = parse_vision(vision, where + ": vision_config");
  f.read("image_token_index", config.image_token_index);
  // llava-hf writes the pad token at the top level too (32001, an added token).
  if (config.text.pad_token_id < 0 && f.has("pad_token_id")) {
    f.read("pad_token_id", config.text.pad_token_id);
  }
  f.read("image_token_id", config.image_token_index);
  f.read("projector_hidden_act", config.projector_hidden_act);
  f.read("multimodal_projector_bias", config.projector_bias);
  f.read("vision_feature_select_strategy", config.vision_feature_select_strategy);
  if (f.has("tie_word_embeddings")) f.read("tie_word_embeddings", config.text.tie_word_embeddings);
  if (f.has("vision_feature_layer")) {
    const json& layer = root["vision_feature_layer"];
    config.vision_feature_layers.clear();
    if (layer.is_array()) {
      for (const auto& l : layer) {
        config.vision_feature_layers.push_back(whole_number(l, where + ": vision_feature_layer"));
      }
    } else {
      config.vision_feature_layers.push_back(whole_number(layer, where + ": vision_feature_layer"));
    }
  }
  if (config.vision_feature_layers.empty()) {
    throw CheckpointError(where + ": vision_feature_layer is an empty list");
  }
  for (int64_t layer : config.vision_feature_layers) {
    int64_t n = config.vision.num_hidden_layers;
    if (layer < -(n + 1) || layer > n) {
      throw CheckpointError(where + ": vision_feature_layer " + std::to_string(layer) +
                            " is outside the " + std::to_string(n) + " vision layers");
    }
  }
  if (config.vision_feature_select_strategy != "default" &&
      config.vision_feature_select_strategy != "full") {
    throw CheckpointError(where + ": vision_feature_select_strategy '" +
                          config.vision_feature_select_strategy + "' is not default or full");
  }
  if (config.projector_hidden_act != "gelu") {
    throw CheckpointError(where + ": projector_hidden_act '" + config.projector_hidden_act +
                          "' is not supported (gelu)");
  }
  // The image token may lie past the embedding table (LlavaConfig's defaults do that):
  // its positions are always replaced by image embeddings, never looked up.
  if (config.image_token_index < 0) {
    throw CheckpointError(where + ": image_token_index " +
                          std::to_string(config.image_token_index) + " is negative");
  }
  return config;
}

LlavaConfig load_llava_config(const std::string& folder) {
  const std::string path = folder + "/config.json";
  std::ifstream in(path);
  if (!in) throw CheckpointError(path + ": cannot open (is this a llava-hf checkpoint folder?)");
  std::stringstream text;
  text << in.rdbuf();
  return parse_llava_config(text.str(), path);
}

}  // namespace llava
