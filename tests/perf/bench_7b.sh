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
source "$root/tests/perf/config_7b.sh"
bench_config_7b "$work/bench.yaml" "$ckpt" bench ", shared_memory: ${SHARED_MEMORY:-32MiB}"
python3 "$root/tests/perf/bench.py" --build "$build" --config "$work/bench.yaml" \
    --image "$root/tests/data/images/img01_320x240_RGB.jpg" --out "$work/bench"
