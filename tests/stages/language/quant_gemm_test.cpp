// Our quantized CUDA kernels against float64 references on the CPU: the tensor-core GEMM
// (int8 / int4, float16 / bfloat16, every tiling, ragged rows and tokens, values in rows
// and in tiles) and the dequantization for cuBLAS (bit-exact with the CPU's). Skipped
// where there is no CUDA device or the build has no kernels.
#include <gtest/gtest.h>

#include <stdexcept>

#include "stages/language/linear.h"
#include "stages/language/quant_layout.h"

#ifdef LLAVA_PIPE_CUDA_KERNELS
#include "stages/language/fused_kernels.h"
#include "stages/language/quant_gemm.h"
#include "stages/language/quant_kernels.h"
#endif

namespace {

using llava::Quantize;

#ifdef LLAVA_PIPE_CUDA_KERNELS

llava::QuantizedWeight quantize(const at::Tensor& w, Quantize kind) {
  return kind == Quantize::kInt8 ? llava::quantize_int8(w) : llava::quantize_int4(w);
}

// The layouts a quantized weight of this shape can be given: rows, and tiles where whole.
std::vector<llava::QuantizedWeight> layouts(const llava::QuantizedWeight& rows) {
  if (!llava::tileable(rows.values.size(0), rows.values.size(1))) return {rows};
  return {rows, llava::to_tiles(rows)};
}

const char* layout_name(const llava::QuantizedWeight& q) {
  return q.tiled ? " tiles" : " rows";
}

// max |got - expected| / max |expected|, NaN (an unwritten output) counting as a failure.
double relative_error(const at::Tensor& got, const at::Tensor& expected) {
  const at::Tensor g = got.cpu().to(at::kDouble);
  if (!at::isfinite(g).all().item<bool>()) return INFINITY;
  return (g - expected).abs().max().item<double>() / expected.abs().max().item<double>();
}

TEST(QuantGemm, MatchesFloat64ProductsOfTheDequantizedWeights) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  if (!llava::cuda::quant_gemm_available()) GTEST_SKIP() << "no tensor-core code for this device in this build";
  int checked = 0;
  for (auto dtype : {at::kHalf, at::kBFloat16}) {
    for (auto kind : {Quantize::kInt8, Quantize::kInt4}) {
      // n: whole tiles, a ragged last tile, fewer rows than a tile; k: one chunk, the 7B's widths.
      for (auto [n, k] : {std::pair<int, int>{4096, 4096}, {100, 11008}, {30, 128}, {12288 + 48, 256}}) {
        at::manual_seed(n + k);
        const at::Tensor w = (at::randn({n, k}) * 0.05).to(dtype);
        const llava::QuantizedWeight q = quantize(w.cuda(), kind);
        const at::Tensor dequantized = llava::dequantize({q.values.cpu(), q.scales.cpu()}, kind, k).to(at::kDouble);
        for (int m : {1, 2, 7, 8, 9, 16, 17, 32, 33, 100, 257}) {
          const at::Tensor x = (at::randn({m, k}) * (dtype == at::kHalf ? 1.0 : 3.0)).to(dtype);
          const at::Tensor expected = at::matmul(x.to(at::kDouble), dequantized.t());
          const llava::cuda::QuantGemmTiling tilings[] = {{16, 8}, {32, 8}, {16, 16}, {32, 16}, {16, 0}};
          for (const llava::QuantizedWeight& stored : layouts(q)) {
            for (const llava::cuda::QuantGemmTiling& tiling : tilings) {
              at::Tensor y =
                  at::full({m, n}, NAN, at::TensorOptions().dtype(dtype).device(at::kCUDA));
              const at::Tensor xc = x.cuda();
              llava::cuda::quant_gemm(xc.data_ptr(),
                                      {stored.values.data_ptr(), stored.scales.data_ptr(), n, k,
                                       kind == Quantize::kInt4, stored.tiled},
                                      y.data_ptr(), m, dtype == at::kBFloat16, nullptr, tiling);
              // One rounding of each output to the dtype: 2^-11 (float16) / 2^-8 (bfloat16) of
              // its size, plus float32 sums.
              EXPECT_LT(relative_error(y, expected), dtype == at::kHalf ? 1e-3 : 8e-3)
                  << llava::to_string(kind) << layout_name(stored)
                  << (dtype == at::kHalf ? " float16 " : " bfloat16 ") << n << "x" << k << " rows "
                  << m << " tile " << tiling.rows << " warps " << tiling.warps;
              ++checked;
            }
          }
        }
      }
    }
  }
  // 4096 x 4096 and 12336 x 256 are whole tiles, 100 and 30 rows are not.
  EXPECT_EQ(checked, 2 * 2 * (4 + 2) * 11 * 5);
}

