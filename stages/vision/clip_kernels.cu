// Quick GELU, residual add + LayerNorm and the embeddings' assembly + LayerNorm as one
// kernel each (see clip_kernels.h).
#include "stages/half_types.cuh"
#include "stages/vision/clip_kernels.h"

namespace llava {
namespace cuda {
namespace {

// x * sigmoid(1.702 x) rounded as LibTorch's three kernels round: the product by the
// scalar, the sigmoid, the final product; equal to them bit for bit (a GPU test checks).
// Its arithmetic bounds it (H200, batch 32: 85 us a call where its 302 MB need ~70): the
// special-function unit's __expf and __fdividef took it to 71 us but round differently in
// rare ties, which flipped one near-tied first token of ten in check_7b.py; packed
// conversions gave 83.6 us. Kept exact.
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

// LayerNorm of one row whose values this thread holds (kIters x 8, as load_row leaves
// them): the mean, the variance about it, then the scaled row to y (the row's start).
template <typename T, int kIters>
__device__ inline void layer_norm_row(float (&v)[kIters][8], const T* __restrict__ w,
                                      const T* __restrict__ b, T* __restrict__ y, int h,
                                      float eps) {
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
    *reinterpret_cast<uint4*>(y + i) = pack8<T>(out);
  }
}

// A row per block.
template <typename T, int kIters>
__global__ void add_layer_norm_kernel(const T* __restrict__ x, const T* __restrict__ delta,
                                      T* __restrict__ sum_out, const T* __restrict__ w,
                                      const T* __restrict__ b, T* __restrict__ y, int h,
                                      float eps) {
  const size_t offset = static_cast<size_t>(blockIdx.x) * h;
  float v[kIters][8];
  load_row<T, kIters>(x, delta, sum_out, offset, h, v);
  layer_norm_row<T, kIters>(v, w, b, y + offset, h, eps);
}

// Row (image, t) of the embeddings: the class embedding (t = 0) or patch t - 1 of the
// image, plus position t, rounded to T; then its LayerNorm. A row per block.
template <typename T, int kIters>
__global__ void embed_layer_norm_kernel(const T* __restrict__ patches, const T* __restrict__ cls,
                                        const T* __restrict__ position, const T* __restrict__ w,
                                        const T* __restrict__ b, T* __restrict__ y, int tokens,
                                        int h, float eps) {
  const int image = blockIdx.x / tokens, t = blockIdx.x % tokens;
  const T* x = t == 0 ? cls : patches + (static_cast<size_t>(image) * (tokens - 1) + t - 1) * h;
  float v[kIters][8];
  load_row<T, kIters>(x, position + static_cast<size_t>(t) * h, nullptr, 0, h, v);
  layer_norm_row<T, kIters>(v, w, b, y + static_cast<size_t>(blockIdx.x) * h, h, eps);
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

bool add_layer_norm(const void* x, const void* delta, void* sum, const void* w, const void* b,
                    void* y, int rows, int h, float eps, bool bf16, void* stream) {
  const RowShape shape = row_shape(h);
  if (shape.iters == 0 || !aligned16(x) || !aligned16(w) || !aligned16(b) || !aligned16(y) ||
      (delta != nullptr && (!aligned16(delta) || !aligned16(sum)))) {
    return false;
  }
  auto st = static_cast<cudaStream_t>(stream);
  with_type(bf16, [&](auto tag) {
    using T = decltype(tag);
    with_iters(shape.iters, [&](auto iters) {
      add_layer_norm_kernel<T, decltype(iters)::value><<<rows, shape.threads, 0, st>>>(
          static_cast<const T*>(x), static_cast<const T*>(delta), static_cast<T*>(sum),
          static_cast<const T*>(w), static_cast<const T*>(b), static_cast<T*>(y), h, eps);
    });
  });
  check_launch("LayerNorm");
  return true;
}

bool embed_layer_norm(const void* patches, const void* cls, const void* position, const void* w,
                      const void* b, void* y, int images, int tokens, int h, float eps, bool bf16,
                      void* stream) {
  const RowShape shape = row_shape(h);
  if (shape.iters == 0 || !aligned16(patches) || !aligned16(cls) || !aligned16(position) ||
      !aligned16(w) || !aligned16(b) || !aligned16(y)) {
    return false;
  }
  auto st = static_cast<cudaStream_t>(stream);
  with_type(bf16, [&](auto tag) {
    using T = decltype(tag);
    with_iters(shape.iters, [&](auto iters) {
      embed_layer_norm_kernel<T, decltype(iters)::value><<<images * tokens, shape.threads, 0, st>>>(
          static_cast<const T*>(patches), static_cast<const T*>(cls),
          static_cast<const T*>(position), static_cast<const T*>(w), static_cast<const T*>(b),
          static_cast<T*>(y), tokens, h, eps);
    });
  });
  check_launch("embeddings LayerNorm");
  return true;
}

}  // namespace cuda
}  // namespace llava
