// Fused CUDA kernels for the CLIP tower's element-wise steps, which at batch 32 move more
// bytes than they compute: quick GELU (3 LibTorch kernels over the [B, T, 4H] MLP
// activations), the residual add + LayerNorm (2) and the embeddings' class token +
// positions + pre-LayerNorm (3). Each rounds where LibTorch's float16/bfloat16 composition
// rounds. Plain pointers; built where CMake finds nvcc.
#pragma once

#include <cstdint>

namespace llava {
namespace cuda {

// In place: x = x * sigmoid(1.702 x), n elements.
void quick_gelu(void* x, int64_t n, bool bf16, void* stream);

// sum = to_T(x + delta) (or x itself when delta is null), y = LayerNorm(sum) * w + b with
// float32 statistics, rows of h. Takes h % 8 == 0 up to 32768 and 16-byte aligned
// pointers; false (nothing launched) otherwise.
bool add_layer_norm(const void* x, const void* delta, void* sum, const void* w, const void* b, void* y, int rows,
                    int h, float eps, bool bf16, void* stream);

// The tower's first hidden state: for each of `images` x `tokens` rows, y = LayerNorm(
// to_T(e + position[t])) * w + b, e the class embedding cls [h] for t = 0 and row
// image * (tokens - 1) + t - 1 of patches [images * (tokens - 1), h] otherwise. The same
// conditions as add_layer_norm; false (nothing launched) where they fail.
bool embed_layer_norm(const void* patches, const void* cls, const void* position, const void* w,
                      const void* b, void* y, int images, int tokens, int h, float eps, bool bf16,
                      void* stream);

}  // namespace cuda
}  // namespace llava
