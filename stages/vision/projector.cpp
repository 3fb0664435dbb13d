// The projector: two linear layers with an exact (erf) GELU between them.
#include "stages/vision/projector.h"

namespace llava {

Projector::Projector(const LlavaConfig& config, const Checkpoint& ckpt,
                     const at::TensorOptions& options) {
  const int64_t in = config.vision.hidden_size * static_cast<int64_t>(config.vision_feature_layers.size());
  const int64_t out = config.text.hidden_size;
  w1_ = ckpt.load("projector.linear_1.weight", {out, in}, options);
  w2_ = ckpt.load("projector.linear_2.weight", {out, out}, options);
  if (config.projector_bias) {
    b1_ = ckpt.load("projector.linear_1.bias", {out}, options);
    b2_ = ckpt.load("projector.linear_2.bias", {out}, options);
  }
}

at::Tensor Projector::forward(const at::Tensor& features) const {
  return at::linear(at::gelu(at::linear(features, w1_, b1_)), w2_, b2_);
}

}  // namespace llava
