// prefill_attention.cu's kernel at 1, 2 and 3 blocks a multiprocessor (its launch bounds:
// registers a thread), for prefill_attention_check.py (ctypes): whether it matches PyTorch's
// flash kernel bit for bit, and how fast. Standalone (nvcc, no LibTorch):
//   nvcc -O3 -std=c++17 -arch=sm_90 -shared -Xcompiler -fPIC -I.
//   tests/perf/prefill_attention_check.cu \
//       -o /tmp/prefill_attention_check.so
#include "stages/language/prefill_attention.cu"

namespace {
template <int kMinBlocks>
bool run(bool bf16, const void* q, int q_stride, const llava::cuda::KvLayer& cache, int n,
         int prompts, int heads, int kv_heads, float scale, void* out, void* stream) {
  bool ran = false;
  llava::cuda::with_type(bf16, [&](auto tag) {
    ran = llava::cuda::launch_prefill_attention<decltype(tag), kMinBlocks>(
        q, q_stride, cache, n, prompts, heads, kv_heads, scale, out,
        static_cast<cudaStream_t>(stream));
  });
  return ran;
}
}  // namespace

// 1 where it ran, 0 where it does not take the call, -1 for an unknown variant (blocks).
extern "C" int prefill_attention_variant(int variant, int bf16, const void* q, int q_stride,
                                         void* k, void* v, long long max_tokens,
                                         long long first_slot, int n, int prompts, int heads,
                                         int kv_heads, float scale, void* out, void* stream) {
  const llava::cuda::KvLayer cache{k, v, max_tokens, nullptr, first_slot, n};
  switch (variant) {
    case 1:
      return run<1>(bf16 != 0, q, q_stride, cache, n, prompts, heads, kv_heads, scale, out, stream)
                 ? 1
                 : 0;
    case 2:
      return run<2>(bf16 != 0, q, q_stride, cache, n, prompts, heads, kv_heads, scale, out, stream)
                 ? 1
                 : 0;
    case 3:
      return run<3>(bf16 != 0, q, q_stride, cache, n, prompts, heads, kv_heads, scale, out, stream)
                 ? 1
                 : 0;
    default:
      return -1;
  }
}
