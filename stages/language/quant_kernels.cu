// Matrix products for decoding (a few input rows: the weights are read once, so bytes
// read set the speed) with float16/bfloat16, int8 or int4 weights, and dequantization
// for prefill.
//
// GEMV: one block of 256 threads takes kRowsPerBlock output rows; its threads split k,
// each reading 16 bytes of every row per step (8 float16 weights, 16 int8 ones; 8 bytes
// of int4) and the matching inputs of every x row, accumulating in float32. Warps reduce
// by shuffles, then the block through shared memory.
#include "stages/half_types.cuh"
#include "stages/language/quant_kernels.h"
#include "stages/language/quant_layout.h"

namespace llava {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerBlock = 4;
constexpr int kStep = kThreads * 16;  // inputs covered by the block per step
constexpr int kGroup = 128;           // int4 group size (plan.h: kInt4Group)

// 16 consecutive inputs of one x row as floats.
template <typename T>
__device__ inline void load_inputs(const T* x, float* out) {
  const int4* p = reinterpret_cast<const int4*>(x);
  int4 a = __ldg(p), b = __ldg(p + 1);
  const T* va = reinterpret_cast<const T*>(&a);
  const T* vb = reinterpret_cast<const T*>(&b);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    out[i] = to_float(va[i]);
    out[8 + i] = to_float(vb[i]);
  }
}

// Sums acc over the block; thread t < M * kRowsPerBlock then holds sum number t
// (input row t / kRowsPerBlock, output row t % kRowsPerBlock).
template <int M>
__device__ inline float block_sum(float (&acc)[M][kRowsPerBlock]) {
  __shared__ float partial[kWarps][M * kRowsPerBlock];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < kRowsPerBlock; ++r) {
      float v = acc[m][r];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane == 0) partial[warp][m * kRowsPerBlock + r] = v;
    }
  }
  __syncthreads();
  float total = 0.0f;
  if (threadIdx.x < M * kRowsPerBlock) {
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += partial[w][threadIdx.x];
  }
  return total;
}

// Stores the block's sums: y[m, row] = total * scale(row) for thread t = m * kRowsPerBlock + r.
template <typename T, int M, typename Scale>
__device__ inline void store_rows(float total, T* y, int row0, int n, Scale scale) {
  const int t = threadIdx.x;
  if (t < M * kRowsPerBlock) {
    const int m = t / kRowsPerBlock, row = row0 + t % kRowsPerBlock;
    if (row < n) y[static_cast<size_t>(m) * n + row] = from_float<T>(total * scale(row));
  }
}

// The GEMV's weight stream: each thread's 16 bytes of the block's rows at one step,
// loaded a step ahead of their use (the first before waiting for the inputs, so that it
// overlaps the previous kernel). Rows past n read as zeros.
template <typename Raw>
struct RowLoads {
  Raw next[kRowsPerBlock];
  template <typename Address>
  __device__ inline void load(int row0, int n, Address address) {
#pragma unroll
    for (int r = 0; r < kRowsPerBlock; ++r) {
      next[r] = Raw{};
      if (row0 + r < n) next[r] = __ldg(reinterpret_cast<const Raw*>(address(row0 + r)));
    }
  }
};

template <typename T, int M>
__global__ void half_gemv_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, int n,
                                 int k) {
  let_next_start();
  const int row0 = blockIdx.x * kRowsPerBlock;
  constexpr int kStride = kThreads * 8;
  RowLoads<uint4> weights_ahead;
  auto at = [&](int kk) { return [=](int row) { return w + static_cast<size_t>(row) * k + kk; }; };
  int kk = threadIdx.x * 8;
  if (kk < k) weights_ahead.load(row0, n, at(kk));
  wait_for_inputs();
  float acc[M][kRowsPerBlock] = {};
  for (; kk < k; kk += kStride) {
    float weights[kRowsPerBlock][8];  // converted once, used by every x row
#pragma unroll
    for (int r = 0; r < kRowsPerBlock; ++r) unpack8<T>(weights_ahead.next[r], weights[r]);
    if (kk + kStride < k) weights_ahead.load(row0, n, at(kk + kStride));
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float in[8];
      unpack8<T>(__ldg(reinterpret_cast<const uint4*>(x + static_cast<size_t>(m) * k + kk)), in);
#pragma unroll
      for (int r = 0; r < kRowsPerBlock; ++r) {
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) sum += in[i] * weights[r][i];
        acc[m][r] += sum;
      }
    }
  }
  store_rows<T, M>(block_sum<M>(acc), y, row0, n, [](int) { return 1.0f; });
}

