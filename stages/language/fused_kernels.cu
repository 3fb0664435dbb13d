// Residual add + RMSNorm, RoPE (+ KV write), SiLU-gating and decode attention as one
// kernel each (see fused_kernels.h).
#include "stages/language/fused_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "stages/half_types.cuh"

namespace llava {
namespace cuda {
namespace {

// RMSNorm with 16-byte accesses, each thread's kIters x 8 values held in registers
// between the sum and the scaling (one read of x, one of w). Rows of h % 8 == 0.
template <typename T, int kIters>
__global__ void rms_norm_vector_kernel(const T* __restrict__ x, const T* __restrict__ delta, T* __restrict__ sum_out,
                                       const T* __restrict__ w, T* __restrict__ y, int h, float eps) {
  let_next_start();
  wait_for_inputs();
  const size_t offset = static_cast<size_t>(blockIdx.x) * h;
  float v[kIters][8];
  load_row<T, kIters>(x, delta, sum_out, offset, h, v);
  float sum = 0.0f;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    if ((it * blockDim.x + threadIdx.x) * 8 >= h) break;
#pragma unroll
    for (int e = 0; e < 8; ++e) sum += v[it][e] * v[it][e];
  }
  __shared__ float scratch[32];
  const float inverse = rsqrtf(block_reduce<false>(sum, scratch) / h + eps);
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int i = (it * blockDim.x + threadIdx.x) * 8;
    if (i >= h) break;
    float weight[8], out[8];
    unpack8<T>(load16(w + i), weight);
#pragma unroll
    for (int e = 0; e < 8; ++e) out[e] = weight[e] * rounded<T>(v[it][e] * inverse);
    *reinterpret_cast<uint4*>(y + offset + i) = pack8<T>(out);
  }
}

template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ delta, T* __restrict__ sum_out,
                                const T* __restrict__ w, T* __restrict__ y, int h, float eps) {
  let_next_start();
  wait_for_inputs();
  const size_t offset = static_cast<size_t>(blockIdx.x) * h;
  const T* row = x + offset;
  float sum = 0.0f;
  for (int i = threadIdx.x; i < h; i += blockDim.x) {
    float v = to_float(row[i]);
    if (delta != nullptr) {
      v = rounded<T>(v + to_float(delta[offset + i]));
      sum_out[offset + i] = from_float<T>(v);  // read back below by this same thread
    }
    sum += v * v;
  }
  __shared__ float scratch[32];
  const float inverse = rsqrtf(block_reduce<false>(sum, scratch) / h + eps);
  if (delta != nullptr) row = sum_out + offset;
  T* out = y + offset;
  for (int i = threadIdx.x; i < h; i += blockDim.x) {
    const float normed = rounded<T>(to_float(row[i]) * inverse);
    out[i] = from_float<T>(to_float(w[i]) * normed);
  }
}

