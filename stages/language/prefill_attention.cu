// A fresh prompt's causal attention (fused_kernels.h, prefill_attention): the sums of
// PyTorch's flash kernel, in smaller blocks and heaviest first.
//
// Why. At a 641-token prompt (LLaVA-1.5-7B, 32 heads of 128) PyTorch's flash kernel runs
// 6 blocks of 128 query rows a head: 192 blocks on 132 multiprocessors, the last row block
// 11 steps of 64 keys, the first 2, so the kernel lasts as long as its longest blocks
// (41 µs a layer on an H200 for ~3.4 GFLOP: 82 TFLOP/s). Here a block is 64 rows (4 warps
// of 16), 352 blocks a prompt, the longest started first.
//
// Same numbers. transformers runs that flash kernel, so parity asks for its sums, not only
// softmax's value. Row by row they do not depend on the block's rows: each query row sees
// key blocks of 64 from its own down to 0, and its scores, maximum, sum and output are
// updated per key block in that order. The flash kernel's 128-row blocks also start some
// rows at a key block wholly past them; such a step leaves the row's maximum at -inf, its
// sum and output at 0, and the next step scales them by exp2(-inf) = 0, which gives what
// starting at the row's own block gives. Per key block, as the flash kernel computes it:
//   s = q k^T: mma.m16n8k16 (float32 sums) over the head's 128 dimensions in steps of 16;
//   masked s = -inf (key past the query, or past the prompt);
//   m = max(m_prev, s); scale = exp2((m_prev - m) * c) with c = softmax_scale * log2(e);
//   p = exp2(s * c - m * c) (the product rounded, then the difference: PyTorch builds the
//   flash kernel with UNFUSE_FMA); sum = sum * scale + p (one fused multiply-add, as its
//   compiled code has it), then + p in the thread's column order;
//   o = o * scale + to_T(p) v (mma.m16n8k16, keys in steps of 16);
// and at the end sum is added over the row's 4 threads (lanes ^ 2, then ^ 1) and
// o * (1 / sum) is rounded to T.
#include <cmath>
#include <cstdint>

#include "stages/half_types.cuh"
#include "stages/language/fused_kernels.h"

namespace llava {
namespace cuda {
namespace {

constexpr int kHead = 128;  // the head size this kernel takes
constexpr int kRows = 64;   // query rows a block: 4 warps of 16
constexpr int kKeys = 64;   // keys a step (the flash kernel's)
constexpr int kThreads = 128;
constexpr int kTileBytes = kKeys * kHead * 2;             // one K or V tile, 16 KiB
constexpr int kSharedBytes = 4 * kTileBytes;              // K and V, two stages
[[maybe_unused]] constexpr int kChunks = kHead * 2 / 16;  // 16-byte chunks a row

// The kernel's steps, for compute capability 8.0 and newer (cp.async, mma.m16n8k16).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
__device__ inline uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Byte offset of 16-byte chunk c of row r in a tile [64][128]: the chunk index XOR r % 8,
// so that ldmatrix's 8 rows of one chunk fall in 8 different bank groups.
__device__ inline uint32_t tile_offset(int r, int c) {
  return static_cast<uint32_t>(r * kChunks * 16 + ((c ^ (r & 7)) << 4));
}

// 16 bytes from global to shared memory, asynchronously; zeros where !valid.
__device__ inline void copy16(uint32_t to, const void* from, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(to), "l"(from),
               "r"(valid ? 16 : 0));
}
__device__ inline void copies_end() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int kLeft>
__device__ inline void wait_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kLeft));
}

