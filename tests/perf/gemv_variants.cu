// Batch-1 products of quantized weights in tiles (quant_layout.h): GEMV variants against
// the kernels Linear runs today, at LLaVA-1.5-7B's four decoder shapes, one row of inputs.
// Standalone (nvcc, no LibTorch): it compiles the project's quant_gemm.cu into itself and
// links quant_kernels.cu, so the current kernels and the variants run in one binary.
//   nvcc -O3 -std=c++17 -arch=sm_90 -I. tests/perf/gemv_variants.cu stages/language/quant_kernels.cu \
//       -o /tmp/gemv_variants
//   /tmp/gemv_variants            # table: µs per call, TB/s, max relative error
// Each variant is checked against a float64 product on the host first. Calls rotate
// through >= 400 MB of weight copies so that every call reads from memory.
//
// The variants: a block of 256 (or 512) threads takes one row group of 8 rows (gated: the
// gate group and the matching up group), which lie in one run of 8 k bytes in tiles; thread
// t reads 16 bytes at 16 t + 4096 s (s = 0, 1, ...), always row lane / 4 of its group, kUnroll
// loads ahead. int8 widens each byte under 2^23's exponent (one byte permute and one
// subtraction, exact), int4 either so or as half pairs (multiplied and summed as halves over
// a word, then float).
#include "stages/language/quant_gemm.cu"
#include "stages/language/quant_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace llava {
namespace cuda {
namespace variants {

enum class Dot { kMagic, kHalf2 };

// 16 inputs x[kk..kk+15] as floats, from global memory (L1) or shared memory.
template <bool kSmemX>
__device__ inline void inputs16(const __half* x, const float* xs, int kk, float (&out)[16]) {
  if constexpr (kSmemX) {
#pragma unroll
    for (int i = 0; i < 16; i += 4) {
      const float4 v = *reinterpret_cast<const float4*>(xs + kk + i);
      out[i] = v.x, out[i + 1] = v.y, out[i + 2] = v.z, out[i + 3] = v.w;
    }
  } else {
    const uint4* p = reinterpret_cast<const uint4*>(x + kk);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint4 raw = __ldg(p + h);
      const __half2* pairs = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(pairs[i]);
        out[8 * h + 2 * i] = f.x, out[8 * h + 2 * i + 1] = f.y;
      }
    }
  }
}

// The dot product of a lane's 16 weight bytes with their inputs (int8: 16 inputs at kk;
// int4: 32 inputs at kk, tile nibble order), unscaled (int8) or times the group scale (int4).
template <bool kInt4, Dot kDot, bool kSmemX>
__device__ inline float dot(uint4 raw, const __half* x, const float* xs, int kk, float scale) {
  const uint32_t* words = reinterpret_cast<const uint32_t*>(&raw);
  float sum = 0.0f;
  if constexpr (!kInt4) {
    float in[16];
    inputs16<kSmemX>(x, xs, kk, in);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t biased = words[i] ^ 0x80808080u;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float w = __int_as_float(__byte_perm(biased, 0x4B000000u, 0x7540 + j)) - 8388736.0f;
        sum = fmaf(in[4 * i + j], w, sum);
      }
    }
    return sum;
  } else if constexpr (kDot == Dot::kMagic) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float in[16];
      inputs16<kSmemX>(x, xs, kk + 16 * half, in);
