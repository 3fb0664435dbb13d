// Weight-only quantization: round-trip error bounds, the product against the float
// reference, byte counts against the plan, and (where CUDA is) our kernels against the
// CPU reference.
#include "stages/language/linear.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include "common/plan.h"
#include "stages/language/quant_layout.h"

namespace {

using llava::dequantize;
using llava::Linear;
using llava::Quantize;
using llava::QuantizedWeight;

at::Tensor random_weight(int64_t out, int64_t in, uint64_t seed) {
  at::manual_seed(seed);
  return at::randn({out, in}) * 0.05;
}

// Per element, half a quantization step of its row (int8) or group (int4).
at::Tensor half_step(const QuantizedWeight& q, Quantize kind, int64_t in) {
  at::Tensor s = q.scales.to(at::kFloat);
  if (kind == Quantize::kInt8) return (s / 2).unsqueeze(1).expand({s.size(0), in});
  return (s / 2).repeat_interleave(llava::kInt4Group, 1).narrow(1, 0, in);
}

TEST(Quantize, Int8RoundTripIsWithinHalfAStepOfEachRow) {
  at::Tensor w = random_weight(48, 200, 1);
  QuantizedWeight q = llava::quantize_int8(w);
  ASSERT_EQ(q.values.scalar_type(), at::kChar);
  EXPECT_EQ(q.values.sizes(), w.sizes());
  EXPECT_EQ(q.scales.sizes(), at::IntArrayRef({48}));
  at::Tensor error = (dequantize(q, Quantize::kInt8, 200) - w).abs();
  EXPECT_TRUE((error <= half_step(q, Quantize::kInt8, 200) * 1.0001).all().item<bool>());
  // The largest magnitude of each row is represented (up to rounding of the scale).
  EXPECT_EQ(q.values.abs().amax(1).min().item<int64_t>(), 127);
}

TEST(Quantize, Int4RoundTripIsWithinHalfAStepOfEachGroup) {
  // 301 inputs: three groups, the last partial, and an odd count (half a byte of padding).
  at::Tensor w = random_weight(16, 301, 2);
  QuantizedWeight q = llava::quantize_int4(w);
  ASSERT_EQ(q.values.scalar_type(), at::kByte);
  EXPECT_EQ(q.values.sizes(), at::IntArrayRef({16, 151}));
  EXPECT_EQ(q.scales.sizes(), at::IntArrayRef({16, 3}));
  at::Tensor back = dequantize(q, Quantize::kInt4, 301);
  EXPECT_EQ(back.sizes(), w.sizes());
  at::Tensor error = (back - w).abs();
  // Within half a step wherever the group's scale reaches (the scale search may clip the
  // largest few values of a group, to give the rest finer steps).
  at::Tensor step = half_step(q, Quantize::kInt4, 301) * 2;
  at::Tensor inside = (w / step <= 7.5) & (w / step >= -8.5);
  EXPECT_GT(inside.to(at::kFloat).mean().item<double>(), 0.95);
  EXPECT_TRUE(((error <= step / 2 * 1.0001) | ~inside).all().item<bool>());
  // Never worse than round-to-nearest with the group's largest value at +-7 steps.
  at::Tensor w32 = at::constant_pad_nd(w, {0, 3 * llava::kInt4Group - 301}).view({16, 3, llava::kInt4Group});
  at::Tensor rtn_scale = w32.abs().amax(2, true) / 7;
  at::Tensor rtn = ((w32 / rtn_scale).round().clamp(-8, 7) * rtn_scale).view({16, -1}).narrow(1, 0, 301);
  const double ours = (back - w).norm().item<double>(), plain = (rtn - w).norm().item<double>();
  EXPECT_LE(ours, plain * 1.0001);
  EXPECT_LT(ours, plain * 0.97);  // and on Gaussian weights, measurably better
  // Relative error of a Gaussian's int4 round trip: about 0.1 of its scale, far from 0.
  const double relative = ((back - w).norm() / w.norm()).item<double>();
  EXPECT_GT(relative, 0.02);
  EXPECT_LT(relative, 0.2);
}

TEST(Quantize, ZeroRowsStayZeroAndScalesStayFinite) {
  at::Tensor w = at::zeros({4, 256});
  for (auto kind : {Quantize::kInt8, Quantize::kInt4}) {
    QuantizedWeight q = kind == Quantize::kInt8 ? llava::quantize_int8(w) : llava::quantize_int4(w);
    EXPECT_TRUE(at::isfinite(q.scales).all().item<bool>());
    EXPECT_EQ(dequantize(q, kind, 256).abs().max().item<float>(), 0.0f);
  }
}

TEST(Quantize, Float16ScalesAreTheOnesDequantizationUses) {
  at::Tensor w = random_weight(8, 256, 3).to(at::kHalf);
  for (auto kind : {Quantize::kInt8, Quantize::kInt4}) {
    QuantizedWeight q = kind == Quantize::kInt8 ? llava::quantize_int8(w) : llava::quantize_int4(w);
    EXPECT_EQ(q.scales.scalar_type(), at::kHalf);
    at::Tensor back = dequantize(q, kind, 256);
    EXPECT_EQ(back.scalar_type(), at::kHalf);
    at::Tensor error = (back.to(at::kFloat) - w.to(at::kFloat)).abs();
    // Half a step, plus float16 rounding of the dequantized value (int4: where the scale
    // reaches; the search may clip a group's largest values).
    at::Tensor step = half_step(q, kind, 256) * 2;
    at::Tensor w32 = w.to(at::kFloat);
    at::Tensor inside = kind == Quantize::kInt8 ? at::ones_like(w32, at::kBool)
                                                : (w32 / step <= 7.5) & (w32 / step >= -8.5);
    at::Tensor bound = step / 2 + w32.abs() * 1e-3;
    EXPECT_TRUE(((error <= bound) | ~inside).all().item<bool>());
  }
}

// Quantization runs over blocks of rows (a small float32 working copy); rows are
// independent, so any slice quantizes as it does inside the whole matrix.
TEST(Quantize, RowBlocksQuantizeAsTheWholeMatrix) {
  at::Tensor w = random_weight(2500, 256, 9);
  for (auto kind : {Quantize::kInt8, Quantize::kInt4}) {
    auto quantize = kind == Quantize::kInt8 ? llava::quantize_int8 : llava::quantize_int4;
    QuantizedWeight whole = quantize(w), part = quantize(w.narrow(0, 1000, 1100));
    EXPECT_EQ(whole.values.size(0), 2500);
    EXPECT_TRUE(at::equal(whole.values.narrow(0, 1000, 1100), part.values));
    EXPECT_TRUE(at::equal(whole.scales.narrow(0, 1000, 1100), part.scales));
  }
}

TEST(QuantizedLinear, ProductEqualsTheDequantizedReferenceAndBoundsTheError) {
  at::Tensor w = random_weight(40, 256, 4), x = at::randn({3, 5, 256}), b = at::randn({40});
  for (auto kind : {Quantize::kInt8, Quantize::kInt4}) {
    Linear linear({w}, {b}, kind);
    at::Tensor y = linear(x);
    EXPECT_EQ(y.sizes(), at::IntArrayRef({3, 5, 40}));
    QuantizedWeight q = kind == Quantize::kInt8 ? llava::quantize_int8(w) : llava::quantize_int4(w);
    at::Tensor deq = dequantize(q, kind, 256);
    EXPECT_TRUE(at::allclose(y, at::linear(x, deq, b), 1e-5, 1e-5));
    // |x . (w' - w)| <= sum |x| * half step
    at::Tensor bound = at::linear(x.abs(), half_step(q, kind, 256)) + 1e-4;
    EXPECT_TRUE(((y - at::linear(x, w, b)).abs() <= bound).all().item<bool>());
  }
}

TEST(QuantizedLinear, StackedPartsEqualSeparateLayers) {
  at::Tensor a = random_weight(24, 128, 5), c = random_weight(8, 128, 6), x = at::randn({2, 128});
  for (auto kind : {Quantize::kNone, Quantize::kInt8, Quantize::kInt4}) {
    Linear both({a, c}, {at::Tensor(), at::Tensor()}, kind);
    at::Tensor expected = at::cat({Linear({a}, {}, kind)(x), Linear({c}, {}, kind)(x)}, 1);
    EXPECT_TRUE(at::equal(both(x), expected)) << llava::to_string(kind);
  }
}

TEST(QuantizedLinear, StoredBytesAreThePlansBytes) {
  for (auto kind : {Quantize::kNone, Quantize::kInt8, Quantize::kInt4}) {
    for (int64_t in : {64, 128, 301}) {
      at::Tensor w = random_weight(12, in, 7).to(at::kHalf);
      EXPECT_EQ(static_cast<uint64_t>(Linear({w}, {}, kind).bytes()),
                llava::linear_weight_bytes(12, in, kind, 2))
          << llava::to_string(kind) << " in=" << in;
    }
  }
}

// Tiles (quant_layout.h): every int8 value of a row lies at tiled_offset, every int4 value
// in the nibble int4_tile_nibble names there, and back in rows is the matrix unchanged;
// shapes that are not whole tiles are refused.
TEST(QuantLayout, EveryValueLiesAtItsTiledOffsetAndComesBack) {
  for (auto [n, row_bytes] : {std::pair<int64_t, int64_t>{8, 64}, {16, 192}, {40, 128}}) {
    for (bool int4 : {false, true}) {
      at::manual_seed(n + row_bytes);
      const at::Tensor bytes = at::randint(0, 256, {n, row_bytes}, at::kByte);
      const at::Tensor values = int4 ? bytes : bytes.view(at::kChar);  // int4 is stored as uint8
      const QuantizedWeight tiles = llava::to_tiles({values, at::ones({n}), false});
      ASSERT_TRUE(tiles.tiled);
      ASSERT_EQ(tiles.values.sizes(), values.sizes());
      ASSERT_EQ(tiles.values.scalar_type(), values.scalar_type());
      const at::Tensor tiled_bytes = tiles.values.view(at::kByte);
      const auto rows = bytes.accessor<uint8_t, 2>();
      const uint8_t* tiled = tiled_bytes.data_ptr<uint8_t>();
      int64_t misplaced = 0;
      for (int64_t r = 0; r < n; ++r) {
        if (!int4) {
          for (int64_t b = 0; b < row_bytes; ++b)
            misplaced += tiled[llava::tiled_offset(r, b, row_bytes)] != rows[r][b];
          continue;
        }
        for (int64_t input = 0; input < 2 * row_bytes; ++input) {
          const int in_rows = (rows[r][input / 2] >> (4 * (input % 2))) & 0xF;
          const int64_t nibble =
              input / 8 * 8 + llava::int4_tile_nibble(static_cast<int>(input % 8));
          const int in_tiles =
              (tiled[llava::tiled_offset(r, nibble / 2, row_bytes)] >> (4 * (nibble % 2))) & 0xF;
          misplaced += in_rows != in_tiles;
        }
      }
      EXPECT_EQ(misplaced, 0) << n << " x " << row_bytes << (int4 ? " int4" : " int8");
      const QuantizedWeight back = llava::to_rows(tiles);
      EXPECT_FALSE(back.tiled);
      EXPECT_TRUE(at::equal(back.values, values));
      // Bytes move unless there is one tile a row; int4's nibbles move within every word.
      EXPECT_EQ(at::equal(tiles.values, values), row_bytes == 64 && !int4);
    }
  }
  // A warp's 32 lanes x 16 bytes of rows 0-7 (lane 4g + q: row g, bytes 16q..16q+15) are
  // the first 512 bytes.
  for (int lane = 0; lane < 32; ++lane)
    EXPECT_EQ(llava::tiled_offset(lane / 4, 16 * (lane % 4), 128), 16 * lane);
  // The nibble order is a permutation of a word's 8 nibbles: the even inputs first.
  for (int i = 0; i < 8; ++i) EXPECT_EQ(llava::int4_tile_nibble(i), (i % 2) * 4 + i / 2);
  EXPECT_THROW(llava::to_tiles({at::zeros({12, 64}, at::kByte), at::ones({12}), false}),
               std::invalid_argument);
  EXPECT_THROW(llava::to_tiles({at::zeros({8, 96}, at::kByte), at::ones({8}), false}),
               std::invalid_argument);
  EXPECT_TRUE(
      llava::tileable(4096, 5504));  // the 7B's down projection in int4: 11008 / 2 bytes a row
  EXPECT_FALSE(llava::tileable(32004, 4096));
}

// A Linear whose values are in tiles computes what the one in rows does, bit for bit, on
// the CPU (which dequantizes the tiles back); on the CPU kForDevice keeps rows.
TEST(QuantLayout, LinearInTilesEqualsLinearInRows) {
  const at::Tensor w = random_weight(48, 256, 11), b = at::randn({48}), x = at::randn({3, 256});
  for (auto kind : {Quantize::kInt8, Quantize::kInt4}) {
    const Linear rows({w}, {b}, kind, llava::QuantLayout::kRows),
        tiles({w}, {b}, kind, llava::QuantLayout::kTiles);
    EXPECT_FALSE(rows.tiled());
    EXPECT_TRUE(tiles.tiled());
    EXPECT_FALSE(Linear({w}, {b}, kind).tiled());
    EXPECT_TRUE(at::equal(rows(x), tiles(x))) << llava::to_string(kind);
    EXPECT_EQ(rows.bytes(), tiles.bytes());
    EXPECT_THROW(Linear({random_weight(12, 256, 1)}, {}, kind, llava::QuantLayout::kTiles),
                 std::invalid_argument);
  }
  // Float weights have no layout to choose.
  EXPECT_FALSE(Linear({w}, {b}, Quantize::kNone, llava::QuantLayout::kTiles).tiled());
}

TEST(QuantLayout, AnUnknownLayoutInTheEnvironmentIsAnError) {
  ASSERT_EQ(setenv("LLAVA_PIPE_QUANT_LAYOUT", "diagonal", 1), 0);
  try {
    Linear({random_weight(16, 128, 2)}, {}, Quantize::kInt8);
    ADD_FAILURE() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("LLAVA_PIPE_QUANT_LAYOUT is 'diagonal'"),
              std::string::npos)
        << e.what();
  }
  ASSERT_EQ(setenv("LLAVA_PIPE_QUANT_LAYOUT", "rows", 1), 0);
  EXPECT_FALSE(Linear({random_weight(16, 128, 2)}, {}, Quantize::kInt8).tiled());
  unsetenv("LLAVA_PIPE_QUANT_LAYOUT");
}

