#!/usr/bin/env bash
# Float16 prefill of the random 7B against LibTorch's BLAS settings, on the GPU machine
# (issue 21's 45,000 tokens/s; tests/perf/README.md, "Speed, round 11"): ncu has the
# prompt's down projection (641 x 4096 x 11008) at ~583 TFLOP/s in process against the
# ~668 that cuBLASLt's best algorithm reached in gemm_algos (32 MiB of workspace).
#   bash tests/perf/prefill_blas_7b.sh WORK_DIR [ROUNDS]
# Needs build-gpu's llava_logits and decode_profile (tests/perf/layout_ab_7b.sh builds
# them). Times every cuBLASLt algorithm at the decoder's prompt shapes (gemm_algos
# --decoder 641), then ROUNDS (default 2) rounds of llava_logits' language prefill with
# LibTorch's default, with cuBLASLt preferred (TORCH_BLAS_PREFER_CUBLASLT=1), and with
# larger cuBLAS / cuBLASLt workspaces; then ncu's per-kernel sums of one prompt forward for
# the default and for cuBLASLt.
set -uo pipefail
work="$(mkdir -p "$1" && realpath "$1")"; rounds="${2:-2}"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*"; }
source tests/perf/config_7b.sh
checkpoint="$work/llava-7b-random"
[ -f "$checkpoint/config.json" ] || python3 tests/gpu/make_7b.py "$checkpoint" > "$work/make_7b.txt" 2>&1
[ -f "$work/quant-inputs.safetensors" ] ||
  python3 tests/gpu/quantized_7b.py "$work" build-gpu/tests/llava_logits 7b none > "$work/q-inputs.txt" 2>&1
nvcc -O2 -std=c++17 -arch=sm_90 tests/perf/gemm_algos.cu -lcublasLt -o "$work/gemm_algos" &&
  "$work/gemm_algos" --decoder 641 > "$work/gemm_algos.txt" 2>&1
say "gemm_algos rc=$?"; tail -30 "$work/gemm_algos.txt"
for round in $(seq 1 "$rounds"); do
  prefill_7b "$work" default
  prefill_7b "$work" cublaslt TORCH_BLAS_PREFER_CUBLASLT=1
  prefill_7b "$work" cublas-ws32MiB CUBLAS_WORKSPACE_CONFIG=:32768:2
  prefill_7b "$work" cublaslt-ws32MiB TORCH_BLAS_PREFER_CUBLASLT=1 CUBLASLT_WORKSPACE_SIZE=32768
done
say prefill
ncu_prefill_7b "$work" default
ncu_prefill_7b "$work" cublaslt TORCH_BLAS_PREFER_CUBLASLT=1
say done
