// Fused CUDA kernels for the decoder's small element-wise steps, which at batch 1 cost
// more in launches than in bytes: RMSNorm (7 LibTorch kernels), RoPE on q and k (10),
// SiLU(gate) * up (2). Each rounds where LibTorch's float16/bfloat16 composition rounds,
// so results match it up to the order of the norm's float32 sum. Plain pointers; built
// where CMake finds nvcc.
#pragma once

namespace llava {
namespace cuda {

// y[r] = w * to_T(x32[r] * rsqrt(mean(x32[r]^2) + eps)), rows of h.
void rms_norm(const void* x, const void* w, void* y, int rows, int h, float eps, bool bf16,
              void* stream);
// In place on the first `heads` heads of each row of qkv ([rows, row_stride]; q then k):
// x * cos + rotate_half(x) * sin, cos/sin [rows, d].
void rope(void* qkv, const void* cos, const void* sin, int rows, int row_stride, int heads, int d,
          bool bf16, void* stream);
// out [rows, n] = silu(gate_up[:, :n]) * gate_up[:, n:].
void silu_mul(const void* gate_up, void* out, int rows, int n, bool bf16, void* stream);

}  // namespace cuda
}  // namespace llava