__device__ inline void load_matrices(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
__device__ inline void load_matrices_transposed(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// c += a b for one m16n8k16 tile, float32 sums.
template <typename T>
__device__ inline void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats rounded to T (to nearest) in one 32-bit word, lo first.
template <typename T>
__device__ inline uint32_t pack2(float lo, float hi) {
  uint32_t word;
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    word = *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    word = *reinterpret_cast<const uint32_t*>(&h);
  }
  return word;
}

__device__ inline uint32_t load32(const void* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// exp2(s * c - m * c): the product s * c rounded, then the difference (m * c rounded too).
__device__ inline float exponent(float s, float max, float c) {
  const float scaled = __fmul_rn(s, c);
  return exp2f(max == -INFINITY ? scaled : __fsub_rn(scaled, __fmul_rn(max, c)));
}

#endif

// Grid: one block per (64 query rows, head, prompt), the rows nearest the prompt's end
// (most keys) first. Each warp holds its 16 rows' q as mma fragments; the K and V tiles of
// the next key block load (cp.async) while the current one is used.
template <typename T, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    prefill_attention_kernel(const T* __restrict__ q, int q_stride, KvLayer cache, int n, int heads,
                             int kv_heads, int prompts, float c, T* __restrict__ out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char tiles[];
  const int groups = heads * prompts, row_blocks = (n + kRows - 1) / kRows;
  const int row_block = row_blocks - 1 - static_cast<int>(blockIdx.x) / groups;
  const int head = static_cast<int>(blockIdx.x) % groups % heads,
            prompt = static_cast<int>(blockIdx.x) % groups / heads;
  const int kv_head = head / (heads / kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t slot = cache.slots != nullptr ? cache.slots[prompt] : cache.first_slot + prompt;
  const int64_t kv_offset = (slot * kv_heads + kv_head) * cache.max_tokens * kHead;
  const T* keys = static_cast<const T*>(cache.k) + kv_offset;
  const T* values = static_cast<const T*>(cache.v) + kv_offset;
  const uint32_t base = shared_address(tiles);

  wait_for_inputs();
  // Key block `block` into stage `stage`: 8 chunks of K and 8 of V a thread.
  auto load = [&](int block, int stage) {
    const uint32_t k_tile = base + stage * 2 * kTileBytes, v_tile = k_tile + kTileBytes;
    for (int i = threadIdx.x; i < kKeys * kChunks; i += kThreads) {
      const int r = i / kChunks, chunk = i % kChunks, key = block * kKeys + r;
      const bool valid = key < n;
      const int64_t at = static_cast<int64_t>(valid ? key : 0) * kHead + chunk * 8;
      copy16(k_tile + tile_offset(r, chunk), keys + at, valid);
      copy16(v_tile + tile_offset(r, chunk), values + at, valid);
    }
    copies_end();
  };
  const int blocks = row_block + 1;  // key blocks 0 .. row_block: the rows' own and those below
  load(blocks - 1, 0);

  // q fragments of rows g and g + 8 of this warp's 16 (zero past the prompt).
  const int first_row = row_block * kRows + warp * 16;
  uint32_t qa[8][4];
  {
    const int ra = first_row + g, rb = ra + 8;
    const T* qa_row = q + (static_cast<int64_t>(prompt) * n + ra) * q_stride + head * kHead + 2 * t;
    const T* qb_row = qa_row + 8 * static_cast<int64_t>(q_stride);
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      qa[kk][0] = ra < n ? load32(qa_row + 16 * kk) : 0u;
      qa[kk][1] = rb < n ? load32(qb_row + 16 * kk) : 0u;
      qa[kk][2] = ra < n ? load32(qa_row + 16 * kk + 8) : 0u;
      qa[kk][3] = rb < n ? load32(qb_row + 16 * kk + 8) : 0u;
    }
  }

  float o[16][4];
#pragma unroll
  for (int j = 0; j < 16; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

  for (int step = 0; step < blocks; ++step) {
    const int block = blocks - 1 - step, stage = step & 1;
    if (block > 0) {
      load(block - 1, stage ^ 1);
      wait_copies<1>();
    } else {
      wait_copies<0>();
    }
    __syncthreads();
    const uint32_t k_tile = base + stage * 2 * kTileBytes, v_tile = k_tile + kTileBytes;

    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < 8; kk += 2) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        uint32_t b[4];
        load_matrices(b, k_tile + tile_offset(8 * j + (lane & 7), 2 * kk + (lane >> 3)));
        mma<T>(s[j], qa[kk], b[0], b[1]);
        mma<T>(s[j], qa[kk + 1], b[2], b[3]);
      }
    }
    if (step == 0) {  // the diagonal block, which also holds the prompt's end
#pragma unroll
      for (int j = 0; j < 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = block * kKeys + 8 * j + 2 * t + (e & 1),
                    row = first_row + g + 8 * (e >> 1);
          if (key > row || key >= n) s[j][e] = -INFINITY;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {  // row g: s[.][0..1]; row g + 8: s[.][2..3]
      float max = row_max[i];
#pragma unroll
      for (int j = 0; j < 8; ++j) max = fmaxf(max, fmaxf(s[j][2 * i], s[j][2 * i + 1]));
      max = fmaxf(max, __shfl_xor_sync(0xffffffffu, max, 2));
      max = fmaxf(max, __shfl_xor_sync(0xffffffffu, max, 1));
      float sum = row_sum[i];
      if (step > 0) {
        const float now = max == -INFINITY ? 0.0f : max;
        const float scale = exp2f(__fmul_rn(__fsub_rn(row_max[i], now), c));
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          o[j][2 * i] = __fmul_rn(o[j][2 * i], scale);
          o[j][2 * i + 1] = __fmul_rn(o[j][2 * i + 1], scale);
        }
        const float p0 = exponent(s[0][2 * i], max, c);
        s[0][2 * i] = p0;
        sum = __fmaf_rn(sum, scale, p0);
      } else {
        sum = s[0][2 * i] = exponent(s[0][2 * i], max, c);
      }
      row_max[i] = max;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (j == 0 && e == 0) continue;
          const float p = exponent(s[j][2 * i + e], max, c);
          s[j][2 * i + e] = p;
          sum = __fadd_rn(sum, p);
        }
      }
      row_sum[i] = sum;
    }
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {  // keys 16 ks .. 16 ks + 15: p as the A fragment
      const uint32_t a[4] = {pack2<T>(s[2 * ks][0], s[2 * ks][1]),
                             pack2<T>(s[2 * ks][2], s[2 * ks][3]),
                             pack2<T>(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                             pack2<T>(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
      for (int j = 0; j < 16; j += 2) {
        uint32_t b[4];
        load_matrices_transposed(
            b, v_tile + tile_offset(16 * ks + (lane & 7) + ((lane >> 3) & 1) * 8, j + (lane >> 4)));
        mma<T>(o[j], a, b[0], b[1]);
        mma<T>(o[j + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // the next step's load overwrites the other stage
  }
  let_next_start();

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float sum = row_sum[i];
    sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 2));
    sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 1));
    const float inverse = (sum == 0.0f || sum != sum) ? 1.0f : __frcp_rn(sum);
    const int row = first_row + g + 8 * i;
    if (row >= n) continue;
    T* to = out + (static_cast<int64_t>(prompt) * n + row) * heads * kHead + head * kHead + 2 * t;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      *reinterpret_cast<uint32_t*>(to + 8 * j) =
          pack2<T>(__fmul_rn(o[j][2 * i], inverse), __fmul_rn(o[j][2 * i + 1], inverse));
    }
  }
#else
  (void)q, (void)q_stride, (void)cache, (void)n, (void)heads, (void)kv_heads, (void)prompts,
      (void)c, (void)out;
#endif
}

