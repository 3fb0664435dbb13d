// Scaled dot-product attention for both models: LibTorch's fused kernel where it exists
// (2.x), the textbook float32-softmax formula elsewhere (LibTorch 1.13).
#pragma once

#include <ATen/ATen.h>

namespace llava {

// q: [B, heads, Tq, D]; k, v: [B, heads, Tk, D]; mask: additive float mask broadcastable
// to [B, heads, Tq, Tk] (0 = attend, -inf = not), or undefined. `causal` (with no mask,
// Tq == Tk): query i sees keys 0..i, through the flash kernel where there is one.
// `fixed_shapes`: the caller's shapes repeat (the vision tower's), so cuDNN's attention,
// which builds a plan per shape, may run. Returns [B, heads, Tq, D].
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& mask, double scale, bool causal = false, bool fixed_shapes = false);

}  // namespace llava
