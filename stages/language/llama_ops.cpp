// Each of the decoder's small steps: our CUDA kernel first, where built and taking the
// tensors, then LibTorch's composition of the same math (what transformers computes).
#include "stages/language/llama_ops.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "stages/attention.h"
#include "stages/kernel_launch.h"
#ifdef LLAVA_PIPE_CUDA_KERNELS
#include "stages/language/fused_kernels.h"
#endif

namespace llava::ops {

bool kernels_take(const at::TensorOptions& options) {
  return kernels::take(options.device(), options.dtype().toScalarType());
}

std::pair<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& delta,
                                               const at::Tensor& weight, double eps, bool fused) {
#ifdef LLAVA_PIPE_CUDA_KERNELS
  if (fused) {
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor in = x.contiguous(), add = delta.defined() ? delta.contiguous() : at::Tensor();
    at::Tensor sum = add.defined() ? at::empty_like(in) : in, y = at::empty_like(in);
    const int h = static_cast<int>(in.size(-1));
    cuda::rms_norm(in.data_ptr(), add.defined() ? add.data_ptr() : nullptr,
                   add.defined() ? sum.data_ptr() : nullptr, weight.data_ptr(), y.data_ptr(),
                   static_cast<int>(in.numel() / h), h, static_cast<float>(eps), kernels::bf16(in),
                   kernels::stream());
    return {sum, y};
  }
#endif
  at::Tensor sum = delta.defined() ? x + delta : x;
  at::Tensor x32 = sum.to(at::kFloat);
  at::Tensor variance = x32.pow(2).mean(-1, /*keepdim=*/true);
  return {sum, weight * (x32 * at::rsqrt(variance + eps)).to(x.scalar_type())};
}

at::Tensor silu_mul(const at::Tensor& gate_up, bool fused) {
#ifdef LLAVA_PIPE_CUDA_KERNELS
  if (fused && gate_up.is_contiguous()) {
    const c10::cuda::CUDAGuard guard(gate_up.device());
    std::vector<int64_t> shape = gate_up.sizes().vec();
    shape.back() /= 2;
    at::Tensor out = at::empty(shape, gate_up.options());
    const int n = static_cast<int>(shape.back());
    cuda::silu_mul(gate_up.data_ptr(), out.data_ptr(), static_cast<int>(out.numel() / n), n,
                   kernels::bf16(gate_up), kernels::stream());
    return out;
  }
#endif
  auto parts = gate_up.chunk(2, -1);
  return at::silu(parts[0]) * parts[1];
}

std::array<at::Tensor, 3> rotated_heads(const at::Tensor& projected, const at::Tensor& positions,
                                        const Heads& shape, const CacheRows* store, bool fused) {
  const int64_t b = projected.size(0), n = projected.size(1);
  const int64_t heads = shape.heads, kv_heads = shape.kv_heads, d = shape.d;
  const bool in_place = fused && projected.is_contiguous();
#ifdef LLAVA_PIPE_CUDA_KERNELS
  if (in_place) {  // q and k rotated in place
    const c10::cuda::CUDAGuard guard(projected.device());
    const at::Tensor at_positions = positions.contiguous();
    cuda::KvLayer cache_layer{};
    if (store != nullptr) {
      auto [k_layer, v_layer] = store->cache->layer(store->layer);
      cache_layer = {k_layer.data_ptr(),
                     v_layer.data_ptr(),
                     store->cache->max_tokens(),
                     store->slot_table.defined() ? store->slot_table.data_ptr<int64_t>() : nullptr,
                     store->slots->front(),
                     static_cast<int>(n)};
    }
    cuda::rope(projected.data_ptr(), shape.cos.data_ptr(), shape.sin.data_ptr(),
               at_positions.data_ptr<int64_t>(), static_cast<int>(b * n),
               static_cast<int>(projected.size(-1)), static_cast<int>(heads),
               static_cast<int>(kv_heads), static_cast<int>(d),
               store != nullptr ? &cache_layer : nullptr, kernels::bf16(projected),
               kernels::stream());
  }
#endif
  auto qkv = projected.split_with_sizes({heads * d, kv_heads * d, kv_heads * d}, -1);
  at::Tensor q = qkv[0].view({b, n, heads, d}).transpose(1, 2);     // [B, heads, T, D]
  at::Tensor k = qkv[1].view({b, n, kv_heads, d}).transpose(1, 2);  // [B, kv_heads, T, D]
  at::Tensor v = qkv[2].view({b, n, kv_heads, d}).transpose(1, 2);
  if (!in_place) {
    // RoPE rows of these positions [B, 1, T, D]: x * cos + rotate_half(x) * sin.
    at::Tensor cos = shape.cos.index_select(0, positions.flatten()).view({b, 1, n, d});
    at::Tensor sin = shape.sin.index_select(0, positions.flatten()).view({b, 1, n, d});
    auto rope = [&](const at::Tensor& x) {
      at::Tensor rotated = at::cat({-x.narrow(-1, d / 2, d / 2), x.narrow(-1, 0, d / 2)}, -1);
      return x * cos + rotated * sin;
    };
    q = rope(q);
    k = rope(k);
    if (store != nullptr) store->cache->write(store->layer, *store->slots, k, v);
  }
  return {q, k, v};
}

