// Quick GELU and residual add + LayerNorm as one kernel each (see clip_kernels.h).
#include "stages/vision/clip_kernels.h"

#include "stages/half_types.cuh"

namespace llava {
namespace cuda {
namespace {

// x * sigmoid(1.702 x) rounded as LibTorch's three kernels round: the product by the
// scalar, the sigmoid, the final product.
template <typename T>
__device__ inline float quick_gelu_of(float x) {
  const float scaled = rounded<T>(x * 1.702f);
  const float gate = rounded<T>(1.0f / (1.0f + expf(-scaled)));
  return x * gate;
}

template <typename T>
__global__ void quick_gelu_kernel(T* __restrict__ x, int64_t n) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (i + 8 <= n) {
    float v[8];
    unpack8<T>(load16(x + i), v);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = quick_gelu_of<T>(v[e]);
    *reinterpret_cast<uint4*>(x + i) = pack8<T>(v);
  } else {
    for (int64_t j = i; j < n; ++j) x[j] = from_float<T>(quick_gelu_of<T>(to_float(x[j])));
  }
}

// A row per block, each thread's kIters x 8 values in registers: the sum, the mean, the
// variance about it, then the scaled output.
template <typename T, int kIters>
__global__ void add_layer_norm_kernel(const T* __restrict__ x, const T* __restrict__ delta, T* __restrict__ sum_out,
                                      const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y, int h,
                                      float eps) {
  const size_t offset = static_cast<size_t>(blockIdx.x) * h;
  float v[kIters][8];
  load_row<T, kIters>(x, delta, sum_out, offset, h, v);
  float total = 0.0f;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    if ((it * blockDim.x + threadIdx.x) * 8 >= h) break;
#pragma unroll
    for (int e = 0; e < 8; ++e) total += v[it][e];
  }
  __shared__ float scratch[32];
  const float mean = block_reduce<false>(total, scratch) / h;
  float squares = 0.0f;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int i = (it * blockDim.x + threadIdx.x) * 8;
    if (i >= h) break;
#pragma unroll
    for (int e = 0; e < 8; ++e) squares += (v[it][e] - mean) * (v[it][e] - mean);
  }
  const float inverse = rsqrtf(block_reduce<false>(squares, scratch) / h + eps);
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int i = (it * blockDim.x + threadIdx.x) * 8;
    if (i >= h) break;
    float weight[8], bias[8], out[8];
    unpack8<T>(load16(w + i), weight);
    unpack8<T>(load16(b + i), bias);
#pragma unroll
    for (int e = 0; e < 8; ++e) out[e] = (v[it][e] - mean) * inverse * weight[e] + bias[e];
    *reinterpret_cast<uint4*>(y + offset + i) = pack8<T>(out);
  }
}

}  // namespace

void quick_gelu(void* x, int64_t n, bool bf16, void* stream) {
  if (n == 0) return;
  const int threads = 256;
  const auto blocks = static_cast<unsigned>((n + threads * 8 - 1) / (threads * 8));
  with_type(bf16, [&](auto tag) {
    using T = decltype(tag);
    quick_gelu_kernel<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<T*>(x), n);
  });
  check_launch("quick GELU");
}

bool add_layer_norm(const void* x, const void* delta, void* sum, const void* w, const void* b, void* y, int rows,
                    int h, float eps, bool bf16, void* stream) {
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const RowShape shape = row_shape(h);
  const int threads = shape.threads, iters = shape.iters;
  if (iters == 0 || !aligned(x) || !aligned(w) || !aligned(b) || !aligned(y) ||
      (delta != nullptr && (!aligned(delta) || !aligned(sum)))) {
    return false;
  }
  auto st = static_cast<cudaStream_t>(stream);
  with_type(bf16, [&](auto tag) {
    using T = decltype(tag);
    const auto *in = static_cast<const T*>(x), *add = static_cast<const T*>(delta);
    const auto *weight = static_cast<const T*>(w), *bias = static_cast<const T*>(b);
    auto *total = static_cast<T*>(sum), *out = static_cast<T*>(y);
    if (iters == 1) {
      add_layer_norm_kernel<T, 1><<<rows, threads, 0, st>>>(in, add, total, weight, bias, out, h, eps);
    } else if (iters == 2) {
      add_layer_norm_kernel<T, 2><<<rows, threads, 0, st>>>(in, add, total, weight, bias, out, h, eps);
    } else {
      add_layer_norm_kernel<T, 4><<<rows, threads, 0, st>>>(in, add, total, weight, bias, out, h, eps);
    }
  });
  check_launch("LayerNorm");
  return true;
}

}  // namespace cuda
}  // namespace llava
