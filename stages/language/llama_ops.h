// The decoder's small steps, each one operation whichever kernels run it: our CUDA kernels
// (fused_kernels.h) where they were built and take the tensors, else LibTorch's kernels
// composing the same math (the CPU, LibTorch 1.13, float32, or kernels turned off). The
// choice lives here so that llama_decoder.cpp reads as the model's math.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "stages/language/kv_cache.h"

namespace llava::ops {

// Whether our CUDA kernels were built and take tensors of these options (a CUDA device,
// float16 or bfloat16). The callers' `fused` arguments below are this and the caller's
// own switch (LlamaDecoder::use_fused_kernels).
bool kernels_take(const at::TensorOptions& options);

// (x + delta, RMSNorm(x + delta) * weight), the norm in float32 as transformers' LlamaRMSNorm;
// with delta undefined, (x, RMSNorm(x) * weight).
std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& delta,
                                               const at::Tensor& weight, double eps, bool fused);

// gate_up [..., 2I] -> silu(gate) * up [..., I].
at::Tensor silu_mul(const at::Tensor& gate_up, bool fused);

// The attention heads' sizes and the RoPE tables [max_positions, D] in the compute dtype.
struct Heads {
  int64_t heads, kv_heads, d;
  const at::Tensor& cos;
  const at::Tensor& sin;
};

// Where a prompt's rows' keys and values go: cache layer `layer`, batch row b to slot
// slots[b] (also on the device as `slot_table` where B > 1 and fused) from its length on.
struct CacheRows {
  KvCache* cache;
  int layer;
  const std::vector<int>* slots;
  at::Tensor slot_table;
};

// q [B, heads, T, D], k and v [B, kv_heads, T, D] of the rows of qkv [B, T, (heads +
// 2 kv_heads) D], q and k rotated to positions [B, T] (in place where fused). With `store`,
// the rotated k and the v go into the cache (by our kernel as it rotates them, which leaves
// the returned k unrotated; else by the cache's copies): the caller reads keys from the cache.
std::array<at::Tensor, 3> rotated_heads(const at::Tensor& projected, const at::Tensor& positions,
                                        const Heads& shape, const CacheRows* store, bool fused);

// A fresh prompt's causal attention by our kernel (fused_kernels.h, prefill_attention): q
// [B, heads, n, D] as rotated_heads() returns it from fused, contiguous rows (a view of
// them), the keys and values in the cache where `rows` put them. Returns [B, n, heads * D],
// bit for bit what LibTorch's flash kernel gives the same rows; undefined (nothing run)
// where the kernel does not take the call: not built or another device, a head size other
// than 128, q not a view of the projected rows, more than kMaxPrefillAttentionKeys tokens
// (there the flash kernel is faster), where the flash kernel would split the keys
// (flash_attention_splits, attention.h), or LLAVA_PIPE_PREFILL_ATTENTION=sdpa (LibTorch's
// kernel; unset or "ours": this one; anything else: std::invalid_argument naming it).
constexpr int64_t kMaxPrefillAttentionKeys = 2048;
at::Tensor prefill_attention(const at::Tensor& q, const CacheRows& rows, const Heads& shape);

// Whether decode_attention() runs for this head size and this many keys (never unfused).
bool decode_attention_takes(int64_t head_dim, int64_t keys, bool fused);
// The decode step's attention, our kernels only: RoPE of each row of projected [R, 1,
// (heads + 2 kv_heads) D] at positions [R] with its new key and value written into cache
// layer `layer` (row r is slot r), then attention of each row over its own keys in the
// cache, [0, positions[r]] of the first `keys`. `counters`: the attention kernel's, [R *
// heads] int32, zero before the step's first layer (each layer's launch leaves them zero).
// Returns [R, 1, heads * D].
at::Tensor decode_attention(int layer, const at::Tensor& projected, const at::Tensor& positions,
                            const at::Tensor& counters, KvCache& cache, int64_t keys,
                            const Heads& shape);

}  // namespace llava::ops