template <typename T, int M>
__global__ void int8_gemv_kernel(const T* __restrict__ x, const int8_t* __restrict__ w,
                                 const T* __restrict__ scales, T* __restrict__ y, int n, int k) {
  let_next_start();
  const int row0 = blockIdx.x * kRowsPerBlock;
  RowLoads<int4> weights_ahead;
  auto at = [&](int kk) { return [=](int row) { return w + static_cast<size_t>(row) * k + kk; }; };
  int kk = threadIdx.x * 16;
  if (kk < k) weights_ahead.load(row0, n, at(kk));
  wait_for_inputs();
  float acc[M][kRowsPerBlock] = {};
  for (; kk < k; kk += kStep) {
    float weights[kRowsPerBlock][16];  // converted once, used by every x row
#pragma unroll
    for (int r = 0; r < kRowsPerBlock; ++r) {
      const int8_t* q = reinterpret_cast<const int8_t*>(&weights_ahead.next[r]);
#pragma unroll
      for (int i = 0; i < 16; ++i) weights[r][i] = static_cast<float>(q[i]);
    }
    if (kk + kStep < k) weights_ahead.load(row0, n, at(kk + kStep));
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float in[16];
      load_inputs(x + static_cast<size_t>(m) * k + kk, in);
#pragma unroll
      for (int r = 0; r < kRowsPerBlock; ++r) {
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < 16; ++i) sum += in[i] * weights[r][i];
        acc[m][r] += sum;
      }
    }
  }
  store_rows<T, M>(block_sum<M>(acc), y, row0, n, [&](int row) { return to_float(scales[row]); });
}

template <typename T, int M>
__global__ void int4_gemv_kernel(const T* __restrict__ x, const uint8_t* __restrict__ w,
                                 const T* __restrict__ scales, T* __restrict__ y, int n, int k) {
  let_next_start();
  const int row0 = blockIdx.x * kRowsPerBlock;
  const int groups = k / kGroup;
  RowLoads<uint2> weights_ahead;
  auto at = [&](int kk) { return [=](int row) { return w + (static_cast<size_t>(row) * k + kk) / 2; }; };
  int kk = threadIdx.x * 16;
  if (kk < k) weights_ahead.load(row0, n, at(kk));
  wait_for_inputs();
  float acc[M][kRowsPerBlock] = {};
  for (; kk < k; kk += kStep) {
    float weights[kRowsPerBlock][16];
#pragma unroll
    for (int r = 0; r < kRowsPerBlock; ++r) {
      const float scale = row0 + r < n ? to_float(scales[static_cast<size_t>(row0 + r) * groups + kk / kGroup]) : 0.0f;
      const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&weights_ahead.next[r]);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        weights[r][2 * i] = static_cast<float>(static_cast<int>(bytes[i] & 0xF) - 8) * scale;
        weights[r][2 * i + 1] = static_cast<float>(static_cast<int>(bytes[i] >> 4) - 8) * scale;
      }
    }
    if (kk + kStep < k) weights_ahead.load(row0, n, at(kk + kStep));
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float in[16];
      load_inputs(x + static_cast<size_t>(m) * k + kk, in);
#pragma unroll
      for (int r = 0; r < kRowsPerBlock; ++r) {
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < 16; ++i) sum += in[i] * weights[r][i];
        acc[m][r] += sum;
      }
    }
  }
  store_rows<T, M>(block_sum<M>(acc), y, row0, n, [](int) { return 1.0f; });  // scales applied per group
}

// Dequantization for cuBLAS (prefill): each thread widens 16 bytes of one row (16 int8
// or 32 int4 weights) and writes them as two or four 16-byte stores. Rows whose width
// does not split so (k % 16 for int8, k % 32 for int4) go one weight per thread. The
// values are in rows or in tiles (quant_layout.h), where 16 aligned bytes of a row stay
// together.
template <typename T>
__global__ void int8_dequantize_kernel(const int8_t* __restrict__ w, const T* __restrict__ scales,
                                       T* __restrict__ out, int n, int k, bool tiled) {
  const size_t vectors = static_cast<size_t>(n) * (k / 16);
  const size_t v = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= vectors) return;
  const size_t row = v / (k / 16), first = v * 16;
  const float scale = to_float(scales[row]);
  const int4 raw =
      __ldg(reinterpret_cast<const int4*>(w + quant_offset(tiled, row, first - row * k, k)));
  const int8_t* q = reinterpret_cast<const int8_t*>(&raw);
  float values[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) values[i] = static_cast<float>(q[i]) * scale;
  *reinterpret_cast<uint4*>(out + first) = pack8<T>(values);
  *reinterpret_cast<uint4*>(out + first + 8) = pack8<T>(values + 8);
}

