// The int8/int4 x float16 matrix product on tensor cores (quant_gemm.h).
//
// y^T [n, m] = W [n, k] . x^T [k, m] as mma.sync m16n8k16: weight rows fill the MMA's 16
// rows, input rows (tokens) its 8 columns, so a handful of tokens still uses whole
// instructions. A block of 8 warps takes 16 or 32 weight rows and up to 32 tokens; its
// warps split k in chunks of 64 weight bytes per row (64 int8 or 128 int4 inputs, one int4
// group) and add their sums through shared memory at the end. Up to 8 tokens, a matrix of
// few rows gets blocks of 16 warps instead: 4096 rows in 16-row tiles are 256 blocks, under
// 2 per multiprocessor on an H200, and 8 warps each left three quarters of the warp slots
// idle while the loads waited on memory (tests/perf/README.md, "Speed, round 4").
//
// The sum over k does not care in which order k is visited, only that a weight and its
// input meet. Each thread of an MMA holds the same 4 k slots of A (weights) and B (inputs),
// chosen by its lane % 4, so lane % 4 = q may map its slots to any 4 inputs, as long as A
// and B use the same map. We give it 16 consecutive weight bytes (int8: inputs 16q..16q+15
// of the chunk; int4: 32q..32q+31): one 16-byte load per row, coalesced across the 4 lanes
// of a row, and the inputs it needs are consecutive too. With the weights in tiles
// (quant_layout.h, what Linear stores where this kernel runs), a warp's load of rows
// g = 0..7 is 512 consecutive bytes; in rows, 8 pieces of 64 bytes a row apart.
//
// Widening is exact. int8 (float16): each byte + 128 is put under the exponent of 1024
// (0x64XX is 1024 + XX), then 1152 is subtracted; bfloat16 widens int8 through float32.
// int4: q - 8 from each nibble (widen_int4). The scales multiply float32 sums: int8's
// per-row scale at the end, int4's group scale per chunk (a chunk is one group).
//
// Gated (kGated): a block's tile of 16 rows is 8 gate rows and the 8 up rows of the same
// outputs (an MMA thread's rows g and g + 8), so the block ends with both halves of its
// outputs and writes silu(gate) * up instead of them: a launch less per layer than the
// product then silu_mul. (Doing the gating, or the residual add + RMSNorm, as the next
// GEMM loads its inputs was slower: every block redid the whole row, 8 lanes of a warp
// alike, 46 us against 13 for the down projection at one row. The add + RMSNorm done by the
// last block of the o and down products to finish was even at one row and 12% slower at
// eight: its tail costs what the kernel did. tests/perf/README.md, "Speed, round 6".)
#include <string>
#include <type_traits>

#include "stages/half_types.cuh"
#include "stages/language/quant_gemm.h"
#include "stages/language/quant_layout.h"

namespace llava {
namespace cuda {
namespace {

constexpr int kChunkBytes = 64;  // per weight row and chunk
static_assert(kChunkBytes == kTileBytes, "a chunk of a tile's rows is one tile (quant_layout.h)");
constexpr int kGroup = 128;      // int4 group size (plan.h: kInt4Group)
constexpr int kMaxTileTokens = 32;

__device__ inline void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], __half) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

__device__ inline void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], __nv_bfloat16) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Two bfloat16 in one register, from floats (exact for the integers widened here).
__device__ inline uint32_t bf16_pair(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

template <typename T>
__device__ inline uint32_t sub2(uint32_t a, uint32_t b) {
  using T2 = typename std::conditional<std::is_same<T, __half>::value, __half2, __nv_bfloat162>::type;
  const T2 r = __hsub2(*reinterpret_cast<const T2*>(&a), *reinterpret_cast<const T2*>(&b));
  return *reinterpret_cast<const uint32_t*>(&r);
}

__device__ inline uint32_t hfma2_bits(uint32_t a, uint32_t b, uint32_t c) {
  const __half2 r = __hfma2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b),
                            *reinterpret_cast<const __half2*>(&c));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// 4 int8 weights (inputs j..j+3) as two pairs: out[0] = (j, j+1), out[1] = (j+2, j+3).