#pragma unroll
      for (int v = 0; v < 2; ++v) {
        const uint32_t word = words[2 * half + v];
        const uint32_t even = word & 0x0F0F0F0Fu, odd = (word >> 4) & 0x0F0F0F0Fu;
        // Tiles: input 2i of the word is nibble i (byte i / 2, low if i even), 2i + 1 nibble 4 + i.
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const uint32_t lo = (i % 2 == 0 ? even : odd), hi = (i % 2 == 0 ? even : odd);
          const float we = __int_as_float(__byte_perm(lo, 0x4B000000u, 0x7540 + i / 2)) - 8388616.0f;
          const float wo = __int_as_float(__byte_perm(hi, 0x4B000000u, 0x7540 + 2 + i / 2)) - 8388616.0f;
          sum = fmaf(in[8 * v + 2 * i], we, sum);
          sum = fmaf(in[8 * v + 2 * i + 1], wo, sum);
        }
      }
    }
    return sum * scale;
  } else {
    const uint4* p = reinterpret_cast<const uint4*>(x + kk);
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      uint32_t pairs[4];
      widen_int4<__half>(words[v], pairs);
      const uint4 xr = __ldg(p + v);
      const uint32_t* xp = reinterpret_cast<const uint32_t*>(&xr);
      __half2 acc = __float2half2_rn(0.0f);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc = __hfma2(*reinterpret_cast<const __half2*>(&pairs[i]), *reinterpret_cast<const __half2*>(&xp[i]), acc);
      }
      const float2 f = __half22float2(acc);
      sum += f.x + f.y;
    }
    return sum * scale;
  }
}

template <bool kInt4, Dot kDot, int kThreads, int kUnroll, bool kSmemX, bool kGated>
__global__ void __launch_bounds__(kThreads)
    tiled_gemv_kernel(const __half* __restrict__ x, const uint8_t* __restrict__ w, const __half* __restrict__ scales,
                      __half* __restrict__ y, int n, int k) {
  let_next_start();
  extern __shared__ float xs[];
  constexpr int kStride = kThreads * 16;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int row_bytes = kInt4 ? k / 2 : k, group_bytes = 8 * row_bytes, groups = k / 128;
  const int total = (kGated ? 2 : 1) * group_bytes;
  const int up_group = kGated ? n / 16 : 0;
  const uint8_t* base0 = w + static_cast<size_t>(blockIdx.x) * group_bytes;
  const uint8_t* base1 = w + static_cast<size_t>(blockIdx.x + up_group) * group_bytes;
  const int p0 = 16 * threadIdx.x, steps = (total - p0 + kStride - 1) / kStride;
  auto load = [&](uint4 (&v)[kUnroll], int s0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p = p0 + (s0 + u) * kStride;
      v[u] = make_uint4(0, 0, 0, 0);
      if (s0 + u < steps) {
        v[u] = __ldg(reinterpret_cast<const uint4*>(p < group_bytes ? base0 + p : base1 + (p - group_bytes)));
      }
    }
  };
  uint4 cur[kUnroll];
  load(cur, 0);
  wait_for_inputs();
  if constexpr (kSmemX) {
    for (int i = threadIdx.x * 8; i < k; i += kThreads * 8) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(x + i));
      const __half2* pairs = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = __half22float2(pairs[j]);
        xs[i + 2 * j] = f.x, xs[i + 2 * j + 1] = f.y;
      }
    }
    __syncthreads();
  }
  const int row_in_group = lane / 4;
  float acc[2] = {0.0f, 0.0f};
  for (int s = 0; s < steps; s += kUnroll) {
    uint4 next[kUnroll];
    if (s + kUnroll < steps) load(next, s + kUnroll);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (s + u < steps) {
        const int p = p0 + (s + u) * kStride;
        const int region = p >= group_bytes ? 1 : 0, off = p - region * group_bytes, tile = off >> 9;
        const int kk = tile * (kInt4 ? 128 : 64) + (lane & 3) * (kInt4 ? 32 : 16);
        float scale = 1.0f;
        if constexpr (kInt4) {
          const int row = (blockIdx.x + region * up_group) * 8 + row_in_group;
          scale = __half2float(scales[static_cast<size_t>(row) * groups + tile]);
        }
        const float d = dot<kInt4, kDot, kSmemX>(cur[u], x, xs, kk, scale);
        if (region) {
          acc[1] += d;
        } else {
          acc[0] += d;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) cur[u] = next[u];
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], 1);
    acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], 2);
  }
  __shared__ float partial[kThreads / 32][2][8];
  if ((lane & 3) == 0) partial[warp][0][row_in_group] = acc[0], partial[warp][1][row_in_group] = acc[1];
  __syncthreads();
  if (threadIdx.x < 8) {
    float sums[2] = {0.0f, 0.0f};
#pragma unroll
    for (int p = 0; p < kThreads / 32; ++p) sums[0] += partial[p][0][threadIdx.x], sums[1] += partial[p][1][threadIdx.x];
    const int row = blockIdx.x * 8 + threadIdx.x;
    if constexpr (kGated) {
      float gate = sums[0], up = sums[1];
      if constexpr (!kInt4) gate *= __half2float(scales[row]), up *= __half2float(scales[row + n / 2]);
      y[row] = __float2half(silu_times<__half>(rounded<__half>(gate), rounded<__half>(up)));
    } else {
      y[row] = __float2half(kInt4 ? sums[0] : sums[0] * __half2float(scales[row]));
    }
  }
}

