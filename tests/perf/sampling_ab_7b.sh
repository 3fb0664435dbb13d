#!/usr/bin/env bash
# Sampled decoding through the pipeline, before and after, in one lease on the GPU machine:
# `llava-pipe bench` greedy and with --temperature 0.7 (both --ignore-eos, so every request
# runs to 64 tokens) on this tree and on another revision's whole tree, then the logprobs
# check against transformers (tests/gpu/logprobs_7b.py) on this tree. Random
# LLaVA-1.5-7B-shaped checkpoint, float16, both stages on cuda:0.
#   git archive REV | gzip > old-tree.tgz                # where git is (tests/data may be left out)
#   bash tests/perf/sampling_ab_7b.sh old-tree.tgz WORK_DIR [GTEST_FILTER]
# Builds build-gpu here and WORK_DIR/old/build there (CMake must find LibTorch and the
# packages, as for any GPU build). Logs go to WORK_DIR; a line per bench run on stdout.
set -uo pipefail
old_tree="$(realpath "$1")"; work="$(mkdir -p "$2" && realpath "$2")"
filter="${3:-Sampler*:Generator*:DecodeStep.*:FusedKernels.*:QuantGemm.*:Parity*:Consistency*}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*"; }

rm -rf "$work/old" && mkdir -p "$work/old" && tar -xzf "$old_tree" -C "$work/old"
[ -d "$work/old/tests/data" ] || cp -r tests/data "$work/old/tests/data"
cmake -G Ninja -B build-gpu -DCMAKE_BUILD_TYPE=Release > "$work/build.txt" 2>&1
ninja -C build-gpu llava-pipe llava-stage stages_tests >> "$work/build.txt" 2>&1 || { tail -60 "$work/build.txt"; exit 1; }
say "built after"
( cmake -G Ninja -S "$work/old" -B "$work/old/build" -DCMAKE_BUILD_TYPE=Release &&
  ninja -C "$work/old/build" llava-pipe llava-stage ) > "$work/build-old.txt" 2>&1 &
old_build=$!
( [ -f "$work/llava-7b-random/config.json" ] ||
  python3 tests/gpu/make_7b.py "$work/llava-7b-random" ) > "$work/make_7b.txt" 2>&1 &
checkpoint=$!
build-gpu/tests/stages/stages_tests --gtest_filter="$filter" > "$work/tests.txt" 2>&1
say "GPU suites rc=$?"; tail -3 "$work/tests.txt"; grep -E "FAILED|Failure" -A6 "$work/tests.txt" | head -30
wait "$checkpoint" || { tail -20 "$work/make_7b.txt"; exit 1; }
say checkpoint
wait "$old_build" || { tail -40 "$work/build-old.txt"; exit 1; }
say "built before"

source tests/perf/config_7b.sh
bench_config_7b "$work/bench.yaml" "$work/llava-7b-random" sampling
bench() {  # label build flags...
  local label=$1 build=$2; shift 2
  timeout 240 "$build/llava-pipe" bench "$work/bench.yaml" --image tests/data/images/img01_320x240_RGB.jpg \
    --batches 1,8,32 --ttft-runs 3 --vision-batch 8 --new-tokens 64 --ignore-eos --json "$work/bench-$label.json" "$@" \
    > "$work/bench-$label.txt" 2>&1
  python3 tests/perf/report_lines.py bench "$label" "$work/bench-$label.json"
}
round_of_benches() {
  bench "before-greedy$1" "$work/old/build"
  bench "after-greedy$1" build-gpu
  bench "before-t07-$1" "$work/old/build" --temperature 0.7
  bench "after-t07-$1" build-gpu --temperature 0.7
  say "round $1"
}
round_of_benches 1
timeout 300 python3 tests/gpu/logprobs_7b.py "$work" build-gpu > "$work/logprobs.txt" 2>&1
say "logprobs_7b rc=$?"; tail -30 "$work/logprobs.txt"
# A second round while the lease's first 7 minutes last (a device call may run 10).
[ $(( $(date +%s) - start )) -lt "${SECOND_ROUND_BEFORE_S:-420}" ] && round_of_benches 2
say finished