template <typename T>
__device__ inline void widen_int8(uint32_t word, uint32_t (&out)[2]) {
  if constexpr (std::is_same<T, __half>::value) {
    const uint32_t biased = word ^ 0x80808080u;  // q + 128 in each byte
    out[0] = sub2<T>(__byte_perm(biased, 0x64646464u, 0x5140), 0x64806480u);
    out[1] = sub2<T>(__byte_perm(biased, 0x64646464u, 0x7362), 0x64806480u);
  } else {
    auto q = [&](int i) { return static_cast<float>(static_cast<int8_t>(word >> (8 * i))); };
    out[0] = bf16_pair(q(0), q(1));
    out[1] = bf16_pair(q(2), q(3));
  }
}

// 8 int4 weights (inputs j..j+7, byte b holding j + 2b low and j + 2b + 1 high) as four
// pairs of q - 8 (the group's scale multiplies the chunk's sums): out[i] = (j + i, j + i + 4).
// float16: nibble i of each half under 1024's exponent is 1024 + q (i even) or, one nibble
// up, 1024 + 16q, which one fused multiply-add by 1/16 and -72 brings to q - 8.
// bfloat16 (7 mantissa bits) takes each nibble to the low bits under 128's exponent.
template <typename T>
__device__ inline void widen_int4(uint32_t word, uint32_t (&out)[4]) {
  if constexpr (std::is_same<T, __half>::value) {
#pragma unroll
    for (int i = 0; i < 4; i += 2) {
      const uint32_t bits = word >> (4 * i);
      out[i] = sub2<T>((bits & 0x000F000Fu) | 0x64006400u, 0x64086408u);
      out[i + 1] = hfma2_bits((bits & 0x00F000F0u) | 0x64006400u, 0x2C002C00u, 0xD480D480u);
    }
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = sub2<T>(((word >> (4 * i)) & 0x000F000Fu) | 0x43004300u, 0x43084308u);
  }
}

// Pairs (a.low, b.low) and (a.high, b.high) of two registers of two elements each.
__device__ inline uint32_t lows(uint32_t a, uint32_t b) { return __byte_perm(a, b, 0x5410); }
__device__ inline uint32_t highs(uint32_t a, uint32_t b) { return __byte_perm(a, b, 0x7632); }

// kTiles weight tiles of 16 rows per block (rows = 16 kTiles) x kTokenTiles token tiles of
// 8, split over kWarps warps. Grid: x over token slabs of 8 kTokenTiles (fastest, so blocks
// sharing weight rows run together and the rereads hit L2), y over row blocks.
// The weight row of a block's local row r (16 t + 8 h + g: tile t, half h) in row block b:
// 16 kTiles b + r, or gated, output 8 (kTiles b + t) + g of the gate (h = 0) or up half.
// A row past the end reads the last one (never stored).
template <int kTiles, bool kGated>
__device__ inline int weight_row(int b, int t, int h, int g, int n) {
  if constexpr (kGated) {
    const int half = n / 2;
    return h * half + min(8 * (kTiles * b + t) + g, half - 1);
  } else {
    return min(16 * (kTiles * b + t) + 8 * h + g, n - 1);
  }
}

// kTiled: the values in tiles (quant_layout.h), else in rows. A template argument: taken at
// run time it cost the int8 kernel of one token tile 18 registers (50 -> 68), a block a
// multiprocessor.
template <typename T, bool kInt4, int kTiles, int kTokenTiles, int kWarps, bool kGated, bool kTiled>
__global__ void __launch_bounds__(kWarps * 32)
    quant_gemm_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w,
                      const T* __restrict__ scales, T* __restrict__ y, int m, int n, int k) {
  let_next_start();
  constexpr int kRows = 16 * kTiles, kTokens = 8 * kTokenTiles;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, q = lane % 4;
  const int row0 = blockIdx.y * kRows, token0 = blockIdx.x * kTokens;
  const int row_bytes = kInt4 ? k / 2 : k, chunks = row_bytes / kChunkBytes, groups = k / kGroup;
  constexpr int kInputsPerLane = kInt4 ? 32 : 16;  // this lane's inputs of a chunk

  // Rows g and g + 8 of each tile: this lane's 16 bytes of their first chunk, and how far
  // the next chunk is (quant_layout.h).
  constexpr int kChunkStride = kTiled ? kTileRows * kTileBytes : kChunkBytes;
  const uint8_t* wrow[kTiles][2];
  const T* srow[kTiles][2];  // int4: the row's group scales
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = weight_row<kTiles, kGated>(blockIdx.y, t, h, g, n);
      wrow[t][h] = w + quant_offset(kTiled, row, 16 * q, row_bytes);
      srow[t][h] = scales + static_cast<size_t>(row) * groups;
    }
  }
  const T* xrow[kTokenTiles];
