// One attention for CLIP and LLaMA, so that the fused path and its fallback live once.
#include "stages/attention.h"

#include <ATen/Context.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

namespace llava {

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& mask, double scale, bool causal, bool fixed_shapes) {
#if TORCH_VERSION_MAJOR >= 2
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 4
  // cuDNN's attention builds an execution plan for every new shape, and decoding changes
  // the key length at every step: measured on an H100 (7B, batch 1), 79 ms a step with
  // it against 17 ms for the same forward at a fixed length. Flash / memory-efficient
  // kernels need no plan.
  // Shapes that repeat: cuDNN is allowed for this call (ncu on an H100, CLIP-L/336 at
  // batch 32: 0.189 ms a layer against 0.257 for the flash kernel).
  at::globalContext().setSDPUseCuDNN(fixed_shapes);
  struct CudnnOff {
    ~CudnnOff() { at::globalContext().setSDPUseCuDNN(false); }
  } restore;
#else
  (void)fixed_shapes;
#endif
  // Fused (flash / memory-efficient) kernels on CUDA; the math kernel on CPU. The mask
  // must be in the query's dtype.
  c10::optional<at::Tensor> m;
  if (mask.defined()) m = mask.to(q.scalar_type());
  return at::scaled_dot_product_attention(q, k, v, m, /*dropout_p=*/0.0, causal, scale);
#else
  (void)fixed_shapes;
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2)).to(at::kFloat) * scale;
  if (mask.defined()) scores = scores + mask.to(at::kFloat);
  if (causal) {
    const int64_t n = q.size(-2);
    scores = scores.masked_fill(at::ones({n, n}, q.options().dtype(at::kBool)).triu(1), -INFINITY);
  }
  return at::matmul(at::softmax(scores, -1).to(q.scalar_type()), v);
#endif
}

int64_t causal_bucket(int64_t n, int64_t limit) {
  const int64_t bucket = (n + kCausalBucket - 1) / kCausalBucket * kCausalBucket;
  return bucket <= limit ? bucket : n;
}

// LibTorch 2.5 and newer: at::_fused_sdp_choice says which kernel SDPA would take.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
#define LLAVA_PIPE_CUDNN_PREFILL 1
#endif

int64_t causal_attention_length(int64_t n, int64_t limit, const at::TensorOptions& options,
                                int64_t head_size) {
#ifdef LLAVA_PIPE_CUDNN_PREFILL
  static const bool allowed = [] {
    const char* setting = std::getenv("LLAVA_PIPE_PREFILL_CUDNN");
    return setting != nullptr && std::strcmp(setting, "1") == 0;
  }();
  const bool half = options.dtype() == at::kHalf || options.dtype() == at::kBFloat16;
  if (allowed && options.device().is_cuda() && half && head_size <= 128 && n >= kCausalBucket) {
    return causal_bucket(n, limit);
  }
#else
  (void)limit, (void)options, (void)head_size;
#endif
  return n;
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            double scale) {
  const int64_t n = q.size(2), length = k.size(2);
  if (length == n) return attention(q, k, v, at::Tensor(), scale, /*causal=*/true);
  const at::Tensor padded = at::constant_pad_nd(q, {0, 0, 0, length - n});
#ifdef LLAVA_PIPE_CUDNN_PREFILL
  // cuDNN's kernel only: with the flash and memory-efficient kernels off for this call, SDPA
  // takes cuDNN where it can (at::SDPBackend::cudnn_attention, 3) and else the math one, so
  // the choice is asked first; a padded call cuDNN does not take runs unpadded instead.
  {
    auto& context = at::globalContext();
    struct Restore {  // the caller's switches again, however this block ends
      at::Context& context;
      bool flash, efficient;
      ~Restore() {
        context.setSDPUseFlash(flash);
        context.setSDPUseMemEfficient(efficient);
        context.setSDPUseCuDNN(false);
      }
    } restore{context, context.userEnabledFlashSDP(), context.userEnabledMemEfficientSDP()};
    context.setSDPUseFlash(false);
    context.setSDPUseMemEfficient(false);
    context.setSDPUseCuDNN(true);
    constexpr int64_t kCudnnBackend = 3;
    if (at::_fused_sdp_choice(padded, k, v, std::nullopt, 0.0, /*is_causal=*/true, scale) ==
        kCudnnBackend) {
      try {
        return at::scaled_dot_product_attention(padded, k, v, std::nullopt, 0.0,
                                                /*is_causal=*/true, scale)
            .narrow(2, 0, n);
      } catch (const c10::Error&) {
        // A plan cuDNN failed to build: the unpadded call below.
      }
    }
  }
  return attention(q, k.narrow(2, 0, n), v.narrow(2, 0, n), at::Tensor(), scale, /*causal=*/true);
#else
  return attention(padded, k, v, at::Tensor(), scale, /*causal=*/true).narrow(2, 0, n);
#endif
}

int flash_attention_splits(int64_t n, int64_t prompts, int64_t heads, int multiprocessors) {
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  const int64_t query_blocks = prompts * heads * ceil_div(n, 64),
                slots = 2 * int64_t{multiprocessors};
  if (static_cast<float>(query_blocks) >= 0.8f * static_cast<float>(slots)) return 1;
  const int64_t key_blocks = ceil_div(n, 128);
  const int64_t most = std::min<int64_t>({128, slots, key_blocks});
  // A count of parts is a real choice only if its parts are shorter than one part fewer's.
  auto distinct = [&](int64_t parts) {
    return parts == 1 || ceil_div(key_blocks, parts) != ceil_div(key_blocks, parts - 1);
  };
  std::vector<float> fullness(static_cast<size_t>(std::max<int64_t>(most, 0)), 0.0f);
  float best = 0.0f;
  for (int64_t parts = 1; parts <= most; ++parts) {
    if (!distinct(parts)) continue;
    const float waves = static_cast<float>(query_blocks * parts) / static_cast<float>(slots);
    fullness[parts - 1] = waves / std::ceil(waves);
    best = std::max(best, fullness[parts - 1]);
  }
  for (int64_t parts = 1; parts <= most; ++parts) {
    if (distinct(parts) && fullness[parts - 1] >= 0.85 * best) return static_cast<int>(parts);
  }
  return 1;
}

}  // namespace llava