template <typename T>
__global__ void int4_dequantize_kernel(const uint8_t* __restrict__ w, const T* __restrict__ scales,
                                       T* __restrict__ out, int n, int k, bool tiled) {
  const size_t vectors = static_cast<size_t>(n) * (k / 32);
  const size_t v = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= vectors) return;
  const size_t row = v / (k / 32), first = v * 32, col = first - row * k;
  const int groups = (k + kGroup - 1) / kGroup;
  const float scale = to_float(scales[row * groups + col / kGroup]);  // 32 inputs never cross a group
  const uint4 raw =
      __ldg(reinterpret_cast<const uint4*>(w + quant_offset(tiled, row, col / 2, k / 2)));
  const uint32_t* words = reinterpret_cast<const uint32_t*>(&raw);
  float values[32];
  // Input i of word v is its nibble i in rows, int4_tile_nibble(i) in tiles.
  auto widen = [&](auto nibble_of) {
#pragma unroll
    for (int v = 0; v < 4; ++v) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        values[8 * v + i] =
            static_cast<float>(static_cast<int>((words[v] >> (4 * nibble_of(i))) & 0xF) - 8) *
            scale;
      }
    }
  };
  if (tiled) {
    widen([](int i) { return int4_tile_nibble(i); });
  } else {
    widen([](int i) { return i; });
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) *reinterpret_cast<uint4*>(out + first + 8 * i) = pack8<T>(values + 8 * i);
}

template <typename T>
__global__ void int8_dequantize_each_kernel(const int8_t* __restrict__ w,
                                            const T* __restrict__ scales, T* __restrict__ out,
                                            int n, int k, bool tiled) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<size_t>(n) * k) return;
  const size_t row = i / k;
  out[i] = from_float<T>(static_cast<float>(w[quant_offset(tiled, row, i % k, k)]) *
                         to_float(scales[row]));
}

template <typename T>
__global__ void int4_dequantize_each_kernel(const uint8_t* __restrict__ w,
                                            const T* __restrict__ scales, T* __restrict__ out,
                                            int n, int k, bool tiled) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<size_t>(n) * k) return;
  const size_t row = i / k, col = i % k;
  const int groups = (k + kGroup - 1) / kGroup, row_bytes = (k + 1) / 2;
  // The input's nibble in its row: col in rows; in tiles, ordered within its word.
  const size_t nibble = tiled ? col / 8 * 8 + int4_tile_nibble(static_cast<int>(col % 8)) : col;
  const uint8_t byte = w[quant_offset(tiled, row, nibble / 2, row_bytes)];
  const int q = static_cast<int>(nibble % 2 ? byte >> 4 : byte & 0xF) - 8;
  out[i] = from_float<T>(static_cast<float>(q) * to_float(scales[row * groups + col / kGroup]));
}

enum class Weights { kHalf, kInt8, kInt4 };

template <typename T, int M>
void launch_gemv(Weights kind, const void* x, const void* w, const void* s, void* y, int n, int k,
                 cudaStream_t stream) {
  const dim3 grid((n + kRowsPerBlock - 1) / kRowsPerBlock);
  const auto* in = static_cast<const T*>(x);
  const auto* scales = static_cast<const T*>(s);
  auto* out = static_cast<T*>(y);
  if (kind == Weights::kHalf) {
    launch_early(half_gemv_kernel<T, M>, grid, kThreads, 0, stream, in, static_cast<const T*>(w), out, n, k);
  } else if (kind == Weights::kInt4) {
    launch_early(int4_gemv_kernel<T, M>, grid, kThreads, 0, stream, in, static_cast<const uint8_t*>(w), scales, out, n, k);
  } else {
    launch_early(int8_gemv_kernel<T, M>, grid, kThreads, 0, stream, in, static_cast<const int8_t*>(w), scales, out, n, k);
  }
}

