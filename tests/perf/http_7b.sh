#!/usr/bin/env bash
# HTTP against the Coordinator API on the random LLaVA-1.5-7B-shaped checkpoint (GPU
# machine): `llava-pipe bench`'s time to first token and 64-request throughput, then the
# same over HTTP (`serve --http`, tests/http/bench.py: 20 streamed one-token requests, then
# 64 concurrent streaming clients x 64 tokens). Same config for both, embedding cache off
# (every request encodes its image, as bench does).
#   bash tests/perf/http_7b.sh BUILD_DIR WORK_DIR OUT_DIR
set -euo pipefail
build="$1"; work="$2"; out="$3"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$work" "$out"
ckpt="$work/llava-7b-random"
[ -f "$ckpt/config.json" ] || python3 "$root/tests/gpu/make_7b.py" "$ckpt"
image="$root/tests/data/images/img01_320x240_RGB.jpg"
cat > "$work/http.yaml" <<YAML
mode: concurrent
share_devices: true
model: {checkpoint: $ckpt, dtype: float16}
stages:
  vision: {devices: [cuda:0], memory_limit: 10GiB, batch_size: 32}
  language: {devices: [cuda:0], memory_limit: 60GiB, batch_size: 64, max_context: 1024}
coordinator: {endpoint: 'ipc://@llava-http-{pid}', heartbeat_interval: 500ms, liveness: 20, embedding_memory: 4GiB, embedding_cache: 0}
generation: {max_new_tokens: 64}
server: {max_connections: 128}
YAML
"$build/llava-pipe" bench "$work/http.yaml" --image "$image" --batches 1 --ttft-runs 20 \
    --throughput 64 --new-tokens 64 --json "$out/bench.json" 2>&1 | tail -20
"$build/llava-pipe" serve "$work/http.yaml" --http 127.0.0.1:8765 > "$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf http://127.0.0.1:8765/health >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$out/serve.log"; exit 1; }
  sleep 0.5
done
python3 "$root/tests/http/bench.py" http://127.0.0.1:8765 "$image" --runs 20 --clients 64 --tokens 64 | tee "$out/http.json"
curl -s http://127.0.0.1:8765/metrics > "$out/metrics.txt"
kill -TERM $server; wait $server || true
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
b, h = json.load(open(f"{out}/bench.json")), json.load(open(f"{out}/http.json"))
summary = {"ttft_ms_bench_median": b["ttft_ms"]["median"], "ttft_ms_http_median": h["ttft_ms"]["median"],
           "http_adds_ms": h["ttft_ms"]["median"] - b["ttft_ms"]["median"],
           "tokens_per_s_bench_64": b["throughput"]["tokens_per_s"],
           "tokens_per_s_http_64": h["throughput"]["tokens_per_s"],
           "http_over_bench": h["throughput"]["tokens_per_s"] / b["throughput"]["tokens_per_s"]}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(summary, indent=1))
PY
