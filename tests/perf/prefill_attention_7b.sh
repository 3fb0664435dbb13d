#!/usr/bin/env bash
# Our prefill attention (stages/language/prefill_attention.cu) against LibTorch's flash
# kernel (LLAVA_PIPE_PREFILL_ATTENTION=sdpa) on the random 7B, one build, on the GPU machine:
# prefill_attention_check.py (bit for bit at many shapes; µs a call), check_7b.py with both
# against one transformers reference (their figures must be the same), ROUNDS rounds
# (default 3) of llava_logits' float16 prefill with each in turn, and ncu's per-kernel sums
# of one 641-token prompt forward with each.
#   bash tests/perf/prefill_attention_7b.sh WORK_DIR [ROUNDS]
# Needs build-gpu (llava_logits, decode_profile) and nvcc.
set -uo pipefail
work="$(mkdir -p "$1" && realpath "$1")"; rounds="${2:-3}"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root="$(pwd)"
source tests/perf/config_7b.sh
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*"; }
nvcc -O3 -std=c++17 -arch=sm_90 -shared -Xcompiler -fPIC -I. tests/perf/prefill_attention_check.cu \
    -o "$work/prefill_attention_check.so" &&
  python3 tests/perf/prefill_attention_check.py "$work/prefill_attention_check.so" \
    --json "$work/prefill_attention_check.json" > "$work/prefill_attention_check.txt" 2>&1
say "prefill_attention_check rc=$?"; tail -9 "$work/prefill_attention_check.txt"
# The same build with LibTorch's kernel, as a second llava_logits for check_7b.py.
printf '#!/usr/bin/env bash\nLLAVA_PIPE_PREFILL_ATTENTION=sdpa exec %s "$@"\n' "$root/build-gpu/tests/llava_logits" \
  > "$work/llava_logits_sdpa"
chmod +x "$work/llava_logits_sdpa"
python3 tests/gpu/check_7b.py "$work" build-gpu/tests/llava_logits "$work/llava_logits_sdpa" \
  > "$work/check_7b.json" 2> "$work/check_7b.err"
say "check_7b rc=$?"; tail -c 2500 "$work/check_7b.json"; echo
[ -f "$work/quant-inputs.safetensors" ] ||
  python3 tests/gpu/quantized_7b.py "$work" build-gpu/tests/llava_logits 7b none > "$work/q-inputs.txt" 2>&1
say "inputs rc=$?"
for round in $(seq 1 "$rounds"); do
  prefill_7b "$work" ours LLAVA_PIPE_PREFILL_ATTENTION=ours
  prefill_7b "$work" sdpa LLAVA_PIPE_PREFILL_ATTENTION=sdpa
done
say prefill
for variant in ours sdpa; do
  ncu_prefill_7b "$work" $variant LLAVA_PIPE_PREFILL_ATTENTION=$variant
done
say done
