// float16 / bfloat16 conversions, 16-byte packs, block reductions and the launch check,
// shared by our CUDA kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <utility>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace llava {
namespace cuda {

__device__ inline float to_float(__half v) { return __half2float(v); }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ inline T from_float(float v);
template <>
__device__ inline __half from_float<__half>(float v) { return __float2half(v); }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
// A float rounded to T and back: where LibTorch's T arithmetic rounds.
template <typename T>
__device__ inline float rounded(float v) { return to_float(from_float<T>(v)); }

// Calls f(T{}) with T the element type the flag names.
template <typename F>
inline void with_type(bool bf16, F f) {
  if (bf16) {
    f(__nv_bfloat16{});
  } else {
    f(__half{});
  }
}

// The sum (or the max) of v over the block; every thread gets it. `scratch` holds 32.
template <bool kMax>
__device__ inline float block_reduce(float v, float* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = kMax ? fmaxf(v, other) : v + other;
  }
  const int warps = (blockDim.x + 31) / 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  v = scratch[0];
  for (int w = 1; w < warps; ++w) v = kMax ? fmaxf(v, scratch[w]) : v + scratch[w];
  return v;
}

// silu(g) rounded to T (as LibTorch's composition stores it), times u.
template <typename T>
__device__ inline float silu_times(float g, float u) { return rounded<T>(g / (1.0f + expf(-g))) * u; }

// 8 elements of T (16 bytes) as floats.
template <typename T>
__device__ inline void unpack8(const uint4& raw, float* out) {
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = to_float(v[i]);
}

// 8 floats as 8 elements of T (16 bytes).
template <typename T>
__device__ inline uint4 pack8(const float* in) {
  uint4 raw;
  T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = from_float<T>(in[i]);
  return raw;
}

__device__ inline uint4 load16(const void* p) { return *reinterpret_cast<const uint4*>(p); }

// Our row kernels (a row per block, 16-byte accesses, each thread's kIters x 8 values in
// registers): the block's threads and iterations for rows of h (iters 0: h % 8 != 0 or
// a row longer than 32768).
struct RowShape {
  int threads = 0, iters = 0;
};
inline RowShape row_shape(int h) {
  if (h % 8 != 0 || h <= 0) return {};
  const int vectors = h / 8;
  const int threads = vectors < 1024 ? (vectors + 31) / 32 * 32 : 1024, iters = (vectors + threads - 1) / threads;
  return iters <= 4 ? RowShape{threads, iters} : RowShape{};
}

// Calls launch(std::integral_constant<int, kIters>{}) with the row kernels' template
// argument for a row shape's iterations (1, 2, or 4 for 3 and 4).
template <typename F>
inline void with_iters(int iters, F launch) {
  if (iters == 1) {
    launch(std::integral_constant<int, 1>{});
  } else if (iters == 2) {
    launch(std::integral_constant<int, 2>{});
  } else {
    launch(std::integral_constant<int, 4>{});
  }
}

// Whether p suits the row kernels' 16-byte accesses.
inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// A row kernel's first step: this thread's values of row `offset` [h], x or, with delta,
// to_T(x + delta) (the residual stream's next value, also stored to sum_out if given).
template <typename T, int kIters>
__device__ inline void load_row(const T* x, const T* delta, T* sum_out, size_t offset, int h, float (&v)[kIters][8]) {
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int i = (it * blockDim.x + threadIdx.x) * 8;
    if (i >= h) break;
    unpack8<T>(load16(x + offset + i), v[it]);
    if (delta != nullptr) {
      float add[8];
      unpack8<T>(load16(delta + offset + i), add);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[it][e] = rounded<T>(v[it][e] + add[e]);
      if (sum_out != nullptr) *reinterpret_cast<uint4*>(sum_out + offset + i) = pack8<T>(v[it]);
    }
  }
}

// Programmatic dependent launch (Hopper, compute capability 9.0): a kernel launched with
// launch_early() may start while the kernel before it in the stream still runs; it must
// call wait_for_inputs() before its first read of anything an earlier kernel wrote (and
// write nothing before). What it reads before (weights) overlaps the previous kernel's
// tail and the launch itself: at batch 1 a decode step is ~300 short kernels in a row.
// let_next_start() lets the next such kernel be scheduled once every block of this one
// has started. Both are no-ops on older GPUs and in code built for them, where
// launch_early() launches plainly (tests/perf/README.md, "Decode step").
__device__ inline void wait_for_inputs() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ inline void let_next_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Whether the current device runs `kernel` from code built for `version` (80: compute
// capability 8.0) or newer; a PTX-only build for an older architecture, compiled by the
// driver at load, has not. Asked once per device: `known` is the caller's cache (0 unknown,
// 1 yes, 2 no; racing callers write the same value).
template <typename... Params>
inline bool runs_code_of(void (*kernel)(Params...), int version, int (&known)[64]) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return false;
  if (known[device] == 0) {
    cudaFuncAttributes attributes{};
    const bool ok = cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess && attributes.ptxVersion >= version &&
                    attributes.binaryVersion >= version;
    cudaGetLastError();  // a device without code for the kernel leaves an error behind
    known[device] = ok ? 1 : 2;
  }
  return known[device] == 1;
}

namespace detail {
// A kernel of this file's build: its code has the two instructions above only if it was
// built for 9.0 or newer (a PTX-only build for 7.5 run on an H100 has not).
static __global__ void early_launch_probe() {}
}  // namespace detail

// Whether kernels of this build may be launched early on the current device (LLAVA_PIPE_PDL=0
// turns it off, to measure what it gives). Per file, as the probe is.
static inline bool early_launch_enabled() {
#if CUDART_VERSION >= 12030  // graphs capture such launches from 12.3
  static const bool allowed = [] {
    const char* setting = std::getenv("LLAVA_PIPE_PDL");
    return setting == nullptr || std::string(setting) != "0";
  }();
  static int known[64] = {};
  return allowed && runs_code_of(detail::early_launch_probe, 90, known);
#else
  return false;
#endif
}

// kernel<<<grid, block, shared, stream>>>(args...), allowed to start early where
// early_launch_enabled().
template <typename... Params, typename... Args>
static inline void launch_early(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared, cudaStream_t stream,
                         Args&&... args) {
#if CUDART_VERSION >= 12030  // graphs capture such launches from 12.3
  if (early_launch_enabled()) {
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = shared;
    config.stream = stream;
    config.attrs = attribute;
    config.numAttrs = 1;
    cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
    return;
  }
#endif
  kernel<<<grid, block, shared, stream>>>(std::forward<Args>(args)...);
}

inline void check_launch(const char* what) {
  cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(error));
}

}  // namespace cuda
}  // namespace llava
