// CUDA kernels for few-row linears (float16/bfloat16 weights) and weight-only int8/int4 linears
// (built only where CMake finds nvcc and LibTorch has CUDA). Plain pointers: the .cu file includes
// no LibTorch header. Layouts: int8 w [n, k] with one scale per row; int4 w [n, k / 2] bytes, input
// 2j in the low nibble and 2j + 1 in the high one, each stored + 8, with one scale per row and
// group of 128 inputs (scales [n, k / 128]). x, y and scales are float16 or bfloat16. The GEMV
// reads values in rows; the dequantization also in tiles (quant_layout.h).
#pragma once

#include <cstdint>

namespace llava {
namespace cuda {

constexpr int kGemvMaxRows = 8;  // the GEMV kernels take up to this many input rows

// Whether the GEMV kernels take this shape: k a multiple of 16 (int8) or 128 (int4), and
// x / w aligned to 16 bytes (checked by the caller).
bool gemv_supports(bool int4, int64_t k);

// y [m, n] = x [m, k] . w^T with w [n, k] in x's type, k a multiple of 16 (checked by
// the caller, with the 16-byte alignment), for 1 <= m <= kGemvMaxRows.
void half_gemv(const void* x, const void* w, void* y, int m, int n, int k, bool bf16, void* stream);
// y [m, n] = x [m, k] . (w * scale)^T, for 1 <= m <= kGemvMaxRows.
void int8_gemv(const void* x, const int8_t* w, const void* scales, void* y, int m, int n, int k,
               bool bf16, void* stream);
void int4_gemv(const void* x, const uint8_t* w, const void* scales, void* y, int m, int n, int k,
               bool bf16, void* stream);
// out [n, k] = w * scale, for a matrix product of many rows (cuBLAS takes it from there);
// w in rows or, `tiled`, in quant_layout.h's tiles (throws std::invalid_argument where the
// shape is not whole tiles).
void int8_dequantize(const int8_t* w, const void* scales, void* out, int n, int k, bool tiled,
                     bool bf16, void* stream);
void int4_dequantize(const uint8_t* w, const void* scales, void* out, int n, int k, bool tiled,
                     bool bf16, void* stream);

}  // namespace cuda
}  // namespace llava
