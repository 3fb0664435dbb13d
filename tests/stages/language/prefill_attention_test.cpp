// Our prefill attention kernel (stages/language/prefill_attention.cu) on a CUDA device:
// bit for bit what LibTorch's flash kernel gives the same rows (what transformers runs)
// wherever that kernel runs in one pass, close to a float64 reference, and taken by the
// decoder's op only where it should be.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <torch/version.h>

// LibTorch 2.5 or newer: the flash kernel alone is asked for through the switches below.
#if defined(LLAVA_PIPE_CUDA_KERNELS) && \
    (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5))
#include <ATen/cuda/CUDAContext.h>

#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "stages/attention.h"
#include "stages/language/fused_kernels.h"
#include "stages/language/kv_cache.h"
#include "stages/language/llama_ops.h"

namespace {

constexpr int64_t kHead = 128;

// A prompt batch as the decoder holds it: qkv rows [prompts * n, (heads + 2 kv_heads) 128]
// (q rotated), keys and values in a cache of `slots` slots, prompt p in slot slots[p].
struct Prompts {
  int64_t n, heads, kv_heads;
  std::vector<int64_t> slots;
  at::Tensor qkv, k, v;  // k, v: [slots, kv_heads, max_tokens, 128]

  Prompts(int64_t n_, int64_t heads_, int64_t kv_heads_, std::vector<int64_t> slots_,
          at::ScalarType dtype, double spread)
      : n(n_), heads(heads_), kv_heads(kv_heads_), slots(std::move(slots_)) {
    const auto options = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
    const auto count = static_cast<int64_t>(slots.size());
    qkv = (at::randn({count * n, (heads + 2 * kv_heads) * kHead}, options) * spread).to(dtype);
    k = (at::randn({4, kv_heads, n + 5, kHead}, options) * spread).to(dtype);
    v = at::randn({4, kv_heads, n + 5, kHead}, options).to(dtype);
  }
  int64_t count() const { return static_cast<int64_t>(slots.size()); }
  at::Tensor q() const {  // [P, heads, n, 128], a view of the rows
    return qkv.narrow(1, 0, heads * kHead).view({count(), n, heads, kHead}).transpose(1, 2);
  }
  // Keys or values of every prompt [P, heads, n, 128] (kv heads repeated for their groups).
  at::Tensor gathered(const at::Tensor& cache) const {
    at::Tensor index = at::tensor(slots, at::kLong).to(at::kCUDA);
    at::Tensor rows = cache.index_select(0, index).narrow(2, 0, n);
    return heads == kv_heads ? rows : rows.repeat_interleave(heads / kv_heads, 1);
  }
};

// Ours, straight through the kernel's entry point.
at::Tensor ours(const Prompts& p) {
  at::Tensor table = at::tensor(p.slots, at::kLong).to(at::kCUDA);
  const llava::cuda::KvLayer layer{
      p.k.data_ptr(),       p.v.data_ptr(), p.k.size(2), table.data_ptr<int64_t>(), 0,
      static_cast<int>(p.n)};
  at::Tensor out = at::full({p.count(), p.n, p.heads * kHead}, NAN, p.qkv.options());
  const bool ran = llava::cuda::prefill_attention(
      p.qkv.data_ptr(), static_cast<int>(p.qkv.size(1)), layer, static_cast<int>(p.n),
      static_cast<int>(p.count()), static_cast<int>(p.heads), static_cast<int>(p.kv_heads),
      static_cast<int>(kHead), static_cast<float>(1.0 / std::sqrt(static_cast<double>(kHead))),
      out.data_ptr(), p.qkv.scalar_type() == at::kBFloat16,
      at::cuda::getCurrentCUDAStream().stream());
  EXPECT_TRUE(ran);
  return out;
}

// LibTorch's flash kernel, alone (no cuDNN, no memory-efficient or math fallback).
at::Tensor flash(const Prompts& p) {
  auto& context = at::globalContext();
  struct Restore {
    at::Context& context;
    bool flash, efficient, math, cudnn;
    ~Restore() {
      context.setSDPUseFlash(flash);
      context.setSDPUseMemEfficient(efficient);
      context.setSDPUseMath(math);
      context.setSDPUseCuDNN(cudnn);
    }
  } restore{context, context.userEnabledFlashSDP(), context.userEnabledMemEfficientSDP(),
            context.userEnabledMathSDP(), context.userEnabledCuDNNSDP()};
  context.setSDPUseFlash(true);
  context.setSDPUseMemEfficient(false);
  context.setSDPUseMath(false);
  context.setSDPUseCuDNN(false);
  at::Tensor o = at::scaled_dot_product_attention(
      p.q(), p.gathered(p.k), p.gathered(p.v), std::nullopt, 0.0,
      /*is_causal=*/true, 1.0 / std::sqrt(static_cast<double>(kHead)));
  return o.transpose(1, 2).reshape({p.count(), p.n, p.heads * kHead});
}

// softmax(q k^T / sqrt(128), causal) v in float64.
at::Tensor exact(const Prompts& p) {
  const at::Tensor q = p.q().to(at::kDouble), k = p.gathered(p.k).to(at::kDouble),
                   v = p.gathered(p.v).to(at::kDouble);
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(kHead));
  at::Tensor above = at::ones({p.n, p.n}, scores.options().dtype(at::kBool)).triu(1);
  at::Tensor o = at::matmul(at::softmax(scores.masked_fill(above, -INFINITY), -1), v);
  return o.transpose(1, 2).reshape({p.count(), p.n, p.heads * kHead});
}