#pragma unroll
  for (int j = 0; j < kTokenTiles; ++j) {
    xrow[j] = x + static_cast<size_t>(min(token0 + 8 * j + g, m - 1)) * k + kInputsPerLane * q;
  }

  // One chunk's weights of this lane: 16 bytes of each of its rows, and the rows' int4 scales.
  struct Weights {
    uint4 weights[kTiles][2];
    T scale[kTiles][2];
  };
  // This lane's inputs of a chunk for each token tile, as pairs.
  using Inputs = uint32_t[kTokenTiles][kInputsPerLane / 2];
  auto load_weights = [&](Weights& o, int c) {
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        o.weights[t][h] = __ldg(reinterpret_cast<const uint4*>(wrow[t][h] + c * kChunkStride));
        if constexpr (kInt4) o.scale[t][h] = srow[t][h][c];
      }
    }
  };
  auto load_inputs = [&](Inputs& in, int c) {
#pragma unroll
    for (int j = 0; j < kTokenTiles; ++j) {
      const uint4* p = reinterpret_cast<const uint4*>(xrow[j] + static_cast<size_t>(c) * kInputsPerLane * 4);
#pragma unroll
      for (int v = 0; v < kInputsPerLane / 8; ++v) {
        const uint4 r = __ldg(p + v);
        in[j][4 * v] = r.x, in[j][4 * v + 1] = r.y, in[j][4 * v + 2] = r.z, in[j][4 * v + 3] = r.w;
      }
    }
  };

  float acc[kTiles][kTokenTiles][4] = {};
  // sums[t][j][i] += the chunk's products; int8's row scales multiply at the end, int4's
  // group scales (one group per chunk) multiply each chunk's sums.
  auto multiply = [&](const Weights& o, const Inputs& in, float (&sums)[kTiles][kTokenTiles][4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // the lane's 4 weight words per row
      if constexpr (!kInt4) {
        // Word i: inputs 4i..4i+3 of the lane, one MMA step.
        uint32_t a[kTiles][4];
#pragma unroll
        for (int t = 0; t < kTiles; ++t) {
          uint32_t r0[2], r8[2];
          widen_int8<T>(reinterpret_cast<const uint32_t*>(&o.weights[t][0])[i], r0);
          widen_int8<T>(reinterpret_cast<const uint32_t*>(&o.weights[t][1])[i], r8);
          a[t][0] = r0[0], a[t][1] = r8[0], a[t][2] = r0[1], a[t][3] = r8[1];
        }
#pragma unroll
        for (int j = 0; j < kTokenTiles; ++j) {
          const uint32_t b[2] = {in[j][2 * i], in[j][2 * i + 1]};
#pragma unroll
          for (int t = 0; t < kTiles; ++t) mma(sums[t][j], a[t], b, T{});
        }
      } else {
        // Word i: inputs 8i..8i+7 of the lane, two MMA steps. In rows, pairs (0,4),(1,5) then
        // (2,6),(3,7), the inputs permuted to match; in tiles (nibbles ordered,
        // quant_layout.h) pairs (0,1),(2,3) then (4,5),(6,7), the inputs as loaded.
        uint32_t p0[kTiles][4], p8[kTiles][4];
#pragma unroll
        for (int t = 0; t < kTiles; ++t) {
          widen_int4<T>(reinterpret_cast<const uint32_t*>(&o.weights[t][0])[i], p0[t]);
          widen_int4<T>(reinterpret_cast<const uint32_t*>(&o.weights[t][1])[i], p8[t]);
        }
#pragma unroll
        for (int step = 0; step < 2; ++step) {
#pragma unroll
          for (int j = 0; j < kTokenTiles; ++j) {
            uint32_t b[2];
            if constexpr (kTiled) {
              b[0] = in[j][4 * i + 2 * step],
              b[1] = in[j][4 * i + 2 * step + 1];  // inputs (4s, 4s+1), (4s+2, 4s+3)
            } else {
              const uint32_t lo = in[j][4 * i + step],
                             hi = in[j][4 * i + step + 2];  // inputs (2s, 2s+1), (2s+4, 2s+5)
              b[0] = lows(lo, hi), b[1] = highs(lo, hi);
            }
#pragma unroll
            for (int t = 0; t < kTiles; ++t) {
              const uint32_t a[4] = {p0[t][2 * step], p8[t][2 * step], p0[t][2 * step + 1], p8[t][2 * step + 1]};
              mma(sums[t][j], a, b, T{});
            }
          }
        }
      }
    }
  };

  // One chunk's products into acc; int4's group scales (scale[t][h] for rows g and g + 8 of
  // tile t) multiply the chunk's own sums.
  auto add_chunk = [&](const Weights& o, const Inputs& in, const float (&scale)[kTiles][2]) {
    if constexpr (kInt4) {
      float part[kTiles][kTokenTiles][4] = {};
      multiply(o, in, part);
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
#pragma unroll
        for (int j = 0; j < kTokenTiles; ++j) {
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[t][j][i] += part[t][j][i] * scale[t][i / 2];
        }
      }
    } else {
      multiply(o, in, acc);
    }
  };

  // Warp w takes chunks w, w + kWarps, w + 2 kWarps, ...; the weights (and int4 scales) of
  // its next chunk are loaded while the current one is multiplied, its inputs (from L2) at
  // use. (More chunks in flight did not help: 2-3 ahead in registers, with their inputs,
  // was slower at every shape, and 1-3 ahead in shared memory by cp.async at best even:
  // tests/perf/README.md, "Speed, round 3" and "Speed, round 4".)
  Weights next;
  if (warp < chunks) load_weights(next, warp);
  wait_for_inputs();  // x; the weights above overlap the previous kernel
  for (int c = warp; c < chunks; c += kWarps) {
    const Weights o = next;
    if (c + kWarps < chunks) load_weights(next, c + kWarps);
    Inputs in;
    load_inputs(in, c);
    float scale[kTiles][2] = {};
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      if constexpr (kInt4) scale[t][0] = to_float(o.scale[t][0]), scale[t][1] = to_float(o.scale[t][1]);
    }
    add_chunk(o, in, scale);
  }

  // The warps' partial sums, added in shared memory. Accumulator i of tile t, token tile j:
  // row 16t + g (+ 8 for i >= 2), token 8j + 2q + i % 2.
  __shared__ float partial[kWarps][kTokens][kRows + 1];
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int j = 0; j < kTokenTiles; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) partial[warp][8 * j + 2 * q + i % 2][16 * t + g + 8 * (i / 2)] = acc[t][j][i];
    }
  }
  __syncthreads();
  // The output of local row r (or, gated, of the gate and up rows r, r + 8 of a tile) for a token.
  auto output = [&](int r, int token) {
    float sum = 0.0f;
#pragma unroll
    for (int p = 0; p < kWarps; ++p) sum += partial[p][token][r];
    if (!kInt4) sum *= to_float(scales[weight_row<kTiles, kGated>(blockIdx.y, r / 16, r % 16 / 8, r % 8, n)]);
    return sum;
  };
  if constexpr (kGated) {
    constexpr int kOutputs = kRows / 2;
    const int half = n / 2, column0 = blockIdx.y * kOutputs;
    for (int v = threadIdx.x; v < kOutputs * kTokens; v += kWarps * 32) {
      const int c = v % kOutputs, token = v / kOutputs, r = 16 * (c / 8) + c % 8;
      if (column0 + c >= half || token0 + token >= m) continue;
      const float gate = rounded<T>(output(r, token)), up = rounded<T>(output(r + 8, token));
      y[static_cast<size_t>(token0 + token) * half + column0 + c] = from_float<T>(silu_times<T>(gate, up));
    }
  } else {
    for (int v = threadIdx.x; v < kRows * kTokens; v += kWarps * 32) {
      const int row = v % kRows, token = v / kRows;
      if (row0 + row >= n || token0 + token >= m) continue;
      y[static_cast<size_t>(token0 + token) * n + row0 + row] = from_float<T>(output(row, token));
    }
  }
}

