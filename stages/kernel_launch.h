// What the C++ side of our CUDA kernels' launches shares (the ops files: llama_ops.cpp,
// clip_ops.cpp): whether the kernels were built and take tensors of a device and dtype, and,
// in builds with them, the current stream and the dtype flag each launch passes.
#pragma once

#include <ATen/ATen.h>

#ifdef LLAVA_PIPE_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace llava::kernels {

// Built (CMake found nvcc) and taking these: float16 or bfloat16 on a CUDA device.
inline bool take(const at::Device& device, at::ScalarType dtype) {
#ifdef LLAVA_PIPE_CUDA_KERNELS
  return device.is_cuda() && (dtype == at::kHalf || dtype == at::kBFloat16);
#else
  (void)device, (void)dtype;
  return false;
#endif
}

#ifdef LLAVA_PIPE_CUDA_KERNELS
inline bool bf16(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16;
}
inline void* stream() {
  return at::cuda::getCurrentCUDAStream().stream();
}
#endif

}  // namespace llava::kernels
