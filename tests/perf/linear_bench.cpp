// Times each path of a linear layer at LLaVA-1.5-7B's shapes on a CUDA device, for input
// rows from 1 (decoding at batch 1) to a 641-token prompt, so that Linear's choice of path
// per row count rests on numbers: float16 (our GEMV, cuBLAS) and int8 / int4 (our GEMV,
// the tensor-core GEMM with 16- or 32-row tiles, dequantize + cuBLAS; the GEMM and the
// dequantization also on values in tiles, quant_layout.h, as paths named ...t). Each path's
// output is checked against float32 products of the dequantized weight first.
//   linear_bench [JSON_OUT [MAX_ROWS]]
// Prints a table (µs per call, weight GB/s, TFLOP/s, error) and, per row count, the sum
// over the decoder layer's four shapes for each path; JSON lines go to JSON_OUT.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "stages/device.h"
#include "stages/language/linear.h"
#include "stages/language/quant_gemm.h"
#include "stages/language/quant_kernels.h"

namespace {

using llava::Quantize;

struct Shape {
  const char* name;
  int n, k;
};

// One weight, quantized or not, in several copies so that timed calls rotate through more
// bytes than L2 holds (each call reads its weights from memory, as in a decode step).
struct Weights {
  std::vector<at::Tensor> values, scales, tiles;  // tiles: the values in tiles (quantized)
  int64_t bytes = 0;  // of one copy
};

Weights make_weights(const Shape& s, Quantize kind) {
  Weights w;
  const auto f16 = at::TensorOptions().dtype(at::kHalf).device(at::kCUDA);
  at::Tensor base = at::randn({s.n, s.k}, f16) * 0.02;
  at::Tensor values = base, scales;
  if (kind != Quantize::kNone) {
    llava::QuantizedWeight q = kind == Quantize::kInt8 ? llava::quantize_int8(base) : llava::quantize_int4(base);
    values = q.values, scales = q.scales;
  }
  w.bytes = static_cast<int64_t>(values.nbytes()) + (scales.defined() ? static_cast<int64_t>(scales.nbytes()) : 0);
  const int copies = static_cast<int>(std::max<int64_t>(2, (int64_t{400} << 20) / w.bytes + 1));
  for (int c = 0; c < copies; ++c) {
    w.values.push_back(c == 0 ? values : values.clone());
    w.scales.push_back(scales.defined() ? (c == 0 ? scales : scales.clone()) : scales);
    if (kind != Quantize::kNone)
      w.tiles.push_back(llava::to_tiles({w.values.back(), scales}).values);
  }
  return w;
}

// Median of 5 trials of `reps` calls, µs per call; call(i) uses copy i % copies.
double time_us(int reps, const std::function<void(int)>& call) {
  for (int i = 0; i < 3; ++i) call(i);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<double> trials;
  for (int t = 0; t < 5; ++t) {
    cudaEventRecord(start, nullptr);
    for (int i = 0; i < reps; ++i) call(i);
    cudaEventRecord(stop, nullptr);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    trials.push_back(1000.0 * ms / reps);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(trials.begin(), trials.end());
  return trials[2];
}

}  // namespace

int main(int argc, char** argv) {
  c10::InferenceMode inference;
  llava::initialize_device(at::Device("cuda:0"));
  FILE* json = argc > 1 ? std::fopen(argv[1], "w") : nullptr;
  const std::vector<Shape> shapes = {{"qkv", 12288, 4096}, {"o", 4096, 4096}, {"gate_up", 22016, 4096}, {"down", 4096, 11008}};
  std::vector<int> row_counts = {1, 2, 4, 8, 16, 32, 64, 128, 256, 641};
  if (argc > 2) {  // MAX_ROWS: only the row counts up to it
    const int most = std::atoi(argv[2]);
    row_counts.erase(std::remove_if(row_counts.begin(), row_counts.end(), [&](int m) { return m > most; }), row_counts.end());
  }
  const auto f16 = at::TensorOptions().dtype(at::kHalf).device(at::kCUDA);
  void* stream = nullptr;  // the default stream, as events above
  std::printf("quantized GEMM on tensor cores available: %s\n", llava::cuda::quant_gemm_available() ? "yes" : "no");
  std::printf("%-8s %-5s %5s %-15s %10s %9s %9s %10s\n", "shape", "kind", "rows", "path", "us", "GB/s", "TFLOP/s", "rel.err");
  // sums[kind][rows][path] over the four shapes, µs
  std::map<std::string, std::map<int, std::map<std::string, double>>> sums;
  for (auto kind : {Quantize::kNone, Quantize::kInt8, Quantize::kInt4}) {
    const std::string kind_name = llava::to_string(kind);
    for (const Shape& s : shapes) {
      Weights w = make_weights(s, kind);
      const int copies = static_cast<int>(w.values.size());
      at::Tensor reference_weight =
          kind == Quantize::kNone ? w.values[0].to(at::kFloat)
                                  : llava::dequantize({w.values[0], w.scales[0]}, kind, s.k).to(at::kFloat);
      const bool int4 = kind == Quantize::kInt4;
      for (int m : row_counts) {
        at::Tensor x = at::randn({m, s.k}, f16);
        at::Tensor y = at::empty({m, s.n}, f16);
        at::Tensor scratch = at::empty({s.n, s.k}, f16);
        at::Tensor expected = at::linear(x.to(at::kFloat), reference_weight);
        const double scale = expected.abs().max().item<double>();
        std::map<std::string, std::function<void(int)>> paths;
        auto values = [&](int i) { return w.values[i % copies].data_ptr(); };
        auto tiles = [&](int i) { return w.tiles[i % copies].data_ptr(); };
        auto scales = [&](int i) { return w.scales[i % copies].defined() ? w.scales[i % copies].data_ptr() : nullptr; };
        if (kind == Quantize::kNone) {
          if (m <= llava::cuda::kGemvMaxRows) {
            paths["gemv"] = [&](int i) { llava::cuda::half_gemv(x.data_ptr(), values(i), y.data_ptr(), m, s.n, s.k, false, stream); };
          }
          paths["cublas"] = [&](int i) { at::mm_out(y, x, w.values[i % copies].t()); };
        } else {
          if (m <= llava::cuda::kGemvMaxRows) {
            paths["gemv"] = [&](int i) {
              if (int4) {
                llava::cuda::int4_gemv(x.data_ptr(), static_cast<const uint8_t*>(values(i)), scales(i), y.data_ptr(), m, s.n, s.k, false, stream);
              } else {
                llava::cuda::int8_gemv(x.data_ptr(), static_cast<const int8_t*>(values(i)), scales(i), y.data_ptr(), m, s.n, s.k, false, stream);
              }
            };
          }
          if (llava::cuda::quant_gemm_available()) {
            // mma<rows>: the warps quant_gemm chooses; up to 8 rows also mma<rows>w8 / w16.
            for (int tile : {16, 32}) {
              for (int warps : {0, 8, 16}) {
                for (bool tiled : {false, true}) {
                  if (warps != 0 && m > 8) continue;
                  const std::string name = "mma" + std::to_string(tile) +
                                           (warps != 0 ? "w" + std::to_string(warps) : "") +
                                           (tiled ? "t" : "");
                  paths[name] = [&, tile, warps, tiled](int i) {
                    llava::cuda::QuantMatrix q{
                        tiled ? tiles(i) : values(i), scales(i), s.n, s.k, int4, tiled};
                    llava::cuda::quant_gemm(x.data_ptr(), q, y.data_ptr(), m, false, stream,
                                            {tile, warps});
                  };
                }
              }
            }
          }
          for (bool tiled : {false, true}) {
            paths[tiled ? "dequant+cublas-t" : "dequant+cublas"] = [&, tiled](int i) {
              const void* v = tiled ? tiles(i) : values(i);
              if (int4) {
                llava::cuda::int4_dequantize(static_cast<const uint8_t*>(v), scales(i),
                                             scratch.data_ptr(), s.n, s.k, tiled, false, stream);
              } else {
                llava::cuda::int8_dequantize(static_cast<const int8_t*>(v), scales(i),
                                             scratch.data_ptr(), s.n, s.k, tiled, false, stream);
              }
              at::mm_out(y, x, scratch.t());
            };
          }
        }
        for (auto& [path, call] : paths) {
          y.fill_(NAN);  // every element must be written
          call(0);
          const double error = (y.to(at::kFloat) - expected).abs().max().item<double>() / scale;
          const double us = time_us(20, call);
          const double gbs = static_cast<double>(w.bytes) / (us * 1e3);
          const double tflops = 2.0 * m * s.n * s.k / (us * 1e6);
          std::printf("%-8s %-5s %5d %-15s %10.2f %9.0f %9.1f %10.2e\n", s.name, kind_name.c_str(), m, path.c_str(), us, gbs,
                      tflops, error);
          if (json != nullptr) {
            std::fprintf(json, "{\"shape\":\"%s\",\"n\":%d,\"k\":%d,\"kind\":\"%s\",\"rows\":%d,\"path\":\"%s\",\"us\":%.3f,\"gbs\":%.1f,\"tflops\":%.2f,\"error\":%.3e}\n",
                         s.name, s.n, s.k, kind_name.c_str(), m, path.c_str(), us, gbs, tflops, error);
          }
          sums[kind_name][m][path] += us;
        }
      }
    }
  }
  std::printf("\nper decoder layer (qkv + o + gate_up + down), µs\n");
  for (auto& [kind, by_rows] : sums) {
    for (auto& [m, by_path] : by_rows) {
      std::printf("%-5s %5d", kind.c_str(), m);
      for (auto& [path, us] : by_path) std::printf("  %s %.1f", path.c_str(), us);
      std::printf("\n");
    }
  }
  if (json != nullptr) std::fclose(json);
  return 0;
}