template <typename T, bool kInt4, int kTiles, int kTokenTiles, int kWarps = 8>
void launch(const void* x, const QuantMatrix& w, void* y, int m, bool gated, cudaStream_t stream) {
  constexpr int kTokens = 8 * kTokenTiles;
  // Gated: 8 kTiles outputs of n / 2 a block.
  const int blocks = gated ? (w.n / 2 + 8 * kTiles - 1) / (8 * kTiles) : (w.n + 16 * kTiles - 1) / (16 * kTiles);
  const dim3 grid((m + kTokens - 1) / kTokens, blocks);
  auto* kernel =
      w.tiled ? (gated ? quant_gemm_kernel<T, kInt4, kTiles, kTokenTiles, kWarps, true, true>
                       : quant_gemm_kernel<T, kInt4, kTiles, kTokenTiles, kWarps, false, true>)
              : (gated ? quant_gemm_kernel<T, kInt4, kTiles, kTokenTiles, kWarps, true, false>
                       : quant_gemm_kernel<T, kInt4, kTiles, kTokenTiles, kWarps, false, false>);
  launch_early(kernel, grid, kWarps * 32, 0, stream, static_cast<const T*>(x), static_cast<const uint8_t*>(w.values),
               static_cast<const T*>(w.scales), static_cast<T*>(y), m, w.n, w.k);
}

