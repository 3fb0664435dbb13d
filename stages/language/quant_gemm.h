// Matrix products of float16/bfloat16 inputs with int8 or int4 weights on tensor cores,
// for one to a few hundred input rows (decoding batches, short prompts). The weights stay
// quantized in memory and are widened in registers, so a product reads each weight byte
// once, as the GEMV does, while the multiply-adds run on mma.sync (float32 sums).
// Layouts are quant_kernels.h's. Needs code for compute capability 8.0 or newer in this
// build and such a device: quant_gemm_available() says; elsewhere the caller dequantizes
// for cuBLAS.
#pragma once

#include <cstdint>

namespace llava {
namespace cuda {

// A quantized weight [n, k]: int8 values [n, k] with scales [n], or int4 values
// [n, k / 2] with scales [n, k / 128] (quant_kernels.h); the values in rows or, `tiled`, in
// quant_layout.h's tiles (n a multiple of 8), which this kernel reads fastest.
struct QuantMatrix {
  const void* values = nullptr;
  const void* scales = nullptr;
  int n = 0, k = 0;
  bool int4 = false;
  bool tiled = false;
};

// Whether the kernel takes this input width: k a multiple of 64 (int8) or 128 (int4).
bool quant_gemm_supports(bool int4, int64_t k);
// Whether this build has tensor-core code that the current device runs (8.0 and newer;
// a PTX-only build for an older architecture has none).
bool quant_gemm_available();

// How a product is cut into blocks: weight rows per block, 16 or 32 (else 32), and warps
// per block splitting k: 8, or 16 for up to 8 input rows (16 past that means 8); 0 chooses
// 16 where 8-warp blocks would give the multiprocessors fewer than 4 blocks each.
struct QuantGemmTiling {
  int rows = 32;
  int warps = 0;
};

// y [m, n] = x [m, k] . dequantized(w)^T for m >= 1; x, y float16 (or bfloat16), x and the
// values aligned to 16 bytes.
// `gated` (w stacks a gate matrix on an up matrix of n / 2 rows each, n even): y [m, n / 2] =
// silu(x . gate^T) * (x . up^T), both products rounded to the dtype first, as the plain
// product followed by fused_kernels.h's silu_mul computes it (bit for bit): each block
// takes matching rows of the two, so the gating needs no kernel of its own.
void quant_gemm(const void* x, const QuantMatrix& w, void* y, int m, bool bf16, void* stream,
                QuantGemmTiling tiling = {}, bool gated = false);

}  // namespace cuda
}  // namespace llava
