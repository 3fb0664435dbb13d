// How far cuBLASLt's first heuristic choice (what LibTorch runs) is from the fastest of
// the algorithms cuBLASLt offers, for the CLIP tower's and projector's GEMM shapes at a
// batch of images: y[M, N] = x[M, K] W[N, K]^T + bias (+ a residual with --residual),
// or for LLaVA-1.5-7B's decoder layer (no bias) at a prompt of TOKENS rows; float16 in and
// out, float32 accumulation. CUDA-event timed, median of 25.
//   nvcc -O2 -std=c++17 -arch=sm_90 tests/perf/gemm_algos.cu -lcublasLt -o gemm_algos
//   ./gemm_algos [BATCH]
//   ./gemm_algos --decoder [TOKENS]
#include <cublasLt.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#define CHECK(x)                                                                      \
  do {                                                                                \
    auto status = (x);                                                                \
    if (static_cast<int>(status) != 0) {                                              \
      std::fprintf(stderr, "%s:%d: %s -> %d\n", __FILE__, __LINE__, #x, (int)status); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

namespace {

__global__ void fill(__half* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    p[i] = __float2half((static_cast<int>(h % 2001) - 1000) * 0.0005f);
  }
}

struct Shape {
  const char* name;
  int m, n, k;  // rows of x, out features, in features
  bool residual;
  bool bias = true;
};

float median_ms(cublasLtHandle_t lt, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, const void* w, const void* x,
                void* y, const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_bytes,
                float beta, cudaEvent_t start, cudaEvent_t end) {
  const float alpha = 1.0f;
  std::vector<float> ms;
  for (int i = 0; i < 30; ++i) {
    cudaEventRecord(start);
    CHECK(cublasLtMatmul(lt, op, &alpha, w, a, x, b, &beta, y, c, y, c, algo, workspace,
                         workspace_bytes, 0));
    cudaEventRecord(end);
    cudaEventSynchronize(end);
    float t = 0;
    cudaEventElapsedTime(&t, start, end);
    if (i >= 5) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const bool decoder = argc > 1 && std::string(argv[1]) == "--decoder";
  const int batch = !decoder && argc > 1 ? std::atoi(argv[1]) : 32;
  const int tokens = decoder ? (argc > 2 ? std::atoi(argv[2]) : 641) : batch * 577, patches = batch * 576;
  const std::vector<Shape> shapes =
      decoder ? std::vector<Shape>{{"qkv", tokens, 12288, 4096, false, false},
                                   {"o", tokens, 4096, 4096, false, false},
                                   {"gate_up", tokens, 22016, 4096, false, false},
                                   {"down", tokens, 4096, 11008, false, false}}
              : std::vector<Shape>{{"qkv", tokens, 3072, 1024, false},         {"out_proj", tokens, 1024, 1024, false},
                                   {"out_proj+res", tokens, 1024, 1024, true}, {"fc1", tokens, 4096, 1024, false},
                                   {"fc2", tokens, 1024, 4096, false},         {"fc2+res", tokens, 1024, 4096, true},
                                   {"proj1", patches, 4096, 1024, false},      {"proj2", patches, 4096, 4096, false},
                                   {"patch", patches, 1024, 592, false}};
  size_t x_elements = 0, w_elements = 0, y_elements = 0;
  for (const Shape& s : shapes) {
    x_elements = std::max(x_elements, size_t(s.m) * s.k);
    w_elements = std::max(w_elements, size_t(s.n) * s.k);
    y_elements = std::max(y_elements, size_t(s.m) * s.n);
  }
  cublasLtHandle_t lt;
  CHECK(cublasLtCreate(&lt));
  const size_t workspace_bytes = 32u << 20;
  void* workspace = nullptr;
  CHECK(cudaMalloc(&workspace, workspace_bytes));
  __half *x, *w, *y, *bias;
  CHECK(cudaMalloc(&x, x_elements * 2));
  CHECK(cudaMalloc(&w, w_elements * 2));
  CHECK(cudaMalloc(&y, y_elements * 2));
  CHECK(cudaMalloc(&bias, 32768 * 2));
  fill<<<1024, 256>>>(x, x_elements, 1);
  fill<<<1024, 256>>>(w, w_elements, 2);
  fill<<<1024, 256>>>(bias, 32768, 3);
  cudaEvent_t start, end;
  cudaEventCreate(&start);
  cudaEventCreate(&end);
  if (decoder) {
    std::printf("decoder, %d tokens; TFLOP/s of cuBLASLt's first choice and of the fastest offered\n", tokens);
  } else {
    std::printf("batch %d; TFLOP/s of cuBLASLt's first choice and of the fastest offered\n", batch);
  }
  for (const Shape& s : shapes) {
    cublasLtMatmulDesc_t op;
    CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
    CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
    CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof(n)));
    const cublasLtEpilogue_t epilogue = s.bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                         sizeof(epilogue)));
    if (s.bias) {
      const void* bias_ptr = bias;
      CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr,
                                           sizeof(bias_ptr)));
    }
    // Column-major: y^T [N, M] = W [N, K] (stored [K, N], transposed) x^T [K, M].
    cublasLtMatrixLayout_t a, b, c;
    CHECK(cublasLtMatrixLayoutCreate(&a, CUDA_R_16F, s.k, s.n, s.k));
    CHECK(cublasLtMatrixLayoutCreate(&b, CUDA_R_16F, s.k, s.m, s.k));
    CHECK(cublasLtMatrixLayoutCreate(&c, CUDA_R_16F, s.n, s.m, s.n));
    cublasLtMatmulPreference_t pref;
    CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                               &workspace_bytes, sizeof(workspace_bytes)));
    cublasLtMatmulHeuristicResult_t results[32];
    int found = 0;
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt, op, a, b, c, c, pref, 32, results, &found));
    const double flops = 2.0 * s.m * s.n * s.k;
    const float beta = s.residual ? 1.0f : 0.0f;
    float first = 0, best = 1e9;
    int best_index = -1;
    for (int i = 0; i < found; ++i) {
      if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
      const float ms = median_ms(lt, op, a, b, c, w, x, y, &results[i].algo, workspace,
                                 workspace_bytes, beta, start, end);
      if (i == 0) first = ms;
      if (ms < best) best = ms, best_index = i;
    }
    std::printf(
        "%-13s M=%-6d N=%-5d K=%-5d %2d algos  first %8.1f us %6.1f TFLOP/s  best #%-2d %8.1f us "
        "%6.1f TFLOP/s\n",
        s.name, s.m, s.n, s.k, found, first * 1e3, flops / first / 1e9, best_index, best * 1e3,
        flops / best / 1e9);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(a);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(c);
    cublasLtMatmulDescDestroy(op);
  }
  return 0;
}
