#!/usr/bin/env bash
# Before and after in one lease, on the GPU machine: this tree (after) against the same tree
# with stages/ taken from an archive of another revision (before), on the random
# LLaVA-1.5-7B-shaped checkpoint. How rounds 4-6 of issue 21 were measured
# (tests/perf/README.md, "Speed, round 6").
#   git archive REV stages | gzip > old-stages.tgz        # where git is
#   bash tests/perf/ab_7b.sh old-stages.tgz WORK_DIR [ROUNDS] [GTEST_FILTER]
# Builds both (build-gpu here, WORK_DIR/old/build there; CMake must find LibTorch and the
# packages, as for any GPU build), runs the GPU suites on this tree, then ROUNDS (default 2)
# rounds of tests/gpu/quantized_7b.py (float16, int8, int4), before then after, and ncu's
# per-kernel sums of one batch-1 int8 decode step of each. Prints a line per run: prefill
# of the language model alone and with the vision tower, decode at batch 1 / 8 / 32
# (tokens/s), and for int8 / int4 the error and top-1 agreement against float16.
set -euo pipefail
old_stages="$(realpath "$1")"; work="$(mkdir -p "$2" && realpath "$2")"; rounds="${3:-2}"
filter="${4:-QuantGemm.*:FusedKernels.*:Generator*:DecodeStep.*:Quant*:Linear*:Parity*:Consistency*:LayerStreaming.*:WeightOffload.*}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
case "$work/" in "$root"/*) echo "ab_7b.sh: WORK_DIR must be outside the tree (it copies the tree there)" >&2; exit 2 ;; esac
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*"; }

# The before tree: this one (no build folders) with the archive's stages/.
rm -rf "$work/old" && mkdir -p "$work/old"
tar -cf - --exclude=./.git --exclude=./build --exclude=./build-gpu --exclude=./.gpu-deps --exclude=./node_modules . |
  tar -C "$work/old" -xf -
rm -rf "$work/old/stages" && tar -xzf "$old_stages" -C "$work/old"

targets=(stages_tests llava_logits decode_profile)
cmake -G Ninja -B build-gpu -DCMAKE_BUILD_TYPE=Release > "$work/build.txt" 2>&1
ninja -C build-gpu "${targets[@]}" >> "$work/build.txt" 2>&1 || { tail -60 "$work/build.txt"; exit 1; }
say "built after"
# The before build and the checkpoint while the suites run.
( cmake -G Ninja -S "$work/old" -B "$work/old/build" -DCMAKE_BUILD_TYPE=Release &&
  ninja -C "$work/old/build" llava_logits decode_profile ) > "$work/build-old.txt" 2>&1 &
old_build=$!
( [ -f "$work/llava-7b-random/config.json" ] ||
  python3 tests/gpu/make_7b.py "$work/llava-7b-random" ) > "$work/make_7b.txt" 2>&1 &
checkpoint=$!
build-gpu/tests/stages/stages_tests --gtest_filter="$filter" > "$work/tests.txt" 2>&1 || true
tail -3 "$work/tests.txt"; grep -E "FAILED|Failure" "$work/tests.txt" | head -20 || true
say "GPU suites"
wait "$old_build" || { tail -40 "$work/build-old.txt"; exit 1; }
say "built before"
wait "$checkpoint" || { tail -20 "$work/make_7b.txt"; exit 1; }
say "checkpoint"

quantized() {  # label, llava_logits
  python3 tests/gpu/quantized_7b.py "$work" "$2" 7b none int8 int4 > "$work/quantized-$1.txt" 2>&1 || true
  python3 tests/perf/report_lines.py quantized "$1" "$work/quantized-$1.txt"
}
for round in $(seq 1 "$rounds"); do
  quantized "before$round" "$work/old/build/tests/llava_logits"
  quantized "after$round" build-gpu/tests/llava_logits
  say "round $round"
done
for side in after before; do
  tool=build-gpu/tests/decode_profile
  [ "$side" = before ] && tool="$work/old/build/tests/decode_profile"
  LLAVA_PIPE_PROFILE=1 timeout 180 ncu --profile-from-start off --metrics gpu__time_duration.sum --csv \
    "$tool" cuda:0 680 "$work/llava-7b-random" int8 > "$work/ncu-$side.csv" 2> "$work/ncu-$side.err" || true
  echo "== ncu, $side, one batch-1 int8 decode step"
  python3 tests/perf/ncu_summary.py "$work/ncu-$side.csv" ArgMax 1 2>&1 | head -20
done
say finished