// Blocks (heads_per_block heads, row), a thread per kWidth pairs (j, j + d/2) of a head:
// heads [0, heads) are q, then kv_heads k, then (only when storing) kv_heads v, copied to
// the cache. kWidth 8: 16-byte accesses; else 1 (rope() says where). (A block per head was
// 41,000 blocks of 64 threads for a 641-token prompt: 51 µs a layer on an H200.)
template <typename T, int kWidth>
__global__ void rope_kernel(T* __restrict__ qkv, const T* __restrict__ cos_table, const T* __restrict__ sin_table,
                            const int64_t* __restrict__ positions, int row_stride, int heads, int kv_heads, int d,
                            T* __restrict__ k_cache, T* __restrict__ v_cache, int64_t max_tokens,
                            const int64_t* __restrict__ slots, int64_t first_slot, int rows_per_slot, int total_heads) {
  let_next_start();
  wait_for_inputs();
  const int half = d / 2, lanes = half / kWidth;  // threads per head
  const int head = blockIdx.x * (blockDim.x / lanes) + threadIdx.x / lanes, r = blockIdx.y,
            j = threadIdx.x % lanes * kWidth;
  if (head >= total_heads) return;
  const int64_t position = positions[r];
  T* x = qkv + static_cast<int64_t>(r) * row_stride + head * d;
  // Row r's place for kv head g in the cache: ((slot * kv_heads + g) * max_tokens + position) * d.
  auto cache_at = [&](int g) {
    const int64_t slot = slots != nullptr ? slots[r / rows_per_slot] : first_slot + r / rows_per_slot;
    return ((slot * kv_heads + g) * max_tokens + position) * d;
  };
  // kWidth elements from / to p.
  auto load = [](const T* p, float (&v)[kWidth]) {
    if constexpr (kWidth == 8) {
      unpack8<T>(load16(p), v);
    } else {
      v[0] = to_float(p[0]);
    }
  };
  auto store = [](T* p, const float (&v)[kWidth]) {
    if constexpr (kWidth == 8) {
      *reinterpret_cast<uint4*>(p) = pack8<T>(v);
    } else {
      p[0] = from_float<T>(v[0]);
    }
  };
  float x1[kWidth], x2[kWidth];
  load(x + j, x1);
  load(x + j + half, x2);
  if (head >= heads + kv_heads) {  // a v head
    T* to = v_cache + cache_at(head - heads - kv_heads);
    store(to + j, x1);
    store(to + j + half, x2);
    return;
  }
  float c1[kWidth], c2[kWidth], s1[kWidth], s2[kWidth];
  load(cos_table + position * d + j, c1);
  load(cos_table + position * d + j + half, c2);
  load(sin_table + position * d + j, s1);
  load(sin_table + position * d + j + half, s2);
  // x * cos + cat(-x2, x1) * sin, each product and the sum rounded to T.
  float first[kWidth], second[kWidth];
#pragma unroll
  for (int e = 0; e < kWidth; ++e) {
    first[e] = rounded<T>(rounded<T>(x1[e] * c1[e]) + rounded<T>(-x2[e] * s1[e]));
    second[e] = rounded<T>(rounded<T>(x2[e] * c2[e]) + rounded<T>(x1[e] * s2[e]));
  }
  if (k_cache != nullptr && head >= heads) {  // a k head: the cache's copy is the one read
    T* to = k_cache + cache_at(head - heads);
    store(to + j, first);
    store(to + j + half, second);
    return;
  }
  store(x + j, first);
  store(x + j + half, second);
}

// Block (columns, row); kVector: 8 columns a thread with 16-byte accesses (n % 8 == 0,
// aligned), else one.
template <typename T, bool kVector>
__global__ void silu_mul_kernel(const T* __restrict__ gate_up, T* __restrict__ out, int n) {
  let_next_start();
  wait_for_inputs();
  constexpr int kWidth = kVector ? 8 : 1;
  const int c = (blockIdx.x * blockDim.x + threadIdx.x) * kWidth;
  if (c >= n) return;
  const T* gate = gate_up + static_cast<size_t>(blockIdx.y) * 2 * n + c;
  T* to = out + static_cast<size_t>(blockIdx.y) * n + c;
  if constexpr (kVector) {
    float g[8], u[8];
    unpack8<T>(load16(gate), g);
    unpack8<T>(load16(gate + n), u);
#pragma unroll
    for (int e = 0; e < 8; ++e) g[e] = silu_times<T>(g[e], u[e]);
    *reinterpret_cast<uint4*>(to) = pack8<T>(g);
  } else {
    *to = from_float<T>(silu_times<T>(to_float(gate[0]), to_float(gate[n])));
  }
}

// Decode attention. A block takes kChunk keys of one (row, head): its scores, their
// softmax relative to the chunk's max m, the weighted sum of values, stored with m and
// the weights' sum l; the row's last block to finish rescales the chunks to the row's
// max and writes the output (one launch per layer).
constexpr int kChunk = 64;  // keys per block: ~450 blocks for one 7B row of 900 keys
constexpr int kThreads = 128;
static_assert(kChunk <= kThreads, "the softmax takes a key per thread");

