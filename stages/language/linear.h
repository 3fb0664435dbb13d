// A linear layer whose weight is stored in the compute dtype or weight-only quantized:
// int8 with one scale per output, or int4 in groups of 128 inputs with one scale per
// output and group (symmetric, scales in the compute dtype). Quantized at load time from
// the checkpoint's weights; on CUDA the product widens the weights inside our kernels up to
// 128 rows (quant_gemm.cu; decoding, short prompts), or dequantizes the matrix for cuBLAS
// beyond (prefill), as on the CPU for LibTorch. Where our tensor-core kernel runs, the
// quantized values are kept in its tiles (quant_layout.h).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "common/config.h"

namespace llava {

struct QuantizedWeight {
  at::Tensor values;  // int8 [out, in], or uint8 [out, ceil(in / 2)] holding two int4 each
  at::Tensor scales;  // [out] (int8) or [out, ceil(in / 128)] (int4)
  bool tiled = false;  // values' bytes in quant_layout.h's tiles (same shape), not in rows
};

// w [out, in] (float16/bfloat16/float32) -> values (in rows) and scales in w's dtype, on
// w's device.
QuantizedWeight quantize_int8(const at::Tensor& w);
QuantizedWeight quantize_int4(const at::Tensor& w);
// The same weight with its values in tiles (quant_layout.h), or back in rows; to_tiles
// throws std::invalid_argument where the values are not whole tiles.
QuantizedWeight to_tiles(const QuantizedWeight& q);
QuantizedWeight to_rows(const QuantizedWeight& q);
// The weight the quantized values stand for: [out, in] in the scales' dtype.
at::Tensor dequantize(const QuantizedWeight& q, Quantize kind, int64_t in);

// Where a quantized Linear keeps its values: kForDevice takes tiles where our tensor-core
// product reads them (a CUDA device it has code for, whole tiles; LLAVA_PIPE_QUANT_LAYOUT=rows
// in the environment keeps rows, for comparisons), rows elsewhere (the CPU, the GEMV of
// older GPUs). kRows / kTiles force one (kTiles throws where the shape is not whole tiles).
enum class QuantLayout { kForDevice, kRows, kTiles };

class Linear {
 public:
  Linear() = default;
  // The parts ([out_i, in] each, biases [out_i] or undefined) are stacked along the
  // output: one product for q, k and v. Each part is quantized before stacking, so the
  // float32 working copy is one part's size.
  Linear(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
         Quantize quantize, QuantLayout layout = QuantLayout::kForDevice);

  at::Tensor operator()(const at::Tensor& x) const;  // [..., in] -> [..., out]
  // For a layer that stacks a gate matrix on an up matrix (no bias): silu(gate x) * up x
  // [..., out / 2], in one kernel where our quantized GEMM takes x (decoding; quant_gemm.h);
  // else an undefined tensor (the caller composes).
  at::Tensor gated(const at::Tensor& x) const;

  Quantize quantize() const { return quantize_; }
  bool tiled() const { return tiled_; }  // quantized values in tiles (quant_layout.h)
  int64_t in_features() const { return in_; }
  int64_t bytes() const;  // the weight's storage, bias included
  // The stored tensors (values, scales, bias; undefined ones left out), for copying the
  // layer between host and device.
  std::vector<at::Tensor> tensors() const;
  // Calls f(tensor&) on every stored tensor, in tensors()'s order; f may replace it.
  template <typename F>
  void visit(F&& f) {
    f(weight_);
    if (scales_.defined()) f(scales_);
    if (bias_.defined()) f(bias_);
  }
  // The same layer with every tensor moved by `move` (e.g. to pinned host memory).
  template <typename Move>
  Linear map(Move move) const {
    Linear out = *this;
    out.weight_ = move(weight_);
    if (scales_.defined()) out.scales_ = move(scales_);
    if (bias_.defined()) out.bias_ = move(bias_);
    return out;
  }

 private:
  // Whether `rows` rows of x go through our quantized GEMM (CUDA, float16/bfloat16 inputs).
  bool takes_quant_gemm(const at::Tensor& x, int64_t rows) const;
  // Whether that GEMM runs on weight_'s device for this shape, whole tiles, tiles allowed
  // (QuantLayout::kForDevice).
  bool kernels_read_tiles() const;
  // That GEMM on x (contiguous), plus the bias, or gated.
  at::Tensor quant_product(const at::Tensor& x, int64_t rows, bool gated) const;

  Quantize quantize_ = Quantize::kNone;
  bool tiled_ = false;
  int64_t in_ = 0;
  at::Tensor weight_;  // [out, in] in the compute dtype, or QuantizedWeight::values
  at::Tensor scales_;
  at::Tensor bias_;
};

}  // namespace llava
