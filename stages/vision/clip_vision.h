// The CLIP vision transformer as LLaVA uses it: patch embedding, class token, positions,
// pre-layernorm, encoder layers up to the deepest feature layer (later layers are neither
// loaded nor run), feature selection.
#pragma once

#include <ATen/ATen.h>

#include <utility>
#include <vector>

#include "common/model_config.h"
#include "stages/checkpoint/checkpoint.h"

namespace llava {

struct ClipLayer {
  at::Tensor norm1_w, norm1_b;
  at::Tensor qkv_w, qkv_b;  // q, k and v as one product: [3H, H], [3H]
  at::Tensor out_w, out_b;
  at::Tensor norm2_w, norm2_b;
  at::Tensor fc1_w, fc1_b, fc2_w, fc2_b;
  template <typename F>
  void visit(F&& f) {
    for (at::Tensor* t : {&norm1_w, &norm1_b, &qkv_w, &qkv_b, &out_w, &out_b, &norm2_w, &norm2_b,
                          &fc1_w, &fc1_b, &fc2_w, &fc2_b}) {
      if (t->defined()) f(*t);
    }
  }
};

class ClipVision {
 public:
  ClipVision(const LlavaConfig& config, const Checkpoint& checkpoint,
             const at::TensorOptions& options);

  // pixels: [B, 3, S, S] (any float dtype) -> selected features
  // [B, image_tokens, hidden * feature_layers]. `cudnn_attention`: cuDNN's attention may
  // run (its plan per shape pays off: the tower's shapes repeat).
  at::Tensor forward(const at::Tensor& pixels, bool cudnn_attention = true) const;
  // Our CUDA kernels (quick GELU, residual add + LayerNorm, embeddings + LayerNorm) where
  // built (default on); off, LibTorch's kernels compose the same math.
  void use_fused_kernels(bool on) { fused_ = on; }
  // f(tensor&) on every weight, in a fixed order; f may replace one by an equal tensor.
  template <typename F>
  void visit(F&& f) {
    for (at::Tensor* t : {&patch_matrix_, &class_embedding_, &position_embedding_, &pre_norm_w_, &pre_norm_b_}) {
      if (t->defined()) f(*t);
    }
    for (auto& layer : layers_) layer.visit(f);
  }

 private:
  // (x + delta, LayerNorm(x + delta)); with delta undefined, (x, LayerNorm(x)).
  std::pair<at::Tensor, at::Tensor> add_norm(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& w,
                                             const at::Tensor& b) const;
  at::Tensor quick_gelu(at::Tensor x) const;  // in place where fused
  // pixels [B, C, S, S] -> the first hidden state: LayerNorm(class token and patches +
  // positions) [B, 1 + g*g, H].
  at::Tensor embed(const at::Tensor& pixels) const;
  // Attention of one layer over its normed input h [B, T, H] -> [B, T, H].
  at::Tensor attend(const ClipLayer& layer, const at::Tensor& h, bool cudnn_attention) const;
  bool kernels(const at::Tensor& x) const;  // our CUDA kernels take x

  VisionConfig config_;
  std::vector<int64_t> feature_layers_;  // as indices into [embeddings, layer 1, ...]
  bool keep_cls_;
  at::Tensor patch_matrix_, class_embedding_, position_embedding_, pre_norm_w_, pre_norm_b_;
  std::vector<ClipLayer> layers_;
  bool fused_ = true;
};

}  // namespace llava
