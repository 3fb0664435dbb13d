// RMSNorm, RoPE and SiLU-gating as one kernel each (see fused_kernels.h).
#include "stages/language/fused_kernels.h"

#include "stages/language/half_types.cuh"

namespace llava {
namespace cuda {
namespace {

template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                int h, float eps) {
  const T* row = x + static_cast<size_t>(blockIdx.x) * h;
  T* out = y + static_cast<size_t>(blockIdx.x) * h;
  float sum = 0.0f;
  for (int i = threadIdx.x; i < h; i += blockDim.x) {
    const float v = to_float(row[i]);
    sum += v * v;
  }
  __shared__ float warp_sums[32];
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    sum = threadIdx.x < blockDim.x / 32 ? warp_sums[threadIdx.x] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (threadIdx.x == 0) warp_sums[0] = sum;
  }
  __syncthreads();
  const float inverse = rsqrtf(warp_sums[0] / h + eps);
  for (int i = threadIdx.x; i < h; i += blockDim.x) {
    const float normed = rounded<T>(to_float(row[i]) * inverse);
    out[i] = from_float<T>(to_float(w[i]) * normed);
  }
}

template <typename T>
__global__ void rope_kernel(T* __restrict__ qkv, const T* __restrict__ cos, const T* __restrict__ sin,
                            int row_stride, int heads, int d) {
  T* row = qkv + static_cast<size_t>(blockIdx.x) * row_stride;
  const T* c = cos + static_cast<size_t>(blockIdx.x) * d;
  const T* s = sin + static_cast<size_t>(blockIdx.x) * d;
  const int half = d / 2;
  for (int p = threadIdx.x; p < heads * half; p += blockDim.x) {
    T* x = row + (p / half) * d;
    const int j = p % half;
    const float x1 = to_float(x[j]), x2 = to_float(x[j + half]);
    // x * cos + cat(-x2, x1) * sin, each product and the sum rounded to T.
    const float first = rounded<T>(rounded<T>(x1 * to_float(c[j])) + rounded<T>(-x2 * to_float(s[j])));
    const float second =
        rounded<T>(rounded<T>(x2 * to_float(c[j + half])) + rounded<T>(x1 * to_float(s[j + half])));
    x[j] = from_float<T>(first);
    x[j + half] = from_float<T>(second);
  }
}

template <typename T>
__global__ void silu_mul_kernel(const T* __restrict__ gate_up, T* __restrict__ out, int rows, int n) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<size_t>(rows) * n) return;
  const size_t r = i / n, c = i % n;
  const float g = to_float(gate_up[r * 2 * n + c]);
  const float silu = rounded<T>(g / (1.0f + expf(-g)));
  out[i] = from_float<T>(silu * to_float(gate_up[r * 2 * n + n + c]));
}

}  // namespace

void rms_norm(const void* x, const void* w, void* y, int rows, int h, float eps, bool bf16, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  const int threads = h >= 1024 ? 1024 : 256;
  if (bf16) {
    rms_norm_kernel<<<rows, threads, 0, st>>>(static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(w),
                                              static_cast<__nv_bfloat16*>(y), h, eps);
  } else {
    rms_norm_kernel<<<rows, threads, 0, st>>>(static_cast<const __half*>(x), static_cast<const __half*>(w),
                                              static_cast<__half*>(y), h, eps);
  }
  check_launch("RMSNorm");
}

void rope(void* qkv, const void* cos, const void* sin, int rows, int row_stride, int heads, int d, bool bf16,
          void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  if (bf16) {
    rope_kernel<<<rows, 256, 0, st>>>(static_cast<__nv_bfloat16*>(qkv), static_cast<const __nv_bfloat16*>(cos),
                                      static_cast<const __nv_bfloat16*>(sin), row_stride, heads, d);
  } else {
    rope_kernel<<<rows, 256, 0, st>>>(static_cast<__half*>(qkv), static_cast<const __half*>(cos),
                                      static_cast<const __half*>(sin), row_stride, heads, d);
  }
  check_launch("RoPE");
}

void silu_mul(const void* gate_up, void* out, int rows, int n, bool bf16, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  const unsigned blocks = static_cast<unsigned>((static_cast<size_t>(rows) * n + 255) / 256);
  if (bf16) {
    silu_mul_kernel<<<blocks, 256, 0, st>>>(static_cast<const __nv_bfloat16*>(gate_up),
                                            static_cast<__nv_bfloat16*>(out), rows, n);
  } else {
    silu_mul_kernel<<<blocks, 256, 0, st>>>(static_cast<const __half*>(gate_up), static_cast<__half*>(out), rows, n);
  }
  check_launch("SiLU gate");
}

}  // namespace cuda
}  // namespace llava