// kEarly: positions and the cache rows before them are older than this step
// (fused_kernels.h), so they are read before waiting: their loads overlap the RoPE kernel
// that writes the step's own key and value (row `fresh` of the chunk), read after the wait.
// Taken for one row, where the grid is a few hundred blocks (tests/perf/README.md, "Speed,
// round 5": decoding at batch 1 +3.4% int8, +3.9% int4); with more rows the registers
// the loads hold across the wait (95 against 62 at D = 128) cost more blocks per
// multiprocessor than the overlap saves (-3 to -4% at 8 and 32 rows).
template <typename T, int D, bool kEarly>
__global__ void __launch_bounds__(kThreads)
    attention_chunk_kernel(const T* __restrict__ q, int q_stride, const T* __restrict__ k_cache,
                           const T* __restrict__ v_cache, int64_t max_tokens, const int64_t* __restrict__ positions,
                           int heads, int kv_heads, float scale, float* __restrict__ work, int* __restrict__ counters,
                           T* __restrict__ out) {
  let_next_start();
  if constexpr (!kEarly) wait_for_inputs();
  constexpr int kLanes = D / 8;  // lanes per key, 8 elements (16 bytes) each
  constexpr int kKeysPerWarp = 32 / kLanes;
  constexpr int kKeysPerRound = kThreads / 32 * kKeysPerWarp;
  constexpr int kRounds = kChunk / kKeysPerRound;
  static_assert(kChunk % kKeysPerRound == 0, "whole rounds");
  const int chunk = blockIdx.x, head = blockIdx.y, r = blockIdx.z;
  const int begin = chunk * kChunk;
  const int length = static_cast<int>(positions[r]) + 1;
  if (!kEarly && begin >= length) return;  // past this row's keys: the combine reads no such chunk
  const int n = begin < length ? min(kChunk, length - begin) : 0, fresh = length - 1 - begin;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int sub = lane / kLanes, part = lane % kLanes;
  const int64_t kv_head = head / (heads / kv_heads);
  const int64_t first = ((static_cast<int64_t>(r) * kv_heads + kv_head) * max_tokens + begin) * D + part * 8;
  // Every key and value row this thread reads, requested at once so that their
  // latencies overlap (zeros past the row's keys).
  uint4 keys[kRounds], values[kRounds];
  auto load = [&](int i, int j) {
    keys[i] = *reinterpret_cast<const uint4*>(k_cache + first + static_cast<int64_t>(j) * D);
    values[i] = *reinterpret_cast<const uint4*>(v_cache + first + static_cast<int64_t>(j) * D);
  };
#pragma unroll
  for (int i = 0; i < kRounds; ++i) {
    const int j = i * kKeysPerRound + warp * kKeysPerWarp + sub;
    keys[i] = values[i] = make_uint4(0, 0, 0, 0);
    if (j < n && (!kEarly || j != fresh)) load(i, j);
  }
  if constexpr (kEarly) {
    wait_for_inputs();  // q and the fresh row
    if (n == 0) return;
#pragma unroll
    for (int i = 0; i < kRounds; ++i) {
      const int j = i * kKeysPerRound + warp * kKeysPerWarp + sub;
      if (j == fresh) load(i, j);
    }
  }
  float qv[8];
  unpack8<T>(*reinterpret_cast<const uint4*>(q + static_cast<int64_t>(r) * q_stride + head * D + part * 8), qv);
  __shared__ float weights[kThreads];
  __shared__ float scratch[32];
#pragma unroll
  for (int i = 0; i < kRounds; ++i) {
    const int j = i * kKeysPerRound + warp * kKeysPerWarp + sub;
    float kv[8], dot = 0.0f;
    unpack8<T>(keys[i], kv);
#pragma unroll
    for (int e = 0; e < 8; ++e) dot += qv[e] * kv[e];
    for (int offset = kLanes / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    if (part == 0 && j < n) weights[j] = dot * scale;
  }
  __syncthreads();
  const int t = threadIdx.x;
  const float score = t < n ? weights[t] : -INFINITY;
  const float m = block_reduce<true>(score, scratch);
  const float p = t < n ? expf(score - m) : 0.0f;
  weights[t] = p;  // each thread its own entry; the sum's barriers order it before the reads
  const float l = block_reduce<false>(p, scratch);
  float acc[8] = {};
#pragma unroll
  for (int i = 0; i < kRounds; ++i) {
    const float pj = weights[i * kKeysPerRound + warp * kKeysPerWarp + sub];  // 0 past the keys
    float vv[8];
    unpack8<T>(values[i], vv);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] += pj * vv[e];
  }
  // Sum over the keys each warp's lane groups took, then over the warps.
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    for (int offset = kLanes; offset < 32; offset *= 2) acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], offset);
  }
  __shared__ float partial[kThreads / 32][D];
  if (sub == 0) {
#pragma unroll
    for (int e = 0; e < 8; ++e) partial[warp][part * 8 + e] = acc[e];
  }
  __syncthreads();
  float* mine = work + ((static_cast<int64_t>(r) * heads + head) * gridDim.x + chunk) * (D + 2);
  for (int e = t; e < D; e += kThreads) {
    float total = 0.0f;
    for (int w = 0; w < kThreads / 32; ++w) total += partial[w][e];
    mine[e] = total;
  }
  if (t == 0) {
    mine[D] = m;
    mine[D + 1] = l;
  }
  // The last of the row's chunks to finish combines them (and resets the counter for the
  // next layer): every chunk rescaled to the row's max.
  const int used = min(static_cast<int>(gridDim.x), (length + kChunk - 1) / kChunk);
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (t == 0) {
    int* counter = counters + static_cast<int64_t>(r) * heads + head;
    last = atomicAdd(counter, 1) == used - 1;
    if (last) *counter = 0;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  // Each chunk's factor to the row's max, once (in shared memory, a float per chunk of
  // the grid), then every output element as a sum of independent loads.
  extern __shared__ float rescale[];
  const float* all = work + (static_cast<int64_t>(r) * heads + head) * gridDim.x * (D + 2);
  float chunk_max = -INFINITY;
  for (int c = t; c < used; c += kThreads) chunk_max = fmaxf(chunk_max, __ldcg(all + c * (D + 2) + D));
  const float row_max = block_reduce<true>(chunk_max, scratch);
  float chunk_sum = 0.0f;
  for (int c = t; c < used; c += kThreads) {
    rescale[c] = expf(__ldcg(all + c * (D + 2) + D) - row_max);
    chunk_sum += __ldcg(all + c * (D + 2) + D + 1) * rescale[c];
  }
  const float sum = block_reduce<false>(chunk_sum, scratch);  // its barriers publish rescale
  for (int e = t; e < D; e += kThreads) {
    float total = 0.0f;
#pragma unroll 4
    for (int c = 0; c < used; ++c) total += __ldcg(all + c * (D + 2) + e) * rescale[c];
    out[(static_cast<int64_t>(r) * heads + head) * D + e] = from_float<T>(total / sum);
  }
}

