// Each of the CLIP tower's element-wise steps: our CUDA kernel first, where built and
// taking the tensors, then LibTorch's composition of the same math (transformers').
#include "stages/vision/clip_ops.h"

#include <cstdint>

#include "stages/kernel_launch.h"
#ifdef LLAVA_PIPE_CUDA_KERNELS
#include "stages/vision/clip_kernels.h"
#endif

namespace llava::ops {

bool kernels_take(const at::Tensor& x) {
  return x.is_contiguous() && kernels::take(x.device(), x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& delta,
                                                 const at::Tensor& w, const at::Tensor& b,
                                                 double eps, bool fused) {
  const int64_t h = x.size(-1);
#ifdef LLAVA_PIPE_CUDA_KERNELS
  if (fused && (!delta.defined() || delta.is_contiguous())) {
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor sum = delta.defined() ? at::empty_like(x) : x, y = at::empty_like(x);
    if (cuda::add_layer_norm(x.data_ptr(), delta.defined() ? delta.data_ptr() : nullptr,
                             delta.defined() ? sum.data_ptr() : nullptr, w.data_ptr(), b.data_ptr(),
                             y.data_ptr(), static_cast<int>(x.numel() / h), static_cast<int>(h),
                             static_cast<float>(eps), kernels::bf16(x), kernels::stream())) {
      return {sum, y};
    }
  }
#endif
  at::Tensor sum = delta.defined() ? x + delta : x;
  return {sum, at::layer_norm(sum, {h}, w, b, eps)};
}

at::Tensor quick_gelu(at::Tensor x, bool fused) {
#ifdef LLAVA_PIPE_CUDA_KERNELS
  if (fused && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0) {
    const c10::cuda::CUDAGuard guard(x.device());
    cuda::quick_gelu(x.data_ptr(), x.numel(), kernels::bf16(x), kernels::stream());
    return x;
  }
#endif
  return x * at::sigmoid(1.702 * x);
}

at::Tensor embed_layer_norm(const at::Tensor& patches, const at::Tensor& cls,
                            const at::Tensor& positions, const at::Tensor& w, const at::Tensor& b,
                            int64_t images, double eps, bool fused) {
  const int64_t h = patches.size(-1), tokens = positions.size(0);
#ifdef LLAVA_PIPE_CUDA_KERNELS
  if (fused) {
    const c10::cuda::CUDAGuard guard(patches.device());
    at::Tensor y = at::empty({images, tokens, h}, patches.options());
    if (cuda::embed_layer_norm(
            patches.data_ptr(), cls.data_ptr(), positions.data_ptr(), w.data_ptr(), b.data_ptr(),
            y.data_ptr(), static_cast<int>(images), static_cast<int>(tokens), static_cast<int>(h),
            static_cast<float>(eps), kernels::bf16(patches), kernels::stream())) {
      return y;
    }
  }
#endif
  const at::Tensor x =
      at::cat({cls.view({1, 1, h}).expand({images, 1, h}), patches.view({images, tokens - 1, h})},
              1) +
      positions.unsqueeze(0);  // [B, 1 + P, H]
  return add_layer_norm(x, {}, w, b, eps, fused).second;
}

}  // namespace llava::ops
