// The CLIP tower's element-wise steps, each one operation whichever kernels run it: our
// CUDA kernels (clip_kernels.h) where they were built and take the tensors, else LibTorch's
// kernels composing the same math. The choice lives here so that clip_vision.cpp reads as
// the model's math.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace llava::ops {

// Whether our CUDA kernels were built and take x (on a CUDA device, contiguous, float16 or
// bfloat16). The callers' `fused` arguments below are this and the caller's own switch
// (ClipVision::use_fused_kernels).
bool kernels_take(const at::Tensor& x);

// (x + delta, LayerNorm(x + delta) * w + b) over the last dimension; with delta undefined,
// (x, LayerNorm(x) * w + b).
std::pair<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& delta,
                                                 const at::Tensor& w, const at::Tensor& b,
                                                 double eps, bool fused);

// x * sigmoid(1.702 x), in place where fused.
at::Tensor quick_gelu(at::Tensor x, bool fused);

// The tower's first hidden state [B, 1 + P, H]: LayerNorm(the class embedding cls [H] and
// patches [B * P, H], plus positions [1 + P, H]) * w + b.
at::Tensor embed_layer_norm(const at::Tensor& patches, const at::Tensor& cls,
                            const at::Tensor& positions, const at::Tensor& w, const at::Tensor& b,
                            int64_t images, double eps, bool fused);

}  // namespace llava::ops
