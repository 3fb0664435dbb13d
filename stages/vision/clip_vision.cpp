// CLIP ViT forward, as transformers' CLIPVisionModel computes it (hidden_states[i] is the
// output of layer i; index 0 is the pre-layernormed embeddings).
#include "stages/vision/clip_vision.h"

#include <cmath>
#include <string>

#include "stages/attention.h"

namespace llava {

ClipVision::ClipVision(const LlavaConfig& config, const Checkpoint& ckpt,
                       const at::TensorOptions& options)
    : config_(config.vision), keep_cls_(config.vision_feature_select_strategy == "full") {
  const int64_t h = config_.hidden_size, i = config_.intermediate_size, p = config_.patch_size;
  for (int64_t layer : config.vision_feature_layers) {
    feature_layers_.push_back(layer < 0 ? config_.num_hidden_layers + 1 + layer : layer);
  }
  patch_w_ = ckpt.load("vision.embeddings.patch_embedding.weight", {h, config_.num_channels, p, p},
                       options);
  class_embedding_ = ckpt.load("vision.embeddings.class_embedding", {h}, options);
  position_embedding_ = ckpt.load("vision.embeddings.position_embedding.weight",
                                  {config_.num_positions(), h}, options);
  pre_norm_w_ = ckpt.load("vision.pre_layrnorm.weight", {h}, options);
  pre_norm_b_ = ckpt.load("vision.pre_layrnorm.bias", {h}, options);
  for (int64_t n = 0; n < config.vision_layers_needed(); ++n) {
    const std::string prefix = "vision.encoder.layers." + std::to_string(n) + ".";
    auto load = [&](const std::string& name, std::vector<int64_t> shape) {
      return ckpt.load(prefix + name, shape, options);
    };
    ClipLayer l;
    l.norm1_w = load("layer_norm1.weight", {h});
    l.norm1_b = load("layer_norm1.bias", {h});
    l.q_w = load("self_attn.q_proj.weight", {h, h});
    l.q_b = load("self_attn.q_proj.bias", {h});
    l.k_w = load("self_attn.k_proj.weight", {h, h});
    l.k_b = load("self_attn.k_proj.bias", {h});
    l.v_w = load("self_attn.v_proj.weight", {h, h});
    l.v_b = load("self_attn.v_proj.bias", {h});
    l.out_w = load("self_attn.out_proj.weight", {h, h});
    l.out_b = load("self_attn.out_proj.bias", {h});
    l.norm2_w = load("layer_norm2.weight", {h});
    l.norm2_b = load("layer_norm2.bias", {h});
    l.fc1_w = load("mlp.fc1.weight", {i, h});
    l.fc1_b = load("mlp.fc1.bias", {i});
    l.fc2_w = load("mlp.fc2.weight", {h, i});
    l.fc2_b = load("mlp.fc2.bias", {h});
    layers_.push_back(std::move(l));
  }
}

at::Tensor ClipVision::layer_forward(const ClipLayer& l, const at::Tensor& x) const {
  const int64_t b = x.size(0), t = x.size(1), heads = config_.num_attention_heads;
  const int64_t d = config_.hidden_size / heads;
  const double eps = config_.layer_norm_eps;
  // x: [B, T, H]
  at::Tensor h = at::layer_norm(x, {config_.hidden_size}, l.norm1_w, l.norm1_b, eps);
  auto split = [&](const at::Tensor& y) { return y.view({b, t, heads, d}).transpose(1, 2); };
  at::Tensor q = split(at::linear(h, l.q_w, l.q_b));  // [B, heads, T, d]
  at::Tensor k = split(at::linear(h, l.k_w, l.k_b));
  at::Tensor v = split(at::linear(h, l.v_w, l.v_b));
  at::Tensor a = attention(q, k, v, at::Tensor(), 1.0 / std::sqrt(static_cast<double>(d)));
  a = a.transpose(1, 2).reshape({b, t, config_.hidden_size});  // [B, T, H]
  at::Tensor y = x + at::linear(a, l.out_w, l.out_b);
  h = at::layer_norm(y, {config_.hidden_size}, l.norm2_w, l.norm2_b, eps);
  h = at::linear(h, l.fc1_w, l.fc1_b);  // [B, T, I]
  h = config_.hidden_act == "quick_gelu" ? h * at::sigmoid(1.702 * h) : at::gelu(h);
  return y + at::linear(h, l.fc2_w, l.fc2_b);
}

at::Tensor ClipVision::forward(const at::Tensor& pixels) const {
  const int64_t b = pixels.size(0), h = config_.hidden_size;
  at::Tensor x = at::conv2d(pixels.to(patch_w_.scalar_type()), patch_w_, {},
                            {config_.patch_size, config_.patch_size});  // [B, H, g, g]
  x = x.flatten(2).transpose(1, 2);                                    // [B, g*g, H]
  at::Tensor cls = class_embedding_.view({1, 1, h}).expand({b, 1, h});
  x = at::cat({cls, x}, 1) + position_embedding_.unsqueeze(0);        // [B, 1 + g*g, H]
  x = at::layer_norm(x, {h}, pre_norm_w_, pre_norm_b_, config_.layer_norm_eps);
  std::vector<at::Tensor> hidden_states = {x};
  for (const auto& layer : layers_) {
    x = layer_forward(layer, x);
    hidden_states.push_back(x);
  }
  std::vector<at::Tensor> selected;
  for (int64_t index : feature_layers_) selected.push_back(hidden_states[static_cast<size_t>(index)]);
  at::Tensor features = selected.size() == 1 ? selected[0] : at::cat(selected, -1);
  return keep_cls_ ? features : features.slice(1, 1);  // drop CLS: [B, g*g, H * layers]
}

}  // namespace llava