struct Variant {
  const char* name;
  void (*launch)(const __half*, const uint8_t*, const __half*, __half*, int, int, cudaStream_t);
};

template <bool kInt4, Dot kDot, int kThreads, int kUnroll, bool kSmemX, bool kGated>
void launch_variant(const __half* x, const uint8_t* w, const __half* s, __half* y, int n, int k, cudaStream_t stream) {
  const int blocks = kGated ? n / 16 : n / 8;
  launch_early(tiled_gemv_kernel<kInt4, kDot, kThreads, kUnroll, kSmemX, kGated>, dim3(blocks), dim3(kThreads),
               kSmemX ? k * sizeof(float) : 0, stream, x, w, s, y, n, k);
}

}  // namespace variants
}  // namespace cuda
}  // namespace llava

namespace {

using namespace llava::cuda;
using variants::Dot;

struct Shape {
  const char* name;
  int n, k;
  bool gated;
};

#define CHECK(call)                                                                            \
  do {                                                                                         \
    cudaError_t e = (call);                                                                    \
    if (e != cudaSuccess) {                                                                    \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__);      \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

float half_to_float(__half h) { return __half2float(h); }

}  // namespace

int main() {
  const Shape shapes[] = {{"qkv", 12288, 4096, false}, {"o", 4096, 4096, false},
                          {"gate/up", 22016, 4096, true}, {"down", 4096, 11008, false}};
  using V = variants::Variant;
  using namespace variants;
  const V int8_variants[] = {
      {"v256u4 l1x", launch_variant<false, Dot::kMagic, 256, 4, false, false>},
      {"v256u4 smx", launch_variant<false, Dot::kMagic, 256, 4, true, false>},
      {"v256u8 l1x", launch_variant<false, Dot::kMagic, 256, 8, false, false>},
      {"v256u2 l1x", launch_variant<false, Dot::kMagic, 256, 2, false, false>},
      {"v512u4 l1x", launch_variant<false, Dot::kMagic, 512, 4, false, false>},
      {"v128u4 l1x", launch_variant<false, Dot::kMagic, 128, 4, false, false>},
  };
  const V int8_gated[] = {
      {"v256u4 l1x", launch_variant<false, Dot::kMagic, 256, 4, false, true>},
      {"v256u4 smx", launch_variant<false, Dot::kMagic, 256, 4, true, true>},
      {"v256u8 l1x", launch_variant<false, Dot::kMagic, 256, 8, false, true>},
      {"v256u2 l1x", launch_variant<false, Dot::kMagic, 256, 2, false, true>},
      {"v512u4 l1x", launch_variant<false, Dot::kMagic, 512, 4, false, true>},
      {"v128u4 l1x", launch_variant<false, Dot::kMagic, 128, 4, false, true>},
  };
  const V int4_variants[] = {
      {"v256u4 magic", launch_variant<true, Dot::kMagic, 256, 4, false, false>},
      {"v256u4 half2", launch_variant<true, Dot::kHalf2, 256, 4, false, false>},
      {"v256u8 half2", launch_variant<true, Dot::kHalf2, 256, 8, false, false>},
      {"v256u2 half2", launch_variant<true, Dot::kHalf2, 256, 2, false, false>},
      {"v128u4 half2", launch_variant<true, Dot::kHalf2, 128, 4, false, false>},
  };
  const V int4_gated[] = {
      {"v256u4 magic", launch_variant<true, Dot::kMagic, 256, 4, false, true>},
      {"v256u4 half2", launch_variant<true, Dot::kHalf2, 256, 4, false, true>},
      {"v256u8 half2", launch_variant<true, Dot::kHalf2, 256, 8, false, true>},
      {"v256u2 half2", launch_variant<true, Dot::kHalf2, 256, 2, false, true>},
      {"v128u4 half2", launch_variant<true, Dot::kHalf2, 128, 4, false, true>},
  };
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  std::mt19937 rng(7);
  const int kCalls = 300;
  std::printf("%-8s %-5s %-16s %9s %8s %10s\n", "shape", "kind", "path", "us/call", "TB/s", "max_rel");
  double layer[3][16] = {};  // per kind, per path index: µs summed over the four shapes
  std::vector<std::string> names[3];
  for (const Shape& shape : shapes) {
    for (int kind = 0; kind < 3; ++kind) {  // 0 float16, 1 int8, 2 int4
      const bool int4 = kind == 2;
      const bool gated = shape.gated && kind != 0;  // float16 gates in a kernel of its own
      const int n = shape.n, k = shape.k, outputs = gated ? n / 2 : n;
      const size_t row_bytes = kind == 0 ? 2 * k : int4 ? k / 2 : k;
      const size_t value_bytes = static_cast<size_t>(n) * row_bytes;
      const int groups = k / 128;
      const size_t scale_count = kind == 0 ? 0 : int4 ? static_cast<size_t>(n) * groups : n;
      // Host values: float16 weights in [-1, 1]; int8 any byte; int4 any nibble; scales ~0.01.
      std::vector<uint8_t> values(value_bytes);
      std::vector<__half> scales(scale_count), xh(k);
      std::uniform_int_distribution<int> byte(0, 255);
      std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
      if (kind == 0) {
        __half* h = reinterpret_cast<__half*>(values.data());
        for (size_t i = 0; i < value_bytes / 2; ++i) h[i] = __float2half(uni(rng) * 0.05f);
      } else {
        for (auto& b : values) b = static_cast<uint8_t>(byte(rng));
      }
      for (auto& s : scales) s = __float2half(0.005f + 0.01f * std::fabs(uni(rng)));
      for (auto& v : xh) v = __float2half(uni(rng));
      // Reference (float64): the weight of (row, input) in tiles.
      auto weight = [&](int row, int col) -> double {
        if (kind == 0) return half_to_float(reinterpret_cast<const __half*>(values.data())[static_cast<size_t>(row) * k + col]);
        if (!int4) {
          return static_cast<int8_t>(values[llava::tiled_offset(row, col, k)]) * static_cast<double>(half_to_float(scales[row]));
        }
        const int nibble = col / 8 * 8 + llava::int4_tile_nibble(col % 8);
        const uint8_t b = values[llava::tiled_offset(row, nibble / 2, k / 2)];
        const int q = (nibble % 2 ? b >> 4 : b & 0xF) - 8;
        return q * static_cast<double>(half_to_float(scales[static_cast<size_t>(row) * groups + col / 128]));
      };
      std::vector<double> ref(outputs);
      for (int o = 0; o < outputs; ++o) {
        auto product = [&](int row) {
          double s = 0;
          for (int c = 0; c < k; ++c) s += weight(row, c) * half_to_float(xh[c]);
          return s;
        };
        if (gated) {
          const double g = product(o), u = product(o + n / 2);
          ref[o] = g / (1 + std::exp(-g)) * u;
        } else {
          ref[o] = product(o);
        }
      }
      const size_t copy_bytes = value_bytes + scale_count * 2;
      const int copies = static_cast<int>(std::max<size_t>(2, (size_t{400} << 20) / copy_bytes + 1));
      std::vector<uint8_t*> dv(copies);
      std::vector<__half*> ds(copies);
      for (int c = 0; c < copies; ++c) {
        CHECK(cudaMalloc(&dv[c], value_bytes));
        CHECK(cudaMemcpy(dv[c], values.data(), value_bytes, cudaMemcpyHostToDevice));
        ds[c] = nullptr;
        if (scale_count) {
          CHECK(cudaMalloc(&ds[c], scale_count * 2));
          CHECK(cudaMemcpy(ds[c], scales.data(), scale_count * 2, cudaMemcpyHostToDevice));
        }
      }
      __half *dx, *dy;
      CHECK(cudaMalloc(&dx, k * 2));
      CHECK(cudaMalloc(&dy, n * 2));
      CHECK(cudaMemcpy(dx, xh.data(), k * 2, cudaMemcpyHostToDevice));
      // The paths of this kind: name and a call on copy c.
      std::vector<std::pair<std::string, std::function<void(int)>>> paths;
      if (kind == 0) {
        paths.push_back({"half_gemv (main)", [&](int c) { half_gemv(dx, dv[c], dy, 1, n, k, false, stream); }});
      } else {
        const QuantMatrix base{nullptr, nullptr, n, k, int4, true};
        paths.push_back({"quant_gemm (main)", [&, base](int c) {
                           QuantMatrix m = base;
                           m.values = dv[c], m.scales = ds[c];
                           quant_gemm(dx, m, dy, 1, false, stream, QuantGemmTiling{16, 0}, gated);
                         }});
        const V* list = int4 ? (gated ? int4_gated : int4_variants) : (gated ? int8_gated : int8_variants);
        const int count = int4 ? 5 : 6;
        for (int v = 0; v < count; ++v) {
          const V variant = list[v];
          paths.push_back({variant.name, [&, variant](int c) { variant.launch(dx, dv[c], ds[c], dy, n, k, stream); }});
        }
      }
      for (size_t p = 0; p < paths.size(); ++p) {
        if (names[kind].size() <= p) names[kind].push_back(paths[p].first);
        CHECK(cudaMemset(dy, 0, n * 2));
        paths[p].second(0);
        CHECK(cudaStreamSynchronize(stream));
        CHECK(cudaGetLastError());
        std::vector<__half> out(outputs);
        CHECK(cudaMemcpy(out.data(), dy, outputs * 2, cudaMemcpyDeviceToHost));
        double max_ref = 0, max_err = 0;
        for (int o = 0; o < outputs; ++o) {
          max_ref = std::max(max_ref, std::fabs(ref[o]));
          max_err = std::max(max_err, std::fabs(half_to_float(out[o]) - ref[o]));
        }
        for (int c = 0; c < copies; ++c) paths[p].second(c);  // warm
        CHECK(cudaEventRecord(start, stream));
        for (int i = 0; i < kCalls; ++i) paths[p].second(i % copies);
        CHECK(cudaEventRecord(stop, stream));
        CHECK(cudaEventSynchronize(stop));
        float ms = 0;
        CHECK(cudaEventElapsedTime(&ms, start, stop));
        const double us = 1000.0 * ms / kCalls;
        layer[kind][p] += us;
        std::printf("%-8s %-5s %-16s %9.2f %8.2f %10.2e\n", shape.name, kind == 0 ? "f16" : int4 ? "int4" : "int8",
                    paths[p].first.c_str(), us, copy_bytes / us / 1e6, max_err / max_ref);
      }
      for (int c = 0; c < copies; ++c) {
        CHECK(cudaFree(dv[c]));
        if (ds[c]) CHECK(cudaFree(ds[c]));
      }
      CHECK(cudaFree(dx));
      CHECK(cudaFree(dy));
    }
  }
  std::printf("\nper decoder layer (the four shapes), µs:\n");
  for (int kind = 0; kind < 3; ++kind) {
    for (size_t p = 0; p < names[kind].size(); ++p) {
      std::printf("  %-5s %-18s %8.2f\n", kind == 0 ? "f16" : kind == 1 ? "int8" : "int4", names[kind][p].c_str(),
                  layer[kind][p]);
    }
  }
  return 0;
}
