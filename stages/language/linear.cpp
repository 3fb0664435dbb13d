// Weight-only quantization (symmetric, per output / per group of 128 inputs) and the
// matrix product over it.
#include "stages/language/linear.h"

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/plan.h"
#include "stages/language/quant_layout.h"

#ifdef LLAVA_PIPE_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "stages/language/quant_gemm.h"
#include "stages/language/quant_kernels.h"
#endif

namespace llava {
namespace {

// int4 storage: each byte's two nibbles, low first ([..., b] bytes -> [..., 2b] ints 0-15),
// and back (pairs of values 0-15 -> bytes).
at::Tensor nibbles_of(const at::Tensor& bytes) {
  const at::Tensor b = bytes.to(at::kInt);
  return at::stack({at::remainder(b, 16), at::div(b, 16, "floor")}, -1).flatten(-2);
}
at::Tensor bytes_of(const at::Tensor& nibbles) {
  const int64_t pairs = nibbles.size(-1) / 2;
  return (nibbles.slice(-1, 0, 2 * pairs, 2) + nibbles.slice(-1, 1, 2 * pairs, 2) * 16)
      .to(at::kByte);
}

// Scales are rounded to the stored dtype first, so that values are computed against the
// scale that dequantization will use. A zero row gets scale 1 (its values are all 0).
at::Tensor stored_scale(const at::Tensor& absmax, double levels, at::ScalarType dtype) {
  at::Tensor scale = (absmax / levels).to(dtype).to(at::kFloat);
  return at::where(scale == 0, at::ones_like(scale), scale);
}

QuantizedWeight quantize_int8_rows(const at::Tensor& w) {
  at::Tensor w32 = w.to(at::kFloat);
  at::Tensor scale = stored_scale(w32.abs().amax(1, /*keepdim=*/true), 127.0, w.scalar_type());
  return {(w32 / scale).round_().clamp_(-127, 127).to(at::kChar),
          scale.squeeze(1).to(w.scalar_type())};
}

QuantizedWeight quantize_int4_rows(const at::Tensor& w) {
  const int64_t out = w.size(0), in = w.size(1);
  const int64_t groups = (in + kInt4Group - 1) / kInt4Group;
  at::Tensor w32 = at::constant_pad_nd(w.to(at::kFloat), {0, groups * kInt4Group - in});
  w32 = w32.view({out, groups, kInt4Group});
  // Scale search: per group, of the scales amax * r / 7 and amax * r / 8 (r from 1 down to
  // 0.75: clipping the largest values buys finer steps for the rest; / 8 uses the -8 level),
  // the one with the least squared error. r = 1, / 7 is plain round-to-nearest, so the
  // result is never worse than it. (12 candidates: 3.5 s for an 11008 x 4096 matrix on two
  // CPU cores at load; on a GPU, milliseconds.)
  const at::Tensor absmax = w32.abs().amax(2, /*keepdim=*/true);
  at::Tensor scale, best_error;
  for (double levels : {7.0, 8.0}) {
    for (int step = 0; step <= 5; ++step) {
      const at::Tensor candidate = stored_scale(absmax * (1.0 - 0.05 * step), levels, w.scalar_type());
      const at::Tensor error =
          ((w32 / candidate).round().clamp(-8, 7) * candidate - w32).square().sum(2, /*keepdim=*/true);
      if (!scale.defined()) {
        scale = candidate, best_error = error;
        continue;
      }
      // Better by a margin: two near-equal candidates must be chosen alike on every device
      // (sums of squares round differently on a GPU), so the CPU and CUDA weights agree.
      const at::Tensor better = error < best_error * (1 - 1e-4);
      scale = at::where(better, candidate, scale);
      best_error = at::where(better, error, best_error);
    }
  }
  // -8..7 stored as 0..15; padding inputs are 0 (stored 8).
  at::Tensor q = ((w32 / scale).round_().clamp_(-8, 7) + 8).to(at::kInt).view({out, groups * kInt4Group});
  return {bytes_of(q.narrow(1, 0, (in + 1) / 2 * 2)),
          scale.view({out, groups}).to(w.scalar_type())};
}

// Rows are quantized independently: 1024 at a time keeps the float32 working copy at
// 1024 x in (16 MiB for the 7B's widest input) instead of the whole matrix.
template <typename Rows>
QuantizedWeight in_row_blocks(const at::Tensor& w, Rows rows) {
  constexpr int64_t kBlock = 1024;
  if (w.size(0) <= kBlock) return rows(w);
  std::vector<at::Tensor> values, scales;
  for (int64_t from = 0; from < w.size(0); from += kBlock) {
    QuantizedWeight part = rows(w.narrow(0, from, std::min(kBlock, w.size(0) - from)));
    values.push_back(part.values);
    scales.push_back(part.scales);
  }
  return {at::cat(values), at::cat(scales)};
}

// Values [n, row_bytes] between rows and tiles: as [n / 8, 8, row_bytes / 64, 64], tiles
// are rows with the middle axes swapped (quant_layout.h).
at::Tensor swap_tile_axes(const at::Tensor& values, bool into_tiles) {
  const int64_t n = values.size(0), row_bytes = values.size(1);
  const int64_t groups = n / kTileRows, tiles = row_bytes / kTileBytes;
  const at::Tensor v =
      values.contiguous().view(into_tiles ? at::IntArrayRef{groups, kTileRows, tiles, kTileBytes}
                                          : at::IntArrayRef{groups, tiles, kTileRows, kTileBytes});
  return v.permute({0, 2, 1, 3}).contiguous().view({n, row_bytes});
}

// int4 values [n, row_bytes]: each 32-bit word's nibbles from input order into tiles' order
// (into_tiles) or back (quant_layout.h: nibble int4_tile_nibble(i) holds input i).
at::Tensor reorder_int4_nibbles(const at::Tensor& values, bool into_tiles) {
  const int64_t n = values.size(0), row_bytes = values.size(1);
  // [n, words, 8]: nibble j of each word, low nibble of its byte first.
  const at::Tensor nibbles = nibbles_of(values.contiguous().view({n, row_bytes / 4, 4}));
  std::vector<int64_t> order(8);  // the nibble of the result taken from each source nibble
  for (int i = 0; i < 8; ++i) {
    if (into_tiles) {
      order[int4_tile_nibble(i)] = i;  // nibble int4_tile_nibble(i) holds input i
    } else {
      order[i] = int4_tile_nibble(i);  // input i comes from nibble int4_tile_nibble(i)
    }
  }
  const at::Tensor moved = nibbles.index_select(
      2, at::tensor(order, at::TensorOptions().dtype(at::kLong)).to(values.device()));
  return bytes_of(moved).view({n, row_bytes});
}

// The environment's LLAVA_PIPE_QUANT_LAYOUT: false for "rows", true if unset or "tiles".
bool tiles_allowed() {
  const char* value = std::getenv("LLAVA_PIPE_QUANT_LAYOUT");
  if (value == nullptr || std::string(value) == "tiles") return true;
  if (std::string(value) == "rows") return false;
  throw std::invalid_argument("LLAVA_PIPE_QUANT_LAYOUT is '" + std::string(value) +
                              "' (rows or tiles)");
}

}  // namespace

QuantizedWeight quantize_int8(const at::Tensor& w) { return in_row_blocks(w, quantize_int8_rows); }
QuantizedWeight quantize_int4(const at::Tensor& w) { return in_row_blocks(w, quantize_int4_rows); }

QuantizedWeight to_tiles(const QuantizedWeight& q) {
  if (q.tiled) return q;
  if (q.values.dim() != 2 || !tileable(q.values.size(0), q.values.size(1))) {
    throw std::invalid_argument("quantized values " + std::to_string(q.values.size(0)) + " x " +
                                std::to_string(q.values.dim() == 2 ? q.values.size(1) : 0) +
                                " bytes are not whole tiles of 8 rows x 64 bytes");
  }
  const bool int4 = q.values.scalar_type() == at::kByte;
  const at::Tensor values = int4 ? reorder_int4_nibbles(q.values, /*into_tiles=*/true) : q.values;
  return {swap_tile_axes(values, /*into_tiles=*/true), q.scales, true};
}

QuantizedWeight to_rows(const QuantizedWeight& q) {
  if (!q.tiled) return q;
  const at::Tensor values = swap_tile_axes(q.values, /*into_tiles=*/false);
  const bool int4 = q.values.scalar_type() == at::kByte;
  return {int4 ? reorder_int4_nibbles(values, /*into_tiles=*/false) : values, q.scales, false};
}

at::Tensor dequantize(const QuantizedWeight& q, Quantize kind, int64_t in) {
  const at::Tensor rows = to_rows(q).values;
  if (kind == Quantize::kInt8) {
    return (rows.to(at::kFloat) * q.scales.to(at::kFloat).unsqueeze(1)).to(q.scales.scalar_type());
  }
  at::Tensor values = nibbles_of(rows).narrow(1, 0, in).to(at::kFloat) - 8;
  at::Tensor scales = q.scales.to(at::kFloat).repeat_interleave(kInt4Group, 1).narrow(1, 0, in);
  return (values * scales).to(q.scales.scalar_type());
}

Linear::Linear(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
               Quantize quantize, QuantLayout layout)
    : quantize_(quantize), in_(weights.front().size(1)) {
  std::vector<at::Tensor> values, scales;
  for (const auto& w : weights) {
    if (quantize == Quantize::kNone) {
      values.push_back(w);
      continue;
    }
    QuantizedWeight q = quantize == Quantize::kInt8 ? quantize_int8(w) : quantize_int4(w);
    values.push_back(q.values);
    scales.push_back(q.scales);
  }
  weight_ = values.size() == 1 ? values.front() : at::cat(values);
  if (!scales.empty()) scales_ = scales.size() == 1 ? scales.front() : at::cat(scales);
  if (quantize != Quantize::kNone &&
      (layout == QuantLayout::kTiles ||
       (layout == QuantLayout::kForDevice && kernels_read_tiles()))) {
    weight_ = to_tiles({weight_, scales_}).values;
    tiled_ = true;
  }
  if (!biases.empty() && biases.front().defined()) {
    bias_ = biases.size() == 1 ? biases.front() : at::cat(biases);
  }
}

int64_t Linear::bytes() const {
  int64_t total = 0;
  for (const auto& t : tensors()) total += static_cast<int64_t>(t.nbytes());
  return total;
}

std::vector<at::Tensor> Linear::tensors() const {
  std::vector<at::Tensor> out{weight_};
  if (scales_.defined()) out.push_back(scales_);
  if (bias_.defined()) out.push_back(bias_);
  return out;
}

#ifdef LLAVA_PIPE_CUDA_KERNELS
namespace {
// Which kernel takes how many rows (tests/perf/linear_bench on the H200, per decoder layer;
// tests/perf/README.md, "Linear paths" and "Speed, round 4"). Float weights: our GEMV up to
// 4 rows (1 row: 97 us per layer against cuBLAS's 125), beyond that cuBLAS's tensor cores.
// Quantized weights: the tensor-core GEMM up to 128 rows (int8 1 row 62.4 us against the
// GEMV's 69.9; 8 rows 64.6 against 311; int4 1 row 44.7 against 94.1), in 16-row tiles up
// to 8 rows (int4: 4; its 8 rows take 55.5 us in 32-row tiles, 57.9 in 16), 32-row tiles
// beyond (int8 32 rows 105 us, 128 rows 277 against dequantization + cuBLAS's 315); past
// 128 rows the dequantized matrix for cuBLAS (256 rows 338 us against 564). Where the GEMM
// has no code (before compute capability 8.0), the GEMV takes up to 8 rows.
constexpr int64_t kFloatGemvMaxRows = 4;
constexpr int64_t kQuantGemmMaxRows = 128;
constexpr int64_t kQuantGemmSmallTileRows = 8;
constexpr int64_t kInt4SmallTileRows = 4;

// The tile for `rows` input rows (int4's 5-8 rows: a chunk's inputs, 256 bytes a row, are
// then read once per 32 weight rows instead of 16); quant_gemm chooses the warps.
cuda::QuantGemmTiling quant_tiling(int64_t rows, bool int4) {
  const int64_t small_tile_rows = int4 ? kInt4SmallTileRows : kQuantGemmSmallTileRows;
  return {rows <= small_tile_rows ? 16 : 32, 0};
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }
}  // namespace
#endif

bool Linear::kernels_read_tiles() const {
  if (!tileable(weight_.size(0), weight_.size(1)) || !tiles_allowed()) return false;
#ifdef LLAVA_PIPE_CUDA_KERNELS
  if (!weight_.is_cuda()) return false;
  const c10::cuda::CUDAGuard guard(
      weight_.device());  // quant_gemm_available() asks the current device
  return cuda::quant_gemm_supports(quantize_ == Quantize::kInt4, in_) &&
         cuda::quant_gemm_available();
#else
  return false;
#endif
}

bool Linear::takes_quant_gemm(const at::Tensor& x, int64_t rows) const {
#ifdef LLAVA_PIPE_CUDA_KERNELS
  return quantize_ != Quantize::kNone && x.is_cuda() &&
         (x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16) && rows <= kQuantGemmMaxRows &&
         cuda::quant_gemm_supports(quantize_ == Quantize::kInt4, in_) && aligned16(x) && aligned16(weight_) &&
         cuda::quant_gemm_available();
#else
  (void)x, (void)rows;
  return false;
#endif
}

at::Tensor Linear::quant_product(const at::Tensor& x, int64_t rows, bool gated) const {
#ifdef LLAVA_PIPE_CUDA_KERNELS
  const c10::cuda::CUDAGuard guard(x.device());  // our launches go to the current device
  const int64_t out = weight_.size(0);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = gated ? out / 2 : out;
  at::Tensor y = at::empty(shape, x.options());
  const bool int4 = quantize_ == Quantize::kInt4;
  cuda::quant_gemm(x.data_ptr(),
                   cuda::QuantMatrix{weight_.data_ptr(), scales_.data_ptr(), static_cast<int>(out),
                                     static_cast<int>(in_), int4, tiled_},
                   y.data_ptr(), static_cast<int>(rows), x.scalar_type() == at::kBFloat16,
                   at::cuda::getCurrentCUDAStream().stream(), quant_tiling(rows, int4), gated);
  return bias_.defined() ? y.add_(bias_) : y;
#else
  (void)x, (void)rows, (void)gated;
  throw std::logic_error("quantized GEMM: built without CUDA kernels");
#endif
}

at::Tensor Linear::gated(const at::Tensor& x) const {
  // The checks that need no contiguous copy first: the caller composes (and copies) otherwise.
  if (quantize_ == Quantize::kNone || bias_.defined() || weight_.size(0) % 2 != 0 || x.size(-1) != in_) return {};
  const at::Tensor xc = x.contiguous();
  const int64_t rows = x.numel() / in_;
  if (!takes_quant_gemm(xc, rows)) return {};
  return quant_product(xc, rows, /*gated=*/true);
}

at::Tensor Linear::operator()(const at::Tensor& x) const {
#ifdef LLAVA_PIPE_CUDA_KERNELS
  const bool half = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  if (x.is_cuda() && half) {
    const bool quantized = quantize_ != Quantize::kNone, int4 = quantize_ == Quantize::kInt4,
               bf16 = x.scalar_type() == at::kBFloat16;
    const int64_t out = weight_.size(0), rows = x.numel() / in_;
    const c10::cuda::CUDAGuard guard(x.device());  // our launches go to the current device
    void* stream = at::cuda::getCurrentCUDAStream().stream();
    at::Tensor xc = x.contiguous();
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = out;
    const int m = static_cast<int>(rows), n = static_cast<int>(out), k = static_cast<int>(in_);
    auto with_bias = [&](at::Tensor y) { return bias_.defined() ? y.add_(bias_) : y; };
    if (takes_quant_gemm(xc, rows)) return quant_product(xc, rows, /*gated=*/false);
    // A few rows (decoding): our GEMV, which reads the weights once at close to the
    // memory's speed (cuBLAS picks split-k kernels plus a reduction for these shapes). It
    // reads rows, not tiles.
    const int64_t gemv_rows = quantized ? cuda::kGemvMaxRows : kFloatGemvMaxRows;
    if (rows <= gemv_rows && !tiled_ && cuda::gemv_supports(int4, in_) && aligned16(xc) &&
        (quantized || weight_.scalar_type() == x.scalar_type())) {
      at::Tensor y = at::empty(shape, x.options());
      if (!quantized) {
        cuda::half_gemv(xc.data_ptr(), weight_.data_ptr(), y.data_ptr(), m, n, k, bf16, stream);
      } else if (int4) {
        cuda::int4_gemv(xc.data_ptr(), weight_.data_ptr<uint8_t>(), scales_.data_ptr(), y.data_ptr(), m, n, k, bf16,
                        stream);
      } else {
        cuda::int8_gemv(xc.data_ptr(), weight_.data_ptr<int8_t>(), scales_.data_ptr(), y.data_ptr(), m, n, k, bf16,
                        stream);
      }
      return with_bias(y);
    }
    if (quantized) {
      at::Tensor w = at::empty({out, in_}, x.options());
      if (int4) {
        cuda::int4_dequantize(weight_.data_ptr<uint8_t>(), scales_.data_ptr(), w.data_ptr(), n, k,
                              tiled_, bf16, stream);
      } else {
        cuda::int8_dequantize(weight_.data_ptr<int8_t>(), scales_.data_ptr(), w.data_ptr(), n, k,
                              tiled_, bf16, stream);
      }
      return at::linear(x, w, bias_);
    }
  }
#endif
  if (quantize_ == Quantize::kNone) return at::linear(x, weight_, bias_);
  return at::linear(
      x, dequantize(QuantizedWeight{weight_, scales_, tiled_}, quantize_, in_).to(x.scalar_type()),
      bias_);
}

}  // namespace llava