template <typename T>
void gemv(Weights kind, const void* x, const void* w, const void* s, void* y, int m, int n, int k,
          cudaStream_t stream) {
  switch (m) {
    case 1: launch_gemv<T, 1>(kind, x, w, s, y, n, k, stream); break;
    case 2: launch_gemv<T, 2>(kind, x, w, s, y, n, k, stream); break;
    case 3: launch_gemv<T, 3>(kind, x, w, s, y, n, k, stream); break;
    case 4: launch_gemv<T, 4>(kind, x, w, s, y, n, k, stream); break;
    case 5: launch_gemv<T, 5>(kind, x, w, s, y, n, k, stream); break;
    case 6: launch_gemv<T, 6>(kind, x, w, s, y, n, k, stream); break;
    case 7: launch_gemv<T, 7>(kind, x, w, s, y, n, k, stream); break;
    case 8: launch_gemv<T, 8>(kind, x, w, s, y, n, k, stream); break;
    default: throw std::runtime_error("GEMV: " + std::to_string(m) + " rows (1 to 8 supported)");
  }
}

void gemv_any(Weights kind, const void* x, const void* w, const void* s, void* y, int m, int n, int k,
              bool bf16, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  if (bf16) {
    gemv<__nv_bfloat16>(kind, x, w, s, y, m, n, k, st);
  } else {
    gemv<__half>(kind, x, w, s, y, m, n, k, st);
  }
  check_launch(kind == Weights::kHalf ? "GEMV" : kind == Weights::kInt4 ? "int4 GEMV" : "int8 GEMV");
}

unsigned blocks_for(size_t items) { return static_cast<unsigned>((items + kThreads - 1) / kThreads); }

template <typename T>
void launch_dequantize(bool int4, const void* w, const void* scales, void* out, int n, int k,
                       bool tiled, cudaStream_t stream) {
  const auto* s = static_cast<const T*>(scales);
  auto* o = static_cast<T*>(out);
  const size_t all = static_cast<size_t>(n) * k;
  const bool vectors = aligned16(w) && aligned16(out) && k % (int4 ? 32 : 16) == 0;
  if (int4) {
    const auto* q = static_cast<const uint8_t*>(w);
    if (vectors) {
      int4_dequantize_kernel<<<blocks_for(all / 32), kThreads, 0, stream>>>(q, s, o, n, k, tiled);
    } else {
      int4_dequantize_each_kernel<<<blocks_for(all), kThreads, 0, stream>>>(q, s, o, n, k, tiled);
    }
  } else {
    const auto* q = static_cast<const int8_t*>(w);
    if (vectors) {
      int8_dequantize_kernel<<<blocks_for(all / 16), kThreads, 0, stream>>>(q, s, o, n, k, tiled);
    } else {
      int8_dequantize_each_kernel<<<blocks_for(all), kThreads, 0, stream>>>(q, s, o, n, k, tiled);
    }
  }
}

void dequantize_any(bool int4, const void* w, const void* scales, void* out, int n, int k,
                    bool tiled, bool bf16, void* stream) {
  if (tiled && !tileable(n, int4 ? (k + 1) / 2 : k)) {
    throw std::invalid_argument(std::string(int4 ? "int4" : "int8") +
                                " dequantize: " + std::to_string(n) + " x " + std::to_string(k) +
                                " is not whole tiles of 8 rows x 64 bytes");
  }
  auto st = static_cast<cudaStream_t>(stream);
  if (bf16) {
    launch_dequantize<__nv_bfloat16>(int4, w, scales, out, n, k, tiled, st);
  } else {
    launch_dequantize<__half>(int4, w, scales, out, n, k, tiled, st);
  }
  check_launch(int4 ? "int4 dequantize" : "int8 dequantize");
}

}  // namespace

bool gemv_supports(bool int4, int64_t k) { return k > 0 && k % (int4 ? kGroup : 16) == 0; }

void half_gemv(const void* x, const void* w, void* y, int m, int n, int k, bool bf16, void* stream) {
  gemv_any(Weights::kHalf, x, w, nullptr, y, m, n, k, bf16, stream);
}

void int8_gemv(const void* x, const int8_t* w, const void* scales, void* y, int m, int n, int k,
               bool bf16, void* stream) {
  gemv_any(Weights::kInt8, x, w, scales, y, m, n, k, bf16, stream);
}

void int4_gemv(const void* x, const uint8_t* w, const void* scales, void* y, int m, int n, int k,
               bool bf16, void* stream) {
  gemv_any(Weights::kInt4, x, w, scales, y, m, n, k, bf16, stream);
}

void int8_dequantize(const int8_t* w, const void* scales, void* out, int n, int k, bool tiled,
                     bool bf16, void* stream) {
  dequantize_any(false, w, scales, out, n, k, tiled, bf16, stream);
}

void int4_dequantize(const uint8_t* w, const void* scales, void* out, int n, int k, bool tiled,
                     bool bf16, void* stream) {
  dequantize_any(true, w, scales, out, n, k, tiled, bf16, stream);
}

}  // namespace cuda
}  // namespace llava