bool device_takes() {
  return at::hasCUDA() && llava::cuda::prefill_attention_takes(static_cast<int>(kHead), 32, 8);
}

TEST(PrefillAttention, EqualsTheFlashKernelBitForBitAndTheExactValueToItsRounding) {
  if (!device_takes()) GTEST_SKIP() << "no CUDA device with compute capability 8.0 code";
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  at::manual_seed(11);
  // n, heads, kv heads, slots of the prompts, dtype, spread of q and k.
  const std::vector<
      std::tuple<int64_t, int64_t, int64_t, std::vector<int64_t>, at::ScalarType, double>>
      cases = {
          {1, 32, 32, {0}, at::kHalf, 1.0},         {17, 32, 32, {1}, at::kHalf, 1.0},
          {65, 32, 32, {0}, at::kHalf, 1.0},        {420, 32, 32, {2}, at::kHalf, 1.0},
          {641, 32, 32, {0}, at::kHalf, 1.0},       {641, 32, 32, {3}, at::kHalf, 4.0},
          {641, 32, 32, {0}, at::kBFloat16, 1.0},   {1000, 32, 8, {1}, at::kHalf, 1.0},
          {2048, 32, 32, {0}, at::kHalf, 1.0},      {200, 32, 32, {2, 0, 3}, at::kHalf, 1.0},
          {333, 32, 8, {3, 1}, at::kBFloat16, 2.0},
      };
  int compared = 0;
  for (const auto& [n, heads, kv_heads, slots, dtype, spread] : cases) {
    const Prompts p(n, heads, kv_heads, slots, dtype, spread);
    const at::Tensor got = ours(p);
    ASSERT_TRUE(at::isfinite(got).all().item<bool>()) << n;
    if (n <= 641) {  // float64 scores [P, 32, n, n] stay small
      const double error = (got.to(at::kDouble) - exact(p)).abs().max().item<double>();
      EXPECT_LT(error, dtype == at::kHalf ? 2e-3 : 1.6e-2) << n << " " << dtype;
    }
    if (llava::flash_attention_splits(n, p.count(), heads, sms) != 1)
      continue;  // the flash kernel splits
    const at::Tensor expected = flash(p);
    EXPECT_TRUE(at::equal(got, expected))
        << "n " << n << " " << dtype << " kv heads " << kv_heads << " prompts " << p.count() << ": "
        << (got != expected).sum().item<int64_t>() << " elements differ, by up to "
        << (got.to(at::kFloat) - expected.to(at::kFloat)).abs().max().item<double>();
    ++compared;
  }
  EXPECT_GE(compared, 8);  // the H100's and H200's 132 multiprocessors: all 11
}

