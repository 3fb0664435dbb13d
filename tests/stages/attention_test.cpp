// A fresh prompt's causal attention with its keys read past the prompt (attention.h): the
// rows past it never reach a result, on the CPU (the math formula) and, where there is a
// CUDA device, through the padded call that cuDNN may take. And where PyTorch's flash kernel
// splits a prompt's keys.
#include "stages/attention.h"

#include <gtest/gtest.h>
#include <torch/version.h>

#include <cstdlib>
#include <string>

namespace {

TEST(CausalAttention, RoundsAPromptUpToItsBucketWhereTheRowsAreThere) {
  EXPECT_EQ(llava::causal_bucket(641, 4096), 768);
  EXPECT_EQ(llava::causal_bucket(768, 4096), 768);
  EXPECT_EQ(llava::causal_bucket(769, 4096), 896);
  EXPECT_EQ(llava::causal_bucket(1, 4096), 128);
  // Not past the rows there are: the prompt's own length.
  EXPECT_EQ(llava::causal_bucket(641, 700), 641);
  EXPECT_EQ(llava::causal_bucket(641, 768), 768);
  // Off the GPU, or short, or float32, or a head past 128: never padded.
  const auto cpu = at::TensorOptions().dtype(at::kHalf);
  EXPECT_EQ(llava::causal_attention_length(641, 4096, cpu, 128), 641);
  if (at::hasCUDA()) {
    const auto gpu = at::TensorOptions().dtype(at::kHalf).device(at::kCUDA);
    // Padded where asked for and LibTorch has cuDNN's attention (2.5 or newer) only.
    const char* setting = std::getenv("LLAVA_PIPE_PREFILL_CUDNN");
    const bool asked = setting != nullptr && std::string(setting) == "1";
    const bool cudnn =
        TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5);
    EXPECT_EQ(llava::causal_attention_length(641, 4096, gpu, 128), asked && cudnn ? 768 : 641);
    EXPECT_EQ(llava::causal_attention_length(100, 4096, gpu, 128), 100);
    EXPECT_EQ(llava::causal_attention_length(641, 4096, gpu.dtype(at::kFloat), 128), 641);
    EXPECT_EQ(llava::causal_attention_length(641, 4096, gpu, 256), 641);
  }
}

// Keys and values past the prompt full of large values: the result is the prompt's own
// causal attention, row for row.
void expect_padding_changes_nothing(const at::TensorOptions& options, double tolerance) {
  at::manual_seed(3);
  for (int64_t n : {130, 200, 256}) {
    const int64_t length = llava::causal_bucket(n, 512);
    const at::Tensor q = at::randn({2, 4, n, 64}, options);
    at::Tensor k = at::randn({2, 4, length, 64}, options),
               v = at::randn({2, 4, length, 64}, options);
    k.narrow(2, n, length - n).fill_(300.0);
    v.narrow(2, n, length - n).fill_(-300.0);
    const double scale = 1.0 / 8.0;
    const at::Tensor padded = llava::causal_attention(q, k, v, scale);
    const at::Tensor plain = llava::attention(q, k.narrow(2, 0, n), v.narrow(2, 0, n), at::Tensor(),
                                              scale, /*causal=*/true);
    ASSERT_EQ(padded.sizes(), plain.sizes());
    EXPECT_TRUE(at::isfinite(padded).all().item<bool>()) << n;
    EXPECT_LT((padded.to(at::kFloat) - plain.to(at::kFloat)).abs().max().item<double>(), tolerance)
        << n;
  }
}

TEST(CausalAttention, KeysPastThePromptChangeNothing) {
  expect_padding_changes_nothing(at::TensorOptions().dtype(at::kFloat), 1e-5);
  if (at::hasCUDA()) {
    // float16 results of two kernels (cuDNN's padded, flash's not) agree to its rounding.
    expect_padding_changes_nothing(at::TensorOptions().dtype(at::kHalf).device(at::kCUDA), 4e-3);
  }
}

// PyTorch's flash kernel's choice of key splits (which our prefill kernel must match: it
// runs only where the flash kernel runs in one pass). The H100's and H200's 132
// multiprocessors: tests/perf/prefill_attention_check.py found our kernel equal to the flash
// kernel bit for bit at every length below but 129 and 300, where the flash kernel splits.
TEST(CausalAttention, FlashKernelSplitsAsPyTorchDecides) {
  for (int64_t n : {1, 2, 17, 63, 64, 65, 127, 128, 420, 430, 576, 641, 1000, 2048, 3001}) {
    EXPECT_EQ(llava::flash_attention_splits(n, 1, 32, 132), 1) << n;
  }
  // 32 heads x 3 query blocks = 96 < 0.8 x 264: two parts of the 2 key blocks fill a wave
  // to 0.73, one part 0.36.
  EXPECT_EQ(llava::flash_attention_splits(129, 1, 32, 132), 2);
  // 160 query blocks: one part 0.61, two 0.61 (1.21 waves), three 0.91.
  EXPECT_EQ(llava::flash_attention_splits(300, 1, 32, 132), 3);
  EXPECT_EQ(llava::flash_attention_splits(300, 2, 32, 132), 1);  // 320 query blocks
  EXPECT_EQ(llava::flash_attention_splits(200, 3, 32, 132), 1);
  // 32 x 5 = 160 query blocks and 3 key blocks: three parts (as 300). At 321, 192 query
  // blocks fill 0.73 of a wave whatever the parts: one.
  EXPECT_EQ(llava::flash_attention_splits(320, 1, 32, 132), 3);
  EXPECT_EQ(llava::flash_attention_splits(321, 1, 32, 132), 1);
  // An L4's 58: 32 x 2 = 64 query blocks >= 0.8 x 116.
  EXPECT_EQ(llava::flash_attention_splits(129, 1, 32, 58), 1);
  EXPECT_EQ(llava::flash_attention_splits(64, 1, 32, 58), 1);  // one key block: nothing to split
  // One head of 512 tokens: 8 query blocks, 4 key blocks; 3 parts (2 + 2 + 0 blocks) is
  // no real choice, 4 fills most.
  EXPECT_EQ(llava::flash_attention_splits(512, 1, 1, 132), 4);
}

}  // namespace