template <typename T, int kMinBlocks>
bool launch_prefill_attention(const void* q, int q_stride, const KvLayer& cache, int n, int prompts,
                              int heads, int kv_heads, float scale, void* out,
                              cudaStream_t stream) {
  auto* kernel = prefill_attention_kernel<T, kMinBlocks>;
  static int known[64] = {}, sized[64] = {};
  if (!runs_code_of(kernel, 80, known)) return false;
  int device = 0;
  cudaGetDevice(&device);    // runs_code_of checked it
  if (sized[device] == 0) {  // 64 KiB of shared memory a block, above the default 48
    const bool ok = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         kSharedBytes) == cudaSuccess;
    cudaGetLastError();
    sized[device] = ok ? 1 : 2;
  }
  if (sized[device] != 1) return false;
  // As the flash kernel's parameters hold it: float(softmax_scale * M_LOG2E in double).
  const float c = static_cast<float>(static_cast<double>(scale) * 1.4426950408889634);
  const int row_blocks = (n + kRows - 1) / kRows;
  launch_early(kernel, dim3(row_blocks * heads * prompts), kThreads, kSharedBytes, stream,
               static_cast<const T*>(q), q_stride, cache, n, heads, kv_heads, prompts, c,
               static_cast<T*>(out));
  check_launch("prefill attention");
  return true;
}

}  // namespace

bool prefill_attention_takes(int d, int heads, int kv_heads) {
  static int known[64] = {};
  return d == kHead && kv_heads > 0 && heads % kv_heads == 0 &&
         runs_code_of(prefill_attention_kernel<__half, 1>, 80, known);
}

bool prefill_attention(const void* q, int q_stride, const KvLayer& cache, int n, int prompts,
                       int heads, int kv_heads, int d, float scale, void* out, bool bf16,
                       void* stream) {
  if (n <= 0 || prompts <= 0 || !prefill_attention_takes(d, heads, kv_heads) || q_stride % 8 != 0 ||
      !aligned16(q) || !aligned16(cache.k) || !aligned16(cache.v) || !aligned16(out)) {
    return false;
  }
  bool ran = false;
  with_type(bf16, [&](auto tag) {
    ran =
        launch_prefill_attention<decltype(tag), 1>(q, q_stride, cache, n, prompts, heads, kv_heads,
                                                   scale, out, static_cast<cudaStream_t>(stream));
  });
  return ran;
}

}  // namespace cuda
}  // namespace llava
