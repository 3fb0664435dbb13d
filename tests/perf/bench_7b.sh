#!/usr/bin/env bash
# `llava-pipe bench` against transformers on the random LLaVA-1.5-7B-shaped checkpoint, on
# the GPU machine: concurrent mode, both stages sharing cuda:0.
#   bash tests/perf/bench_7b.sh BUILD_DIR WORK_DIR
# SHARED_MEMORY=0 sends the embeddings through the socket (the default config: shared memory).
set -euo pipefail
build="$1"; work="$2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$work"
ckpt="$work/llava-7b-random"
[ -f "$ckpt/config.json" ] || python3 "$root/tests/gpu/make_7b.py" "$ckpt"
cat > "$work/bench.yaml" <<YAML
mode: concurrent
share_devices: true
model: {checkpoint: $ckpt, dtype: float16}
stages:
  vision: {devices: [cuda:0], memory_limit: 10GiB, batch_size: 32}
  language: {devices: [cuda:0], memory_limit: 40GiB, batch_size: 32, max_context: 1024}
coordinator: {endpoint: 'ipc://@llava-bench-{pid}', heartbeat_interval: 500ms, liveness: 20, embedding_memory: 4GiB, shared_memory: ${SHARED_MEMORY:-32MiB}}
generation: {max_new_tokens: 64}
YAML
python3 "$root/tests/perf/bench.py" --build "$build" --config "$work/bench.yaml" \
    --image "$root/tests/data/images/img01_320x240_RGB.jpg" --out "$work/bench"
