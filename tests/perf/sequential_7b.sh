#!/usr/bin/env bash
# Sequential mode as a Colab-L4 user meets it (issue 20): configs/colab-l4.yaml (one cuda:0
# capped at 22 GiB) on the random LLaVA-1.5-7B-shaped checkpoint, `serve`, then one `ask`
# after another, 32 new tokens each: five about one image (from the second on its
# embeddings come from the cache), then three about new images. Prints each question's
# seconds as JSON lines and the NVML peak. MODE (default sequential): the config's mode, e.g.
# auto (which on this 22 GiB device runs the stages together with a shorter language batch).
# RELEASE (default auto): both stages' release (exit, unload, offload, auto).
#   bash tests/perf/sequential_7b.sh BUILD_DIR CHECKPOINT OUT_DIR [MODE] [RELEASE]
set -euo pipefail
build="$1"; ckpt="$2"; out="$3"; mode="${4:-sequential}"; release="${5:-auto}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$out"
sed -e "s|checkpoint: /models/llava-1.5-7b-hf|checkpoint: $ckpt|" -e "s|^mode: .*|mode: $mode|" \
    -e "s|^    batch_size: 32|    batch_size: 32\n    release: $release|" \
    -e "s|^    max_context: 1024|    max_context: 1024\n    release: $release|" \
    "$root/configs/colab-l4.yaml" > "$out/seq.yaml"
"$build/llava-pipe" check "$out/seq.yaml" > "$out/check.txt" 2>&1 || true
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$out/nvml.txt" &
smi=$!
"$build/llava-pipe" serve "$out/seq.yaml" --listen tcp://127.0.0.1:5611 > "$out/serve.log" 2>&1 &
server=$!
trap 'kill $server $smi 2>/dev/null || true' EXIT
python3 - "$build" "$root" "$out" <<'PY'
import json, subprocess, sys, time
build, root, out = sys.argv[1:4]
images = ["img01_320x240_RGB.jpg"] * 5 + ["img02_240x320_RGB.jpg", "img09_400x300_L.jpg", "img05_500x120_RGB.jpg"]
with open(f"{out}/questions.jsonl", "w") as f:
    for i, image in enumerate(images):
        start = time.perf_counter()
        r = subprocess.run([f"{build}/llava-pipe", "ask", "tcp://127.0.0.1:5611", "--image",
                            f"{root}/tests/data/images/{image}", "--prompt",
                            f"Question {i}: what is in the picture?", "--max-new-tokens", "32"],
                           capture_output=True, text=True)
        line = json.dumps({"question": i, "image": image, "seconds": time.perf_counter() - start,
                           "exit": r.returncode})
        print(line, flush=True)
        f.write(line + "\n")
PY
kill -TERM $server; wait $server || true
kill $smi 2>/dev/null || true
echo "{\"nvml_peak_mib\": $(sort -n "$out/nvml.txt" | tail -1)}" | tee "$out/peak.json"
