#!/usr/bin/env bash
# The pipeline on a random LLaVA-1.5-7B-shaped checkpoint, on the GPU machine: sequential
# mode under a 22 GiB limit (the Colab L4 case), then concurrent mode with both stages
# sharing the one GPU; GPU memory sampled by nvidia-smi every 100 ms through each run.
#   bash tests/perf/pipeline_7b.sh BUILD_DIR WORK_DIR [REQUESTS] [NEW_TOKENS]
set -euo pipefail
build="$1"; work="$2"; requests="${3:-16}"; new_tokens="${4:-64}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$work"
ckpt="$work/llava-7b-random"
[ -f "$ckpt/config.json" ] || python3 "$root/tests/gpu/make_7b.py" "$ckpt"

# requests: one image each, cycling over the 20 test images
python3 "$root/tests/perf/make_requests.py" "$work/requests.jsonl" "$requests" "$new_tokens"

cat > "$work/sequential.yaml" <<YAML
mode: sequential
model: {checkpoint: $ckpt, dtype: float16}
stages:
  vision: {devices: [cuda:0], memory_limit: 22GiB, batch_size: 32, release: exit}
  language: {devices: [cuda:0], memory_limit: 22GiB, batch_size: 12, max_context: 1024}
device_memory: {cuda:0: 22GiB}
coordinator: {endpoint: 'ipc://@llava-7b-{pid}', heartbeat_interval: 500ms, liveness: 20, embedding_memory: 4GiB}
generation: {max_new_tokens: $new_tokens}
YAML
cat > "$work/shared.yaml" <<YAML
mode: concurrent
share_devices: true
model: {checkpoint: $ckpt, dtype: float16}
stages:
  vision: {devices: [cuda:0], memory_limit: 8GiB, batch_size: 32}
  language: {devices: [cuda:0], memory_limit: 40GiB, batch_size: 16, max_context: 1024}
coordinator: {endpoint: 'ipc://@llava-7b-{pid}', heartbeat_interval: 500ms, liveness: 20, embedding_memory: 4GiB}
generation: {max_new_tokens: $new_tokens}
YAML

for mode in sequential shared; do
  "$build/llava-pipe" check "$work/$mode.yaml" > "$work/$mode.check.txt" || true
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 100 > "$work/$mode.memory.csv" &
  sampler=$!
  start=$(date +%s.%N)
  "$build/llava-pipe" run "$work/$mode.yaml" --requests "$work/requests.jsonl" \
      --output "$work/$mode.out.jsonl" --verbose 2> "$work/$mode.log" || echo "run $mode failed: $?"
  end=$(date +%s.%N)
  kill $sampler; wait $sampler 2>/dev/null || true
  python3 - "$work" "$mode" "$start" "$end" <<'PY'
import json, sys
work, mode, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
used = [int(l.split(",")[1]) for l in open(f"{work}/{mode}.memory.csv") if "," in l]
results = [json.loads(l) for l in open(f"{work}/{mode}.out.jsonl")]
ok = [r for r in results if r.get("ok")]
tokens = sum(r["generated_tokens"] for r in ok)
summary = {"mode": mode, "requests": len(results), "ok": len(ok), "seconds": round(end - start, 2),
           "requests_per_s": round(len(results) / (end - start), 3),
           "tokens_per_s": round(tokens / (end - start), 1), "generated_tokens": tokens,
           "peak_gpu_mib_nvidia_smi": max(used) if used else None,
           "median_first_token_ms": sorted(r["timings_ms"]["first_token"] for r in ok)[len(ok) // 2] if ok else None,
           "errors": [r["error"] for r in results if not r.get("ok")][:3]}
print(json.dumps(summary))
PY
  tail -n 25 "$work/$mode.log"
done