namespace {
// LLAVA_PIPE_PREFILL_ATTENTION: true for "ours" or unset, false for "sdpa".
bool prefill_attention_ours() {
  const char* value = std::getenv("LLAVA_PIPE_PREFILL_ATTENTION");
  if (value == nullptr || std::strcmp(value, "ours") == 0) return true;
  if (std::strcmp(value, "sdpa") == 0) return false;
  throw std::invalid_argument("LLAVA_PIPE_PREFILL_ATTENTION is '" + std::string(value) +
                              "'; it may be 'ours' (the default) or 'sdpa'");
}
}  // namespace

at::Tensor prefill_attention(const at::Tensor& q, const CacheRows& rows, const Heads& shape) {
  if (!prefill_attention_ours()) return {};
#ifdef LLAVA_PIPE_CUDA_KERNELS
  const int64_t b = q.size(0), n = q.size(2), d = shape.d;
  // q as a view of the rows [B * n, stride] that RoPE rotated in place.
  const bool rows_view =
      q.size(3) == d && q.stride(3) == 1 && q.stride(1) == d && q.stride(0) == n * q.stride(2);
  if (!kernels_take(q.options()) || !rows_view || n > kMaxPrefillAttentionKeys ||
      !cuda::prefill_attention_takes(static_cast<int>(d), static_cast<int>(shape.heads),
                                     static_cast<int>(shape.kv_heads))) {
    return {};
  }
  const c10::cuda::CUDAGuard guard(q.device());
  if (flash_attention_splits(n, b, shape.heads,
                             at::cuda::getCurrentDeviceProperties()->multiProcessorCount) != 1) {
    return {};
  }
  auto [k_layer, v_layer] = rows.cache->layer(rows.layer);
  const cuda::KvLayer cache_layer{
      k_layer.data_ptr(),
      v_layer.data_ptr(),
      rows.cache->max_tokens(),
      rows.slot_table.defined() ? rows.slot_table.data_ptr<int64_t>() : nullptr,
      rows.slots->front(),
      static_cast<int>(n)};
  at::Tensor out = at::empty({b, n, shape.heads * d}, q.options());
  // The scale as SDPA takes it (a double, then float).
  const auto scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  if (cuda::prefill_attention(
          q.data_ptr(), static_cast<int>(q.stride(2)), cache_layer, static_cast<int>(n),
          static_cast<int>(b), static_cast<int>(shape.heads), static_cast<int>(shape.kv_heads),
          static_cast<int>(d), scale, out.data_ptr(), kernels::bf16(q), kernels::stream())) {
    return out;
  }
#else
  (void)q, (void)rows, (void)shape;
#endif
  return {};
}

bool decode_attention_takes(int64_t head_dim, int64_t keys, bool fused) {
#ifdef LLAVA_PIPE_CUDA_KERNELS
  return fused && cuda::decode_attention_supports(static_cast<int>(head_dim), keys);
#else
  (void)head_dim, (void)keys, (void)fused;
  return false;
#endif
}

at::Tensor decode_attention(int layer, const at::Tensor& projected, const at::Tensor& positions,
                            const at::Tensor& counters, KvCache& cache, int64_t keys,
                            const Heads& shape) {
#ifdef LLAVA_PIPE_CUDA_KERNELS
  const int64_t rows = projected.size(0);
  const int heads = static_cast<int>(shape.heads), kv_heads = static_cast<int>(shape.kv_heads),
            d = static_cast<int>(shape.d), stride = static_cast<int>(projected.size(-1));
  const c10::cuda::CUDAGuard guard(projected.device());
  auto [k, v] = cache.layer(layer);
  const cuda::KvLayer store{k.data_ptr(), v.data_ptr(), cache.max_tokens()};
  const int64_t* at_positions = positions.data_ptr<int64_t>();
  cuda::rope(projected.data_ptr(), shape.cos.data_ptr(), shape.sin.data_ptr(), at_positions,
             static_cast<int>(rows), stride, heads, kv_heads, d, &store, kernels::bf16(projected),
             kernels::stream());
  at::Tensor work = at::empty({cuda::decode_attention_work_floats(static_cast<int>(rows), heads, d,
                                                                  static_cast<int>(keys))},
                              projected.options().dtype(at::kFloat));
  at::Tensor out = at::empty({rows, 1, static_cast<int64_t>(heads) * d}, projected.options());
  if (cuda::decode_attention(projected.data_ptr(), stride, store, at_positions,
                             static_cast<int>(rows), heads, kv_heads, d, static_cast<int>(keys),
                             1.0f / std::sqrt(static_cast<float>(d)), work.data_ptr<float>(),
                             counters.data_ptr<int>(), out.data_ptr(), kernels::bf16(projected),
                             kernels::stream())) {
    return out;
  }
#else
  (void)layer, (void)projected, (void)positions, (void)counters, (void)cache, (void)shape;
#endif
  // The caller asked decode_attention_takes first.
  throw std::logic_error("decode attention does not take head size " + std::to_string(shape.d) +
                         " with " + std::to_string(keys) + " keys");
}

}  // namespace llava::ops