// The decoder's op (llama_ops.h) takes a fresh prompt from the projected rows and the
// cache up to kMaxPrefillAttentionKeys tokens where the flash kernel would not split it, and
// gives the flash kernel's result; elsewhere it gives nothing (LibTorch's attention runs).
TEST(PrefillAttention, TheDecodersOpTakesWhatItShould) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  at::manual_seed(12);
  const auto options = at::TensorOptions().dtype(at::kHalf).device(at::kCUDA);
  const at::Tensor table = at::zeros({8, kHead}, options);  // RoPE's tables: not read here
  const llava::ops::Heads shape{32, 8, kHead, table, table};
  llava::TextConfig config;
  config.num_hidden_layers = 1;
  config.num_key_value_heads = 8;
  int taken = 0;
  for (int64_t n : {641, 129, 300, 2048, 2049}) {
    const Prompts p(n, 32, 8, {2}, at::kHalf, 1.0);
    llava::KvCache cache(config, 4, n + 5, options);
    auto [k_layer, v_layer] = cache.layer(0);
    k_layer.copy_(p.k);
    v_layer.copy_(p.v);
    const std::vector<int> slots = {2};
    const llava::ops::CacheRows rows{&cache, 0, &slots, at::Tensor()};
    const at::Tensor got = llava::ops::prefill_attention(p.q(), rows, shape);
    // A build without compute capability 8.0 code for this device (a T4's PTX-only build
    // run on a newer GPU) never takes it: LibTorch's attention runs.
    const bool takes = device_takes() && n <= llava::ops::kMaxPrefillAttentionKeys &&
                       llava::flash_attention_splits(n, 1, 32, sms) == 1;
    ASSERT_EQ(got.defined(), takes) << n;
    if (!takes) continue;
    ++taken;
    EXPECT_TRUE(at::equal(got, flash(p))) << n;
    // q not a view of the rows it was projected into: not taken.
    EXPECT_FALSE(llava::ops::prefill_attention(p.q().contiguous(), rows, shape).defined()) << n;
    // LLAVA_PIPE_PREFILL_ATTENTION: "sdpa" leaves it to LibTorch; a value it does not know
    // is an error that names it.
    ASSERT_EQ(setenv("LLAVA_PIPE_PREFILL_ATTENTION", "sdpa", 1), 0);
    EXPECT_FALSE(llava::ops::prefill_attention(p.q(), rows, shape).defined()) << n;
    ASSERT_EQ(setenv("LLAVA_PIPE_PREFILL_ATTENTION", "fastest", 1), 0);
    try {
      llava::ops::prefill_attention(p.q(), rows, shape);
      ADD_FAILURE() << "an unknown LLAVA_PIPE_PREFILL_ATTENTION was taken";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("LLAVA_PIPE_PREFILL_ATTENTION is 'fastest'"),
                std::string::npos)
          << e.what();
    }
    ASSERT_EQ(setenv("LLAVA_PIPE_PREFILL_ATTENTION", "ours", 1), 0);
    EXPECT_TRUE(llava::ops::prefill_attention(p.q(), rows, shape).defined()) << n;
    unsetenv("LLAVA_PIPE_PREFILL_ATTENTION");
  }
  EXPECT_EQ(taken, device_takes() ? 2 : 0);  // 641 and 2048 on any GPU with the kernel
  // Not 128 wide, not whole groups of heads: the kernel itself says no.
  EXPECT_FALSE(llava::cuda::prefill_attention_takes(64, 32, 32));
  EXPECT_FALSE(llava::cuda::prefill_attention_takes(128, 32, 6));
  EXPECT_EQ(llava::cuda::prefill_attention_takes(128, 32, 32), device_takes());
}

}  // namespace
#endif
