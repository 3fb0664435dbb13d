// One attention for CLIP and LLaMA, so that the fused path and its fallback live once.
#include "stages/attention.h"

#include <ATen/Context.h>
#include <torch/version.h>

#include <cmath>

namespace llava {

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& mask, double scale, bool causal, bool fixed_shapes) {
#if TORCH_VERSION_MAJOR >= 2
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 4
  // cuDNN's attention builds an execution plan for every new shape, and decoding changes
  // the key length at every step: measured on an H100 (7B, batch 1), 79 ms a step with
  // it against 17 ms for the same forward at a fixed length. Flash / memory-efficient
  // kernels need no plan.
  // Shapes that repeat: cuDNN is allowed for this call (ncu on an H100, CLIP-L/336 at
  // batch 32: 0.189 ms a layer against 0.257 for the flash kernel).
  at::globalContext().setSDPUseCuDNN(fixed_shapes);
  struct CudnnOff {
    ~CudnnOff() { at::globalContext().setSDPUseCuDNN(false); }
  } restore;
#else
  (void)fixed_shapes;
#endif
  // Fused (flash / memory-efficient) kernels on CUDA; the math kernel on CPU. The mask
  // must be in the query's dtype.
  c10::optional<at::Tensor> m;
  if (mask.defined()) m = mask.to(q.scalar_type());
  return at::scaled_dot_product_attention(q, k, v, m, /*dropout_p=*/0.0, causal, scale);
#else
  (void)fixed_shapes;
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2)).to(at::kFloat) * scale;
  if (mask.defined()) scores = scores + mask.to(at::kFloat);
  if (causal) {
    const int64_t n = q.size(-2);
    scores = scores.masked_fill(at::ones({n, n}, q.options().dtype(at::kBool)).triu(1), -INFINITY);
  }
  return at::matmul(at::softmax(scores, -1).to(q.scalar_type()), v);
#endif
}

}  // namespace llava
