// The CLIP vision transformer as LLaVA uses it: patch embedding, class token, positions,
// pre-layernorm, encoder layers up to the deepest feature layer (later layers are neither
// loaded nor run), feature selection.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "common/model_config.h"
#include "stages/checkpoint/checkpoint.h"

namespace llava {

struct ClipLayer {
  at::Tensor norm1_w, norm1_b;
  at::Tensor q_w, q_b, k_w, k_b, v_w, v_b, out_w, out_b;
  at::Tensor norm2_w, norm2_b;
  at::Tensor fc1_w, fc1_b, fc2_w, fc2_b;
};

class ClipVision {
 public:
  ClipVision(const LlavaConfig& config, const Checkpoint& checkpoint,
             const at::TensorOptions& options);

  // pixels: [B, 3, S, S] (any float dtype) -> selected features
  // [B, image_tokens, hidden * feature_layers].
  at::Tensor forward(const at::Tensor& pixels) const;

 private:
  at::Tensor layer_forward(const ClipLayer& layer, const at::Tensor& x) const;

  VisionConfig config_;
  std::vector<int64_t> feature_layers_;  // as indices into [embeddings, layer 1, ...]
  bool keep_cls_;
  at::Tensor patch_w_, class_embedding_, position_embedding_, pre_norm_w_, pre_norm_b_;
  std::vector<ClipLayer> layers_;
};

}  // namespace llava