// The gated product (a gate matrix stacked on an up matrix) equals the plain product
// followed by silu_mul bit for bit, for every tiling, row count and a ragged last block.
TEST(QuantGemm, GatedProductEqualsTheProductThenSiluMul) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  if (!llava::cuda::quant_gemm_available()) GTEST_SKIP() << "no tensor-core code for this device in this build";
  int checked = 0;
  for (auto dtype : {at::kHalf, at::kBFloat16}) {
    const bool bf16 = dtype == at::kBFloat16;
    const auto on_gpu = at::TensorOptions().dtype(dtype).device(at::kCUDA);
    for (auto kind : {Quantize::kInt8, Quantize::kInt4}) {
      // 2 x 11008 x 4096: the 7B's gate/up; 2 x 100: outputs that fill no tile; 2 x 4: fewer than a tile.
      for (auto [half, k] : {std::pair<int, int>{11008, 4096}, {100, 256}, {4, 128}}) {
        at::manual_seed(half + k + static_cast<int>(kind));
        const at::Tensor w = (at::randn({2 * half, k}) * 0.05).to(dtype);
        // Tiles too: with 100 outputs a half, the up rows start inside a tile's row group.
        for (const llava::QuantizedWeight& q : layouts(quantize(w.cuda(), kind))) {
          const llava::cuda::QuantMatrix matrix{q.values.data_ptr(),
                                                q.scales.data_ptr(),
                                                2 * half,
                                                k,
                                                kind == Quantize::kInt4,
                                                q.tiled};
          for (int m : {1, 3, 8, 9, 17, 40}) {
            const at::Tensor x = (at::randn({m, k}) * 2.0).to(on_gpu);
            const llava::cuda::QuantGemmTiling tilings[] = {
                {16, 8}, {32, 8}, {16, 16}, {32, 16}, {16, 0}};
            for (const llava::cuda::QuantGemmTiling& tiling : tilings) {
              at::Tensor both = at::full({m, 2 * half}, NAN, on_gpu),
                         expected = at::full({m, half}, NAN, on_gpu);
              at::Tensor got = at::full({m, half}, NAN, on_gpu);
              llava::cuda::quant_gemm(x.data_ptr(), matrix, both.data_ptr(), m, bf16, nullptr,
                                      tiling);
              llava::cuda::silu_mul(both.data_ptr(), expected.data_ptr(), m, half, bf16, nullptr);
              llava::cuda::quant_gemm(x.data_ptr(), matrix, got.data_ptr(), m, bf16, nullptr,
                                      tiling, /*gated=*/true);
              EXPECT_TRUE(at::isfinite(expected).all().item<bool>());
              EXPECT_TRUE(at::equal(got.cpu(), expected.cpu()))
                  << (bf16 ? "bfloat16 " : "float16 ") << llava::to_string(kind) << layout_name(q)
                  << " " << half << "x2x" << k << " rows " << m << " tile " << tiling.rows
                  << " warps " << tiling.warps << ": max difference "
                  << (got.to(at::kFloat) - expected.to(at::kFloat)).abs().max().item<float>();
              ++checked;
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(checked, 2 * 2 * 3 * 2 * 6 * 5);  // every shape here is whole tiles
  EXPECT_THROW(llava::cuda::quant_gemm(nullptr, {nullptr, nullptr, 9, 128, false}, nullptr, 1, false, nullptr, {},
                                       /*gated=*/true),
               std::invalid_argument);
}

TEST(QuantGemm, RefusesAWidthThatIsNotWholeChunks) {
  EXPECT_TRUE(llava::cuda::quant_gemm_supports(false, 64));
  EXPECT_FALSE(llava::cuda::quant_gemm_supports(false, 96));
  EXPECT_TRUE(llava::cuda::quant_gemm_supports(true, 256));
  EXPECT_FALSE(llava::cuda::quant_gemm_supports(true, 192));
  EXPECT_THROW(llava::cuda::quant_gemm(nullptr, {nullptr, nullptr, 8, 192, true}, nullptr, 1, false, nullptr),
               std::invalid_argument);
  // Tiles need whole groups of 8 rows.
  EXPECT_THROW(llava::cuda::quant_gemm(nullptr, {nullptr, nullptr, 12, 128, false, true}, nullptr,
                                       1, false, nullptr),
               std::invalid_argument);
}

// The widening kernels for cuBLAS write exactly what the CPU's dequantize computes, on
// widths the 16-byte path takes and on ones that go a weight at a time.
TEST(QuantGemm, DequantizationForCublasEqualsTheCpuBitForBit) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (auto dtype : {at::kHalf, at::kBFloat16}) {
    for (auto kind : {Quantize::kInt8, Quantize::kInt4}) {
      for (auto [n, k] :
           {std::pair<int, int>{64, 4096}, {37, 11008}, {5, 40}, {9, 200}, {3, 129}, {24, 384}}) {
        at::manual_seed(n * k);
        const at::Tensor w = (at::randn({n, k}) * 0.05).to(dtype);
        const llava::QuantizedWeight q = quantize(w, kind);
        for (const llava::QuantizedWeight& stored : layouts(q)) {
          const at::Tensor values = stored.values.cuda(), scales = stored.scales.cuda();
          // Output at offset 0, and at offset 1 (not 16-byte aligned: a weight at a time).
          for (int offset : {0, 1}) {
            at::Tensor buffer =
                at::full({n * k + 1}, NAN, at::TensorOptions().dtype(dtype).device(at::kCUDA));
            at::Tensor out = buffer.narrow(0, offset, n * k).view({n, k});
            if (kind == Quantize::kInt4) {
              llava::cuda::int4_dequantize(values.data_ptr<uint8_t>(), scales.data_ptr(),
                                           out.data_ptr(), n, k, stored.tiled,
                                           dtype == at::kBFloat16, nullptr);
            } else {
              llava::cuda::int8_dequantize(values.data_ptr<int8_t>(), scales.data_ptr(),
                                           out.data_ptr(), n, k, stored.tiled,
                                           dtype == at::kBFloat16, nullptr);
            }
            EXPECT_TRUE(at::equal(out.cpu(), llava::dequantize(q, kind, k)))
                << llava::to_string(kind) << layout_name(stored) << " " << n << "x" << k
                << " output offset " << offset;
          }
        }
      }
    }
  }
}

// Linear on a device our GEMM runs on keeps its quantized values in tiles (whole tiles
// only), and every path (the GEMM, its gated form, dequantize + cuBLAS past 128 rows)
// gives what the same Linear in rows gives. Bit for bit, except int4 in the GEMM: there
// the tiles' nibble order (quant_layout.h) gives the MMA a word's inputs in other pairs
// ((0,1),(2,3) then (4,5),(6,7), not (0,4),(1,5) then (2,6),(3,7)), so its float32 sums
// round differently; those agree within one rounding of the output (measured on an H100:
// at::equal fails there, and only there).
TEST(QuantGemm, LinearInTilesEqualsLinearInRowsOnTheDevice) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  if (!llava::cuda::quant_gemm_available())
    GTEST_SKIP() << "no tensor-core code for this device in this build";
  int checked = 0;
  for (auto dtype : {at::kHalf, at::kBFloat16}) {
    const auto on_gpu = at::TensorOptions().dtype(dtype).device(at::kCUDA);
    for (auto kind : {Quantize::kInt8, Quantize::kInt4}) {
      for (auto [n, k] :
           {std::pair<int, int>{4096, 4096}, {2 * 11008, 4096}, {4096, 11008}, {200, 256}}) {
        at::manual_seed(n + k);
        const at::Tensor w = (at::randn({n, k}) * 0.05).to(on_gpu);
        const llava::Linear automatic({w}, {}, kind),
            rows({w}, {}, kind, llava::QuantLayout::kRows);
        EXPECT_TRUE(automatic.tiled()) << llava::to_string(kind) << " " << n << "x" << k;
        EXPECT_FALSE(rows.tiled());
        for (int m : {1, 3, 8, 17, 128, 300}) {
          const at::Tensor x = (at::randn({m, k}) * 2.0).to(on_gpu);
          const bool bitwise = kind == Quantize::kInt8 || m > 128;
          auto same = [&](const at::Tensor& tiles, const at::Tensor& in_rows) {
            if (bitwise) return at::equal(tiles.cpu(), in_rows.cpu());
            return relative_error(tiles, in_rows.cpu().to(at::kDouble)) <
                   (dtype == at::kHalf ? 1e-3 : 8e-3);
          };
          EXPECT_TRUE(same(automatic(x), rows(x)))
              << llava::to_string(kind) << " " << n << "x" << k << " rows " << m;
          const at::Tensor gated = automatic.gated(x);
          if (m <= 128) {
            EXPECT_TRUE(gated.defined());
            EXPECT_TRUE(same(gated, rows.gated(x)))
                << "gated " << llava::to_string(kind) << " " << n << "x" << k << " rows " << m;
          }
          ++checked;
        }
      }
      // 100 rows: not whole tiles, so rows.
      EXPECT_FALSE(llava::Linear({(at::randn({100, 256}) * 0.05).to(on_gpu)}, {}, kind).tiled());
    }
  }
  EXPECT_EQ(checked, 2 * 2 * 4 * 6);
}

#else

TEST(QuantGemm, NeedsABuildWithCudaKernels) { GTEST_SKIP() << "built without CUDA kernels"; }

#endif

}  // namespace
