#!/usr/bin/env bash
# Issue 21's report in one lease, on the GPU machine: every figure the issue names, before
# (another revision's whole tree; the issue was filed at f0f2442) and after (this tree), on
# the random LLaVA-1.5-7B-shaped checkpoint, float16 / int8 / int4:
#   git archive f0f2442 | gzip > old-tree.tgz        # where git is (tests/data may be left out)
#   bash tests/perf/report_21_7b.sh old-tree.tgz WORK_DIR [ROUNDS]
# In order: the card and its device-to-device copy bandwidth (the ceiling the float16
# batch-1 target is 80% of); both builds (native architecture), the GPU suites of this tree
# while the old one builds; check_7b.py (parity with transformers) of both builds against one
# reference (it writes the checkpoint); ROUNDS (default 2) rounds of quantized_7b.py (in
# process: prefill, decode at batch 1 / 8 / 32, int8 / int4 against float16), before then
# after; `llava-pipe bench` through the pipeline (decode at 1 / 8 / 32, time to first token
# over 20 runs), before then after; ncu's per-kernel sums of one batch-1 float16 decode step
# of each build, and of one int8 step of this one. A line per measurement on stdout, logs in
# WORK_DIR. Later rounds are skipped once the lease's first LATE_S seconds (default 330) are
# gone, so that the call ends inside the device tool's 10 minutes.
set -uo pipefail
old_tree="$(realpath "$1")"; work="$(mkdir -p "$2" && realpath "$2")"; rounds="${3:-2}"
late="${LATE_S:-330}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
case "$work/" in "$root"/*) echo "report_21_7b.sh: WORK_DIR must be outside the tree" >&2; exit 2 ;; esac
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*"; }
in_time() { [ $(( $(date +%s) - start )) -lt "$late" ]; }

say "card: $(nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader)"
python3 - <<'PY'
import torch
n = 4 << 30
x = torch.empty(n, dtype=torch.uint8, device="cuda")
y = torch.empty_like(x)
for _ in range(3):
    y.copy_(x)
begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
begin.record()
for _ in range(20):
    y.copy_(x)
end.record()
torch.cuda.synchronize()
seconds = begin.elapsed_time(end) / 20 / 1e3
rate = 2 * n / seconds
weights = 13477879808  # the 7B's float16 weights on the device (quantized_7b.py's device_weight_bytes)
print(f"copy bandwidth {rate / 1e12:.3f} TB/s (4 GiB device to device, read + write, mean of 20); "
      f"80% of it over the float16 weights: {0.8 * rate / weights:.1f} tokens/s at batch 1")
PY

rm -rf "$work/old" && mkdir -p "$work/old" && tar -xzf "$old_tree" -C "$work/old"
[ -d "$work/old/tests/data" ] || cp -r tests/data "$work/old/tests/data"
configure() { cmake -G Ninja -S "$1" -B "$2" -DCMAKE_BUILD_TYPE=Release -DLLAVA_PIPE_CUDA_ARCHS=native; }
( configure . build-gpu && ninja -C build-gpu llava-pipe llava-stage stages_tests llava_logits decode_profile ) \
  > "$work/build.txt" 2>&1 || { tail -60 "$work/build.txt"; exit 1; }
say "built after"
( configure "$work/old" "$work/old/build" && ninja -C "$work/old/build" llava-pipe llava-stage llava_logits decode_profile ) \
  > "$work/build-old.txt" 2>&1 &
old_build=$!
build-gpu/tests/stages/stages_tests \
  --gtest_filter='FusedKernels.*:PrefillAttention.*:CausalAttention.*:DecodeStep.*:QuantizedLinear.*:QuantGemm.*:QuantLayout.*:Parity.*:Consistency.*:ShapesParity.*:ShapesQuantized.*:QuantizedDecoder.*:Generator.*:Sampler.*' \
  > "$work/tests.txt" 2>&1
say "GPU suites rc=$?: $(grep -E '^\[  PASSED  \]|tests? FAILED' "$work/tests.txt" | tr '\n' ' ')"
grep -E "^\[  FAILED  \]" "$work/tests.txt" | head -20
wait "$old_build" || { tail -40 "$work/build-old.txt"; exit 1; }
say "built before"

timeout 200 python3 tests/gpu/check_7b.py "$work" "$work/old/build/tests/llava_logits" build-gpu/tests/llava_logits \
  > "$work/check_7b.txt" 2>&1
say "check_7b rc=$?"
python3 tests/perf/report_lines.py check_7b "$work/check_7b.txt"

quantized() {  # label, llava_logits
  timeout 150 python3 tests/gpu/quantized_7b.py "$work" "$2" 7b none int8 int4 > "$work/quantized-$1.txt" 2>&1
  python3 tests/perf/report_lines.py quantized "$1" "$work/quantized-$1.txt"
}
source tests/perf/config_7b.sh
bench_config_7b "$work/bench.yaml" "$work/llava-7b-random" report
bench() {  # label, build folder
  timeout 120 "$2/llava-pipe" bench "$work/bench.yaml" --image tests/data/images/img01_320x240_RGB.jpg \
    --batches 1,8,32 --ttft-runs 20 --vision-batch 8 --new-tokens 64 --json "$work/bench-$1.json" \
    > "$work/bench-$1.txt" 2>&1
  python3 tests/perf/report_lines.py bench "$1" "$work/bench-$1.json"
}
ncu_step() {  # label, build folder, quantization
  LLAVA_PIPE_PROFILE=1 timeout 150 ncu --profile-from-start off --metrics gpu__time_duration.sum --csv \
    "$2/tests/decode_profile" cuda:0 680 "$work/llava-7b-random" "$3" > "$work/ncu-$1.csv" 2> "$work/ncu-$1.err"
  echo "== ncu, $1: one batch-1 decode step ($3), context 680"
  python3 tests/perf/ncu_summary.py "$work/ncu-$1.csv" ArgMax 1 2>&1 | head -18
}

for round in $(seq 1 "$rounds"); do
  [ "$round" = 1 ] || in_time || { say "round $round skipped (time)"; break; }
  quantized "before$round" "$work/old/build/tests/llava_logits"
  quantized "after$round" build-gpu/tests/llava_logits
  say "quantized round $round"
done
bench before "$work/old/build"
bench after build-gpu
say "bench"
ncu_step before-f16 "$work/old/build" none
ncu_step after-f16 build-gpu none
say "ncu float16"
in_time && ncu_step after-int8 build-gpu int8
say finished
