#!/usr/bin/env bash
# Quantized values in tiles (quant_layout.h, the default where the tensor-core product runs)
# against rows (LLAVA_PIPE_QUANT_LAYOUT=rows), one build, in one lease on the GPU machine,
# on the random LLaVA-1.5-7B-shaped checkpoint (tests/perf/README.md, "Speed, round 11").
#   bash tests/perf/layout_ab_7b.sh WORK_DIR [ROUNDS]
# Builds build-gpu (CMake must find LibTorch and the packages, as for any GPU build), runs
# the GPU suites that reach the quantized products, linear_bench up to 8 rows (paths named
# ...t read tiles), ROUNDS (default 2) rounds of tests/gpu/quantized_7b.py a layout
# (float16 in the first and last), and ncu's per-kernel sums of one batch-1 decode step,
# int8 and int4, in each layout. Logs go to WORK_DIR.
set -uo pipefail
work="$(mkdir -p "$1" && realpath "$1")"; rounds="${2:-2}"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*"; }
( [ -f "$work/llava-7b-random/config.json" ] ||
  python3 tests/gpu/make_7b.py "$work/llava-7b-random" ) > "$work/make_7b.txt" 2>&1 &
checkpoint=$!
[ -f build-gpu/build.ninja ] || cmake -G Ninja -B build-gpu -DCMAKE_BUILD_TYPE=Release > "$work/build.txt" 2>&1
ninja -C build-gpu stages_tests linear_bench llava_logits decode_profile >> "$work/build.txt" 2>&1 ||
  { tail -60 "$work/build.txt"; exit 1; }
say built
build-gpu/tests/stages/stages_tests \
  --gtest_filter='Quant*:Linear*:FusedKernels.*:DecodeStep.*:Generator*:LayerStreaming.*:WeightOffload.*:ShapesQuantized.*:Parity*:Consistency*' \
  > "$work/tests.txt" 2>&1
say "GPU suites rc=$?"; tail -3 "$work/tests.txt"; grep -E "FAILED|Failure" -A6 "$work/tests.txt" | head -40
build-gpu/tests/linear_bench "$work/linear_bench.json" 8 > "$work/linear_bench.txt" 2>&1
say "linear_bench rc=$?"; sed -n '/per decoder layer/,$p' "$work/linear_bench.txt"
wait $checkpoint; say "checkpoint ready"
quantized() {  # label layout runs...
  local label=$1 layout=$2; shift 2
  LLAVA_PIPE_QUANT_LAYOUT=$layout python3 tests/gpu/quantized_7b.py "$work" build-gpu/tests/llava_logits 7b "$@" \
    > "$work/q-$label.txt" 2>&1
  python3 tests/perf/report_lines.py quantized "$label" "$work/q-$label.txt"
  say "quantized_7b $label"
}
for round in $(seq 1 "$rounds"); do
  first=(); last=()
  [ "$round" = 1 ] && first=(none)
  [ "$round" = "$rounds" ] && last=(none)
  quantized "tiles$round" tiles "${first[@]}" int8 int4
  quantized "rows$round" rows "${last[@]}" int8 int4
done
for kind in int8 int4; do
  for layout in tiles rows; do
    LLAVA_PIPE_QUANT_LAYOUT=$layout LLAVA_PIPE_PROFILE=1 ncu --profile-from-start off --metrics gpu__time_duration.sum \
      --csv build-gpu/tests/decode_profile cuda:0 680 "$work/llava-7b-random" $kind \
      > "$work/ncu-$kind-$layout.csv" 2> "$work/ncu-$kind-$layout.err"
    echo "== $kind, $layout: one batch-1 decode step"
    python3 tests/perf/ncu_summary.py "$work/ncu-$kind-$layout.csv" ArgMax 1 | head -14
  done
done
say done
