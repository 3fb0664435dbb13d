#!/usr/bin/env bash
# DEVELOPMENT MACHINE ONLY (tests/gpu/README.md). The kernels an older GPU runs, run on a
# newer one: builds PTX only for each architecture named (default 75 = T4 and 89 = L4;
# the driver JIT-compiles it at load, so an H100 runs the very code those GPUs would), in
# parallel, then on each build the GPU suites of stages_tests (session_check.sh's filter), check_7b.py (parity with transformers
# on the random 7B; one reference for all builds) and quantized_7b.py (float16 / int8 / int4
# decode and their error against float16). Logs in OUT; a line per step on stdout.
#   bash tests/gpu/ptx_check.sh WORK OUT [ARCH...]
set -uo pipefail
work="$(mkdir -p "$1" && realpath "$1")"; out="$(mkdir -p "$2" && realpath "$2")"; shift 2
if [ $# -gt 0 ]; then archs=("$@"); else archs=(75 89); fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*"; }

for a in "${archs[@]}"; do
  ( cmake -G Ninja -B "build-ptx$a" -DCMAKE_BUILD_TYPE=Release -DLLAVA_PIPE_CUDA_ARCHS="$a-virtual" &&
    ninja -C "build-ptx$a" stages_tests llava_logits ) > "$out/build-ptx$a.txt" 2>&1 &
done
wait
gpu_suites="$(grep -o "gtest_filter='[^']*'" tests/gpu/session_check.sh | head -1 | cut -d"'" -f2)"
tools=()
for a in "${archs[@]}"; do
  [ -x "build-ptx$a/tests/llava_logits" ] || { say "ptx$a: build failed"; tail -30 "$out/build-ptx$a.txt"; continue; }
  say "ptx$a built ($(grep -c 'warning' "$out/build-ptx$a.txt") compiler warnings); kernels: $(cuobjdump --list-ptx --list-elf build-ptx$a/stages/libllava_cuda_kernels.a 2>&1 |
    grep -oE '(sm|compute)_[0-9]+a?\.(ptx|cubin)' | sort | uniq -c | tr '\n' ' ')"
  timeout 200 build-ptx$a/tests/stages/stages_tests --gtest_filter="$gpu_suites" > "$out/stages_tests-ptx$a.txt" 2>&1
  say "ptx$a stages_tests rc=$?: $(grep -E '^\[  (PASSED|SKIPPED|FAILED)  \] [0-9]' "$out/stages_tests-ptx$a.txt" | tr '\n' ' ')"
  grep -E '^\[  (FAILED|SKIPPED)  \] [A-Z]' "$out/stages_tests-ptx$a.txt" | head -20
  tools+=("build-ptx$a/tests/llava_logits")
done
[ ${#tools[@]} -gt 0 ] || exit 1
timeout 240 python3 tests/gpu/check_7b.py "$work" "${tools[@]}" > "$out/check_7b-ptx.json" 2>&1
say "check_7b rc=$?"
python3 tests/perf/report_lines.py check_7b "$out/check_7b-ptx.json"
for a in "${archs[@]}"; do
  [ -x "build-ptx$a/tests/llava_logits" ] || continue
  timeout 150 python3 tests/gpu/quantized_7b.py "$work" "build-ptx$a/tests/llava_logits" 7b none int8 int4 \
    > "$out/quantized-ptx$a.txt" 2>&1
  python3 tests/perf/report_lines.py quantized "ptx$a" "$out/quantized-ptx$a.txt"
  say "ptx$a quantized"
done
