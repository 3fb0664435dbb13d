// CLIP ViT forward, as transformers' CLIPVisionModel computes it (hidden_states[i] is the
// output of layer i; index 0 is the pre-layernormed embeddings).
#include "stages/vision/clip_vision.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>

#include "stages/attention.h"
#include "stages/vision/clip_ops.h"

namespace llava {

ClipVision::ClipVision(const LlavaConfig& config, const Checkpoint& ckpt,
                       const at::TensorOptions& options)
    : config_(config.vision), keep_cls_(config.vision_feature_select_strategy == "full") {
  const int64_t h = config_.hidden_size, i = config_.intermediate_size, p = config_.patch_size;
  for (int64_t layer : config.vision_feature_layers) {
    feature_layers_.push_back(layer < 0 ? config_.num_hidden_layers + 1 + layer : layer);
  }
  // The patch convolution (stride = kernel, no bias) runs as one matrix product over the
  // patches' values: its weight as [H, C * p * p], zero columns up to a multiple of 8. At
  // batch 32 on an H200 cuDNN's convolution of 3 channels took 0.72 ms (plus 0.23 ms of
  // layout transforms); the product takes 0.04 ms, gathering the patches' rows ~0.04 ms.
  const int64_t k = config_.num_channels * p * p;
  const at::Tensor patch_w = ckpt.load("vision.embeddings.patch_embedding.weight",
                                       {h, config_.num_channels, p, p}, options);
  patch_matrix_ = at::zeros({h, (k + 7) / 8 * 8}, options);
  patch_matrix_.narrow(1, 0, k).copy_(patch_w.view({h, k}));
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
    l.qkv_w = at::cat({load("self_attn.q_proj.weight", {h, h}), load("self_attn.k_proj.weight", {h, h}),
                       load("self_attn.v_proj.weight", {h, h})});
    l.qkv_b = at::cat({load("self_attn.q_proj.bias", {h}), load("self_attn.k_proj.bias", {h}),
                       load("self_attn.v_proj.bias", {h})});
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

bool ClipVision::kernels(const at::Tensor& x) const {
  return fused_ && ops::kernels_take(x);
}

std::pair<at::Tensor, at::Tensor> ClipVision::add_norm(const at::Tensor& x, const at::Tensor& delta,
                                                       const at::Tensor& w, const at::Tensor& b) const {
  return ops::add_layer_norm(x, delta, w, b, config_.layer_norm_eps, kernels(x));
}

at::Tensor ClipVision::quick_gelu(at::Tensor x) const {
  if (config_.hidden_act != "quick_gelu") return at::gelu(x);
  return ops::quick_gelu(x, kernels(x));
}

at::Tensor ClipVision::attend(const ClipLayer& l, const at::Tensor& h, bool cudnn_attention) const {
  const int64_t b = h.size(0), t = h.size(1), heads = config_.num_attention_heads;
  const int64_t d = config_.hidden_size / heads;
  auto qkv = at::linear(h, l.qkv_w, l.qkv_b).split(config_.hidden_size, -1);
  auto split = [&](const at::Tensor& y) { return y.view({b, t, heads, d}).transpose(1, 2); };  // [B, heads, T, d]
  at::Tensor a = attention(split(qkv[0]), split(qkv[1]), split(qkv[2]), at::Tensor(),
                           1.0 / std::sqrt(static_cast<double>(d)), /*causal=*/false, cudnn_attention);
  return a.transpose(1, 2).reshape({b, t, config_.hidden_size});
}

at::Tensor ClipVision::embed(const at::Tensor& pixels) const {
  const int64_t b = pixels.size(0), p = config_.patch_size, c = config_.num_channels;
  const int64_t g = config_.image_size / p, k = c * p * p;
  // Each patch's c x p x p values as a row (the weight's order), in the weight's dtype.
  at::Tensor rows = at::empty({b * g * g, patch_matrix_.size(1)}, patch_matrix_.options());
  if (rows.size(1) > k) rows.narrow(1, k, rows.size(1) - k).zero_();
  rows.narrow(1, 0, k)
      .view({b, g, g, c, p, p})
      .copy_(pixels.narrow(2, 0, g * p)
                 .narrow(3, 0, g * p)
                 .reshape({b, c, g, p, g, p})
                 .permute({0, 2, 4, 1, 3, 5}));
  const at::Tensor patches = at::mm(rows, patch_matrix_.t());  // [B * g * g, H]
  return ops::embed_layer_norm(patches, class_embedding_, position_embedding_, pre_norm_w_,
                               pre_norm_b_, b, config_.layer_norm_eps,
                               kernels(patches));  // [B, 1 + g*g, H]
}

at::Tensor ClipVision::forward(const at::Tensor& pixels, bool cudnn_attention) const {
  at::Tensor x = embed(pixels);
  // hidden_states[i] (the output of layer i; 0: the embeddings), kept where selected,
  // without the CLS token unless the strategy keeps it.
  const int64_t first = keep_cls_ ? 0 : 1;
  std::vector<at::Tensor> selected(feature_layers_.size());
  auto keep = [&](size_t index, const at::Tensor& state) {
    for (size_t s = 0; s < feature_layers_.size(); ++s) {
      if (feature_layers_[s] == static_cast<int64_t>(index)) selected[s] = state;
    }
  };
  keep(0, x.slice(1, first));
  // Each layer: x += attention(LN1(x)); x += MLP(LN2(x)). The MLP's output is added by the
  // next layer's first norm (one kernel for both).
  at::Tensor delta;
  for (size_t n = 0; n < layers_.size(); ++n) {
    const ClipLayer& l = layers_[n];
    at::Tensor normed;
    std::tie(x, normed) = add_norm(x, delta, l.norm1_w, l.norm1_b);
    if (n > 0) keep(n, x.slice(1, first));
    std::tie(x, normed) = add_norm(x, at::linear(attend(l, normed, cudnn_attention), l.out_w, l.out_b), l.norm2_w, l.norm2_b);
    delta = at::linear(quick_gelu(at::linear(normed, l.fc1_w, l.fc1_b)), l.fc2_w, l.fc2_b);
  }
  // The deepest layer is selected (no later one is loaded): its sum only over the kept tokens.
  if (delta.defined()) keep(layers_.size(), x.slice(1, first) + delta.slice(1, first));
  // Contiguous: the projector's first product then adds its bias in the GEMM's epilogue.
  return selected.size() == 1 ? selected[0].contiguous()
                              : at::cat(selected, -1);  // [B, tokens, H * layers]
}

}  // namespace llava