template <typename T, int D>
void launch_attention(const T* qkv, int q_stride, const KvLayer& cache, const int64_t* positions, int rows,
                      int heads, int kv_heads, int chunks, float scale, float* work, int* counters, T* out,
                      cudaStream_t stream) {
  auto* kernel = rows == 1 ? attention_chunk_kernel<T, D, true> : attention_chunk_kernel<T, D, false>;
  launch_early(kernel, dim3(chunks, heads, rows), kThreads, chunks * sizeof(float), stream, qkv, q_stride,
      static_cast<const T*>(cache.k), static_cast<const T*>(cache.v), cache.max_tokens, positions, heads, kv_heads,
      scale, work, counters, out);
  check_launch("decode attention");
}

}  // namespace

void rms_norm(const void* x, const void* delta, void* sum, const void* w, void* y, int rows, int h, float eps,
              bool bf16, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  const RowShape shape = row_shape(h);
  const bool vector = shape.iters > 0 && aligned16(x) && aligned16(w) && aligned16(y) &&
                      (delta == nullptr || (aligned16(delta) && aligned16(sum)));
  with_type(bf16, [&](auto tag) {
    using T = decltype(tag);
    const auto *in = static_cast<const T*>(x), *add = static_cast<const T*>(delta), *weight = static_cast<const T*>(w);
    auto *total = static_cast<T*>(sum), *out = static_cast<T*>(y);
    if (!vector) {
      launch_early(rms_norm_kernel<T>, rows, h >= 1024 ? 1024 : 256, 0, st, in, add, total, weight, out, h, eps);
      return;
    }
    with_iters(shape.iters, [&](auto iters) {
      launch_early(rms_norm_vector_kernel<T, decltype(iters)::value>, rows, shape.threads, 0, st, in, add, total,
                   weight, out, h, eps);
    });
  });
  check_launch("RMSNorm");
}