// Our CUDA kernels (GEMV, the tensor-core GEMM, dequantize + cuBLAS: each row count goes
// to one) against the CPU reference, float16 and bfloat16, on the 7B's matrix shapes.
TEST(QuantizedLinear, CudaKernelsMatchTheCpuReference) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (auto dtype : {at::kHalf, at::kBFloat16}) {
    for (auto kind : {Quantize::kNone, Quantize::kInt8, Quantize::kInt4}) {  // none: our float GEMV
      for (auto [out, in] : {std::pair<int64_t, int64_t>{4096, 4096}, {22016, 4096}, {4096, 11008}, {30, 256}}) {
        at::Tensor w = random_weight(out, in, 8).to(dtype);
        at::Tensor cpu_reference = w;
        if (kind != Quantize::kNone) {
          cpu_reference = dequantize(kind == Quantize::kInt8 ? llava::quantize_int8(w) : llava::quantize_int4(w), kind, in);
        }
        Linear gpu({w.cuda()}, {}, kind);
        for (int64_t rows : {1, 3, 8, 17, 40, 300}) {
          at::Tensor x = at::randn({rows, in}).to(dtype);
          at::Tensor expected = at::linear(x.to(at::kFloat), cpu_reference.to(at::kFloat));
          at::Tensor got = gpu(x.cuda()).cpu().to(at::kFloat);
          const double scale = expected.abs().max().item<double>();
          const double error = (got - expected).abs().max().item<double>();
          EXPECT_LT(error / scale, dtype == at::kHalf ? 5e-3 : 2e-2)
              << llava::to_string(kind) << " " << out << "x" << in << " rows " << rows;
        }
      }
    }
  }
}

}  // namespace
