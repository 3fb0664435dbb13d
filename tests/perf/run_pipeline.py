#!/usr/bin/env python3
"""One pipeline run on the GPU machine with its memory sampled: writes the YAML, runs
`llava-pipe check` and `llava-pipe run --requests` while nvidia-smi samples device memory
every 100 ms, and prints one JSON line (throughput, NVML peak, each stage's load time and
allocator peak from the run's report, the check's prediction).

    python3 tests/perf/run_pipeline.py --build build-gpu --work W --checkpoint CKPT \
        --name int8-8g --limit 8GiB --language 'quantize: int8, batch_size: 2' \
        [--mode sequential] [--vision 'batch_size: 8'] [--requests 16] [--new-tokens 64]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_requests import write_requests  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--mode", default="sequential")
    p.add_argument("--limit", default="22GiB")
    p.add_argument("--vision", default="batch_size: 16")
    p.add_argument("--language", default="batch_size: 8, max_context: 1024")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    base = os.path.join(a.work, a.name)
    requests = base + ".requests.jsonl"
    write_requests(requests, a.requests, a.new_tokens)
    with open(base + ".yaml", "w") as f:
        f.write(f"mode: {a.mode}\n")
        if a.mode == "concurrent":
            f.write("share_devices: true\n")
        f.write(f"model: {{checkpoint: {a.checkpoint}, dtype: float16}}\n"
                f"stages:\n"
                f"  vision: {{devices: [cuda:0], memory_limit: {a.limit}, {a.vision}}}\n"
                f"  language: {{devices: [cuda:0], memory_limit: {a.limit}, {a.language}}}\n"
                f"coordinator: {{endpoint: 'ipc://@llava-perf-{{pid}}', heartbeat_interval: 500ms, "
                f"liveness: 60, embedding_memory: 8GiB}}\n"
                f"generation: {{max_new_tokens: {a.new_tokens}}}\n")
    check = subprocess.run([os.path.join(a.build, "llava-pipe"), "check", base + ".yaml"],
                           capture_output=True, text=True)
    open(base + ".check.txt", "w").write(check.stdout + check.stderr)
    sampler = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                "-lms", "100"], stdout=open(base + ".memory.csv", "w"))
    start = time.time()
    with open(base + ".log", "w") as log:
        run = subprocess.run([os.path.join(a.build, "llava-pipe"), "run", base + ".yaml", "--requests", requests,
                              "--output", base + ".out.jsonl", "--verbose"], stderr=log, stdout=subprocess.DEVNULL)
    seconds = time.time() - start
    sampler.terminate()
    sampler.wait()
    used = [int(l) for l in open(base + ".memory.csv") if l.strip().isdigit()]
    results = [json.loads(l) for l in open(base + ".out.jsonl")] if os.path.exists(base + ".out.jsonl") else []
    ok = [r for r in results if r.get("ok")]
    tokens = sum(r["generated_tokens"] for r in ok)
    stages = {}
    for line in open(base + ".log"):
        m = re.match(r"(vision-\d+|language-\d+)\s+cuda:\d+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+ \w+)", line)
        if m:
            stages[m.group(1)] = {"load_s": float(m.group(2)), "work_s": float(m.group(3)), "allocator_peak": m.group(4)}
    predicted = re.findall(r"(language-0|vision-0) on cuda:0.*\n\s+predicted peak ([\d.]+ \w+)", check.stdout)
    summary = {"name": a.name, "mode": a.mode, "limit": a.limit, "language": a.language, "exit_code": run.returncode,
               "requests": len(results), "ok": len(ok), "seconds": round(seconds, 2),
               "tokens_per_s": round(tokens / seconds, 1), "generated_tokens": tokens,
               "peak_gpu_mib_nvml": max(used) if used else None, "stages": stages,
               "check_exit_code": check.returncode, "predicted": dict(predicted),
               "errors": [r.get("error") for r in results if not r.get("ok")][:3]}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    sys.exit(main())
