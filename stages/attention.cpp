// One attention for CLIP and LLaMA, so that the fused path and its fallback live once.
#include "stages/attention.h"

#include <torch/version.h>

#include <cmath>

namespace llava {

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& mask, double scale, bool causal) {
#if TORCH_VERSION_MAJOR >= 2
  // Fused (flash / memory-efficient) kernels on CUDA; the math kernel on CPU. The mask
  // must be in the query's dtype.
  c10::optional<at::Tensor> m;
  if (mask.defined()) m = mask.to(q.scalar_type());
  return at::scaled_dot_product_attention(q, k, v, m, /*dropout_p=*/0.0, causal, scale);
#else
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
