// LLaVA's multi-modal projector: linear_1 -> gelu -> linear_2, from CLIP features to the
// language model's embedding space.
#pragma once

#include <ATen/ATen.h>

#include "common/model_config.h"
#include "stages/checkpoint/checkpoint.h"

namespace llava {

class Projector {
 public:
  Projector(const LlavaConfig& config, const Checkpoint& checkpoint,
            const at::TensorOptions& options);
  // features: [B, tokens, vision_hidden * layers] -> [B, tokens, text_hidden]
  at::Tensor forward(const at::Tensor& features) const;
  // f(tensor&) on every weight, in a fixed order; f may replace one by an equal tensor.
  template <typename F>
  void visit(F&& f) {
    for (at::Tensor* t : {&w1_, &b1_, &w2_, &b2_}) {
      if (t->defined()) f(*t);
    }
  }

 private:
  at::Tensor w1_, b1_, w2_, b2_;
};

}  // namespace llava