// The current device's multiprocessors, asked once per device.
int multiprocessors() {
  static int known[64] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return 0;
  if (known[device] == 0) cudaDeviceGetAttribute(&known[device], cudaDevAttrMultiProcessorCount, device);
  return known[device];
}

template <typename T, bool kInt4, int kTiles>
void launch_tokens(const void* x, const QuantMatrix& w, void* y, int m, int warps, bool gated, cudaStream_t stream) {
  if (m <= 8) {
    if (warps == 16) {
      launch<T, kInt4, kTiles, 1, 16>(x, w, y, m, gated, stream);
    } else {
      launch<T, kInt4, kTiles, 1>(x, w, y, m, gated, stream);
    }
  } else if (m <= 16) {
    launch<T, kInt4, kTiles, 2>(x, w, y, m, gated, stream);
  } else {
    launch<T, kInt4, kTiles, kMaxTileTokens / 8>(x, w, y, m, gated, stream);
  }
}

template <typename T, bool kInt4>
void launch_tiles(const void* x, const QuantMatrix& w, void* y, int m, QuantGemmTiling tiling, bool gated,
                  cudaStream_t stream) {
  if (tiling.rows == 16) {
    launch_tokens<T, kInt4, 1>(x, w, y, m, tiling.warps, gated, stream);
  } else {
    launch_tokens<T, kInt4, 2>(x, w, y, m, tiling.warps, gated, stream);
  }
}

}  // namespace

bool quant_gemm_supports(bool int4, int64_t k) { return k > 0 && k % (int4 ? kGroup : kChunkBytes) == 0; }

bool quant_gemm_available() {
  static int known[64] = {};
  return runs_code_of(quant_gemm_kernel<__half, false, 2, 1, 8, false, false>, 80, known);
}

void quant_gemm(const void* x, const QuantMatrix& w, void* y, int m, bool bf16, void* stream, QuantGemmTiling tiling,
                bool gated) {
  if (m < 1 || w.n < 1 || !quant_gemm_supports(w.int4, w.k) || (gated && w.n % 2 != 0) ||
      (w.tiled && !tileable(w.n, w.int4 ? w.k / 2 : w.k))) {
    throw std::invalid_argument(
        "quantized GEMM: m " + std::to_string(m) + ", n " + std::to_string(w.n) + ", k " +
        std::to_string(w.k) + " (k a multiple of " + std::to_string(w.int4 ? kGroup : kChunkBytes) +
        (gated ? ", n even for the gated product" : "") +
        (w.tiled ? ", n a multiple of 8 for tiles" : "") + ")");
  }
  if (tiling.rows != 16) tiling.rows = 32;
  if (tiling.warps == 0) {
    // 16 warps where 8-warp blocks would leave the multiprocessors under 4 blocks each
    // (tests/perf/README.md, "Speed, round 4": the 4096-row matrices at batch 1).
    const int64_t blocks = (w.n + tiling.rows - 1) / tiling.rows;
    tiling.warps = m <= 8 && blocks < 4 * static_cast<int64_t>(multiprocessors()) ? 16 : 8;
  }
  if (tiling.warps != 16) tiling.warps = 8;
  auto s = static_cast<cudaStream_t>(stream);
  with_type(bf16, [&](auto type) {
    using T = decltype(type);
    if (w.int4) {
      launch_tiles<T, true>(x, w, y, m, tiling, gated, s);
    } else {
      launch_tiles<T, false>(x, w, y, m, tiling, gated, s);
    }
  });
  check_launch(w.int4 ? "int4 GEMM" : "int8 GEMM");
}

}  // namespace cuda
}  // namespace llava
