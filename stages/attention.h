// Scaled dot-product attention for both models: LibTorch's fused kernel where it exists
// (2.x), the textbook float32-softmax formula elsewhere (LibTorch 1.13).
#pragma once

#include <ATen/ATen.h>

namespace llava {

// q: [B, heads, Tq, D]; k, v: [B, heads, Tk, D]; mask: additive float mask broadcastable
// to [B, heads, Tq, Tk] (0 = attend, -inf = not), or undefined. `causal` (with no mask,
// Tq == Tk): query i sees keys 0..i, through the flash kernel where there is one.
// `fixed_shapes`: the caller's shapes repeat (the vision tower's), so cuDNN's attention,
// which builds a plan per shape, may run. Returns [B, heads, Tq, D].
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& mask, double scale, bool causal = false, bool fixed_shapes = false);

// A fresh prompt's causal attention at a few lengths, for cuDNN (tests/perf/README.md,
// "Speed, round 7"). cuDNN's attention is about twice as fast as the flash kernel on a
// prompt (H200, 7B, 641 tokens: 23.8 µs a layer against 41.1) but builds a plan for every
// new length (50 ms; the process's first, about 1 s). Padded at the end to a multiple of
// kCausalBucket, a prompt's length takes one of max_tokens / kCausalBucket plans, each built
// once, at the first prompt of its length. Padding the end changes no real row: query i < n
// sees keys 0..i only. Off unless LLAVA_PIPE_PREFILL_CUDNN=1: transformers runs the flash
// kernel, and with cuDNN's sums the 7B check's first greedy token agreed 9 times in 10 (a
// float32 top-2 margin of 0.0022 went the other way), for 3.3% more prefill tokens/s.
// Since round 13 our prefill kernel (fused_kernels.h, prefill_attention) takes most prompts
// before this is asked: the flash kernel's bits, about as fast as cuDNN's.
constexpr int64_t kCausalBucket = 128;

// n rounded up to a multiple of kCausalBucket where that is at most `limit` (the rows the
// keys may be read from), else n.
int64_t causal_bucket(int64_t n, int64_t limit);

// The length a fresh prompt of n tokens is attended at: causal_bucket(n, limit) where
// LLAVA_PIPE_PREFILL_CUDNN=1 and cuDNN's attention may take it (LibTorch 2.5 or newer, a
// CUDA device, float16 / bfloat16, head size up to 128, at least kCausalBucket tokens),
// else n.
int64_t causal_attention_length(int64_t n, int64_t limit, const at::TensorOptions& options,
                                int64_t head_size);

// Causal attention of q [B, heads, n, D] over k, v [B, heads, L, D] with L >= n: query i
// sees keys 0..i, so the keys past n (any finite values, such as a cache's older rows) are
// never read into a result. Where L > n, q is padded with zeros to L for cuDNN's kernel
// (where cuDNN does not take the call, unpadded as attention() runs it). Returns
// [B, heads, n, D].
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            double scale);

// How many parts PyTorch's flash kernel splits the keys of a causal attention into, for
// `prompts` prompts of n tokens and `heads` heads on a GPU of `multiprocessors`: its own
// heuristic (flash_api.cpp, set_params_splitkv: head size 128, no dropout). Above 1 it runs
// its split-KV kernels and a combine, whose sums differ from its one-pass kernel's; our
// prefill kernel (fused_kernels.h) gives the one-pass kernel's bits, so it runs only where
// this is 1. The rule: one part where the query blocks of 64 rows fill 80% of twice the
// multiprocessors; else the fewest parts (of the key blocks of 128, at most 128) whose
// last wave is at least 85% as full as the best.
int flash_attention_splits(int64_t n, int64_t prompts, int64_t heads, int multiprocessors);

}  // namespace llava
