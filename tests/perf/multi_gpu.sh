#!/usr/bin/env bash
# Issue 8's runs on a machine with 2 GPUs (nvidia-h200-x2), random LLaVA-1.5-7B-shaped
# checkpoint, REQUESTS requests of one image and NEW_TOKENS new tokens each:
#   one-gpu  both stages on cuda:0 (concurrent, shared)
#   two-gpu  vision on cuda:0, language on cuda:1 (configs/two-gpu.yaml's placement)
#   kill     vision cuda:0, language replicas on cuda:1 and cuda:0; language-0 is killed
#            (SIGKILL) once a quarter of the requests are done
# NVML memory per device sampled every 100 ms. One JSON line per run; each run's
# text is compared, request by request, with the first run's.
#   bash tests/perf/multi_gpu.sh BUILD_DIR WORK_DIR [REQUESTS] [NEW_TOKENS]
# Environment: ONE_GPU=1 remaps cuda:1 to cuda:0 (the same processes on a one-GPU machine);
# CHECKPOINT=DIR uses that checkpoint instead of writing the 7B one; DTYPE (float16);
# RUNS ("one-gpu two-gpu kill"); WORK_DELAY_MS slows every worker step (fault injection),
# so that the kill lands mid-run on a small model.
set -uo pipefail
build="$1"; work="$2"; requests="${3:-256}"; new_tokens="${4:-128}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$work"
ckpt="${CHECKPOINT:-$work/llava-7b-random}"
[ -f "$ckpt/config.json" ] || python3 "$root/tests/gpu/make_7b.py" "$ckpt" > /dev/null 2>&1
[ -n "${WORK_DELAY_MS:-}" ] && export LLAVA_PIPE_FAULT_WORK_DELAY_MS="$WORK_DELAY_MS"
python3 "$root/tests/perf/make_requests.py" "$work/requests.jsonl" "$requests" "$new_tokens"
common="model: {checkpoint: $ckpt, dtype: ${DTYPE:-float16}}
coordinator: {endpoint: 'ipc://@llava-multi-{pid}', heartbeat_interval: 500ms, liveness: 20, embedding_memory: 8GiB}
generation: {max_new_tokens: $new_tokens}"
cat > "$work/one-gpu.yaml" <<YAML
mode: concurrent
share_devices: true
$common
stages:
  vision: {devices: [cuda:0], batch_size: 32}
  language: {devices: [cuda:0], batch_size: 64, max_context: 1024}
YAML
cat > "$work/two-gpu.yaml" <<YAML
mode: concurrent
$common
stages:
  vision: {devices: [cuda:0], batch_size: 32}
  language: {devices: [cuda:1], batch_size: 64, max_context: 1024}
YAML
cat > "$work/kill.yaml" <<YAML
mode: concurrent
share_devices: true
$common
stages:
  vision: {devices: [cuda:0], batch_size: 32}
  language: {replicas: 2, devices: [cuda:1, cuda:0], batch_size: 64, max_context: 1024}
YAML
[ "${ONE_GPU:-0}" = 1 ] && sed -i 's/\[cuda:1, cuda:0\]/[cuda:0]/; s/cuda:1/cuda:0/g' "$work"/*.yaml
runs=(${RUNS:-one-gpu two-gpu kill})
for run in "${runs[@]}"; do
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 100 > "$work/$run.memory.csv" &
  sampler=$!
  start=$(date +%s.%N)
  "$build/llava-pipe" run "$work/$run.yaml" --requests "$work/requests.jsonl" \
      --output "$work/$run.out.jsonl" --verbose 2> "$work/$run.log" &
  pipe=$!
  if [ "$run" = kill ]; then
    quarter=$((requests / 4))
    while kill -0 $pipe 2>/dev/null; do
      done_now=$(grep -o '^[0-9]*/' "$work/$run.log" | tail -n 1 | tr -d /)
      if [ -n "$done_now" ] && [ "$done_now" -ge "$quarter" ]; then
        pkill -9 -f -- "--stage language --replica 0" && echo "killed language-0 at $done_now done" > "$work/$run.killed"
        break
      fi
      sleep 0.1
    done
  fi
  wait $pipe; code=$?
  end=$(date +%s.%N)
  kill $sampler; wait $sampler 2>/dev/null
  python3 - "$work" "$run" "$start" "$end" "$code" "${runs[0]}" <<'PY'
import json, sys
work, run, start, end, code = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
first = sys.argv[6]
peak = {}
for line in open(f"{work}/{run}.memory.csv"):
    parts = [p.strip() for p in line.split(",")]
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
        peak["cuda:" + parts[0]] = max(peak.get("cuda:" + parts[0], 0), int(parts[1]))
try:
    results = [json.loads(l) for l in open(f"{work}/{run}.out.jsonl")]
except FileNotFoundError:
    results = []
ok = [r for r in results if r.get("ok")]
ids = [r.get("id") for r in results]
tokens = sum(r["generated_tokens"] for r in ok)
import os
killed = open(f"{work}/{run}.killed").read().strip() if os.path.exists(f"{work}/{run}.killed") else ""
died = [l.strip() for l in open(f"{work}/{run}.log") if " died " in l]
table = [l.rstrip() for l in open(f"{work}/{run}.log") if l.startswith(("vision-", "language-")) and "cuda:" in l and " s]" not in l]
baseline = {}
if run != first and os.path.exists(f"{work}/{first}.out.jsonl"):
    baseline = {r["id"]: r.get("text") for r in map(json.loads, open(f"{work}/{first}.out.jsonl")) if r.get("ok")}
same = sum(1 for r in ok if baseline.get(r["id"]) == r.get("text")) if baseline else None
print(json.dumps({"run": run, "exit_code": code, "requests": len(results), "ok": len(ok),
                  "duplicate_ids": len(ids) - len(set(ids)), "same_text_as_" + first: same,
                  "seconds": round(end - start, 2),
                  "requests_per_s": round(len(results) / (end - start), 3),
                  "tokens_per_s": round(tokens / (end - start), 1), "nvml_peak_mib": peak,
                  "killed": killed, "died": died, "stages": table,
                  "errors": [r.get("error") for r in results if not r.get("ok")][:3]}), flush=True)
PY
done
