// Fused CUDA kernels for the decoder's small steps, which at batch 1 cost more in
// launches than in bytes: residual add + RMSNorm (8 LibTorch kernels), RoPE on q and k
// with the decode step's KV-cache write (14), SiLU(gate) * up (2), and attention of one
// new token per row over the cache (flash-decoding: the keys split in chunks over the
// whole GPU, then one combine; no mask, each row reads only its own keys). The
// element-wise kernels round where LibTorch's float16/bfloat16 composition rounds, so
// results match it up to the order of float32 sums. Plain pointers; built where CMake
// finds nvcc.
#pragma once

#include <cstdint>

namespace llava {
namespace cuda {

// y[r] = w * to_T(s32[r] * rsqrt(mean(s32[r]^2) + eps)), rows of h, where s = x, or with
// `delta`, s = to_T(x + delta), also stored to `sum` (the residual stream's next value).
void rms_norm(const void* x, const void* delta, void* sum, const void* w, void* y, int rows, int h,
              float eps, bool bf16, void* stream);

// Where rows' keys and values go: one cache layer [slots, kv_heads, max_tokens, d]; row r
// is slot slots[r / rows_per_slot] (without `slots`, first_slot + r / rows_per_slot), at its
// position. The decode step: row r is slot r; a prompt of n tokens: rows_per_slot n.
struct KvLayer {
  void* k;
  void* v;
  int64_t max_tokens;
  const int64_t* slots = nullptr;  // on the device
  int64_t first_slot = 0;
  int rows_per_slot = 1;
};
// In place on the q and k heads of each row of qkv ([rows, row_stride]: heads q, then
// kv_heads k, then kv_heads v): x * cos + rotate_half(x) * sin, with the rows of the
// tables [P, d] at positions[row] (int64, on the device). With `store`, each row's rotated
// k goes into the cache at that position instead (qkv's k heads stay unrotated: attention
// reads the cache), and so does its v.
void rope(void* qkv, const void* cos_table, const void* sin_table, const int64_t* positions, int rows,
          int row_stride, int heads, int kv_heads, int d, const KvLayer* store, bool bf16, void* stream);

// out [rows, heads, d] = softmax(scale * q k^T) v, row r over keys [0, positions[r]] of
// cache slot r (grouped-query: head h reads kv head h / (heads / kv_heads)). q is the
// q part of qkv rows ([rows, q_stride]). `max_keys` bounds every row's keys (the grid);
// `work` holds decode_attention_work_floats(...) floats; `counters` [rows * heads] are
// zero before the call and zero again after it. False (nothing launched) where
// decode_attention_supports(d, max_keys) is false.
// For one row the kernel reads `positions` and the cache rows below them while the kernel
// before it still runs (launch_early): they must come from work that ended before the
// step's first plainly launched kernel or copy (LlamaDecoder::decode begins with one: it
// zeroes the counters). q and the row at positions[r] may come from the kernel just
// before (RoPE).
int64_t decode_attention_work_floats(int rows, int heads, int d, int max_keys);
// Whether the kernel takes this head size (16, 32, 64, 128 or 256) and this many keys (up to
// 524,288: the combine keeps a float per chunk of keys in shared memory).
bool decode_attention_supports(int d, int64_t max_keys);
bool decode_attention(const void* qkv, int q_stride, const KvLayer& cache, const int64_t* positions, int rows,
                      int heads, int kv_heads, int d, int max_keys, float scale, float* work, int* counters,
                      void* out, bool bf16, void* stream);
// Fresh prompts' causal attention (prefill_attention.cu): out [prompts, n, heads * d] where
// query row i of prompt p sees keys 0..i of cache slot slots[p] (first_slot + p without
// `slots`; grouped-query as above), q the q part of qkv rows [prompts * n, q_stride] (RoPE
// done), keys and values already in the cache. Bit for bit what PyTorch's flash kernel
// computes in one pass (flash_attention_splits(...) == 1, attention.h), in less time up to
// ~2,048 tokens (tests/perf/README.md). prefill_attention_takes: head size 128, whole
// groups of heads, and a device this build has compute capability 8.0's code for.
// prefill_attention returns false (nothing launched) where it does not take the call or
// q, q_stride, the cache or out are not 16-byte aligned.
bool prefill_attention_takes(int d, int heads, int kv_heads);
bool prefill_attention(const void* q, int q_stride, const KvLayer& cache, int n, int prompts,
                       int heads, int kv_heads, int d, float scale, void* out, bool bf16,
                       void* stream);
// out [rows, n] = silu(gate_up[:, :n]) * gate_up[:, n:].
void silu_mul(const void* gate_up, void* out, int rows, int n, bool bf16, void* stream);

}  // namespace cuda
}  // namespace llava