void rope(void* qkv, const void* cos_table, const void* sin_table, const int64_t* positions, int rows,
          int row_stride, int heads, int kv_heads, int d, const KvLayer* store, bool bf16, void* stream) {
  with_type(bf16, [&](auto tag) {
    using T = decltype(tag);
    const int total_heads = heads + kv_heads + (store != nullptr ? kv_heads : 0);
    // 16-byte accesses where every head's halves, the table rows and the cache rows start on
    // 16 bytes, for prompts (641 rows: 25.4 -> 11.8 µs a layer with the cache writes); a few
    // rows keep a pair a thread, which spreads them over more blocks (1 row: 2.9 µs, against
    // 4.1 in 3 blocks of 8 pairs a thread).
    const bool vector = rows >= 32 && (d / 2) % 8 == 0 && row_stride % 8 == 0 && aligned16(qkv) &&
                        aligned16(cos_table) && aligned16(sin_table) &&
                        (store == nullptr || (aligned16(store->k) && aligned16(store->v)));
    auto launch = [&](auto kernel, int width) {
      const int lanes = d / 2 / width, per_block = std::max(1, 256 / lanes);
      launch_early(kernel, dim3((total_heads + per_block - 1) / per_block, rows), per_block * lanes, 0,
          static_cast<cudaStream_t>(stream), static_cast<T*>(qkv), static_cast<const T*>(cos_table),
          static_cast<const T*>(sin_table), positions, row_stride, heads, kv_heads, d,
          store ? static_cast<T*>(store->k) : nullptr, store ? static_cast<T*>(store->v) : nullptr,
          store ? store->max_tokens : 0, store ? store->slots : nullptr, store ? store->first_slot : 0,
          store ? store->rows_per_slot : 1, total_heads);
    };
    if (vector) {
      launch(rope_kernel<T, 8>, 8);
    } else {
      launch(rope_kernel<T, 1>, 1);
    }
  });
  check_launch("RoPE");
}

int64_t decode_attention_work_floats(int rows, int heads, int d, int max_keys) {
  const int64_t chunks = (max_keys + kChunk - 1) / kChunk;
  return static_cast<int64_t>(rows) * heads * chunks * (d + 2);
}

bool decode_attention_supports(int d, int64_t max_keys) {
  constexpr int64_t kMaxChunks = 8192;  // the combine's float per chunk: 32 KiB of shared memory
  const bool head_size = d == 16 || d == 32 || d == 64 || d == 128 || d == 256;
  return head_size && max_keys >= 1 && (max_keys + kChunk - 1) / kChunk <= kMaxChunks;
}

bool decode_attention(const void* qkv, int q_stride, const KvLayer& cache, const int64_t* positions, int rows,
                      int heads, int kv_heads, int d, int max_keys, float scale, float* work, int* counters, void* out,
                      bool bf16, void* stream) {
  if (!decode_attention_supports(d, max_keys)) return false;
  const int chunks = (max_keys + kChunk - 1) / kChunk;
  bool taken = true;
  with_type(bf16, [&](auto tag) {
    using T = decltype(tag);
    const auto* q = static_cast<const T*>(qkv);
    auto* o = static_cast<T*>(out);
    auto st = static_cast<cudaStream_t>(stream);
    switch (d) {
      case 16: launch_attention<T, 16>(q, q_stride, cache, positions, rows, heads, kv_heads, chunks, scale, work, counters, o, st); break;
      case 32: launch_attention<T, 32>(q, q_stride, cache, positions, rows, heads, kv_heads, chunks, scale, work, counters, o, st); break;
      case 64: launch_attention<T, 64>(q, q_stride, cache, positions, rows, heads, kv_heads, chunks, scale, work, counters, o, st); break;
      case 128: launch_attention<T, 128>(q, q_stride, cache, positions, rows, heads, kv_heads, chunks, scale, work, counters, o, st); break;
      case 256: launch_attention<T, 256>(q, q_stride, cache, positions, rows, heads, kv_heads, chunks, scale, work, counters, o, st); break;
      default: taken = false;
    }
  });
  return taken;
}

void silu_mul(const void* gate_up, void* out, int rows, int n, bool bf16, void* stream) {
  const bool vector = n % 8 == 0 && aligned16(gate_up) && aligned16(out);
  const dim3 grid((n / (vector ? 8 : 1) + 255) / 256, rows);
  with_type(bf16, [&](auto tag) {
    using T = decltype(tag);
    auto* kernel = vector ? silu_mul_kernel<T, true> : silu_mul_kernel<T, false>;
    launch_early(kernel, grid, 256, 0, static_cast<cudaStream_t>(stream), static_cast<const T*>(gate_up),
                 static_cast<T*>(out), n);
  });
  check_launch("SiLU gate");
}

}  // namespace cuda
}  // namespace llava
