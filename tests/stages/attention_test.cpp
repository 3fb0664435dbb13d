// A fresh prompt's causal attention with its keys read past the prompt (attention.h): the
// rows past it never reach a result, on the CPU (the math formula) and, where there is a
// CUDA device, through the padded call that cuDNN may take.
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

}  // namespace
