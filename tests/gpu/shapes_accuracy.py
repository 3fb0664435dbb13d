#!/usr/bin/env python3
"""The shapes accuracy gate on a GPU: `llava-pipe run --requests` on the 240 held-out
pictures (tests/data/shapes-eval) with the language stage on cuda:0 in float16, unquantized
and with our int8 / int4 CUDA kernels; prints JSON (right answers per kind and overall).
The CPU gate is tests/pipeline/shapes_accuracy_test.cpp (float32, in CI).

    python3 tests/gpu/shapes_accuracy.py BUILD_DIR [OUT.json]
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
EVAL = os.path.join(ROOT, "tests", "data", "shapes-eval")


def run(build, dtype, quantize, work):
    config = os.path.join(work, f"{dtype}-{quantize}.yaml")
    output = os.path.join(work, f"{dtype}-{quantize}.jsonl")
    with open(config, "w") as f:
        f.write(f"""mode: concurrent
share_devices: true
model: {{checkpoint: {ROOT}/tests/data/shapes-llava, dtype: {dtype}}}
stages:
  vision: {{devices: [cuda:0], batch_size: 32}}
  language: {{devices: [cuda:0], batch_size: 64, max_context: 128, quantize: {quantize}}}
coordinator: {{endpoint: 'ipc://@llava-shapes-gpu-{{pid}}'}}
generation: {{max_new_tokens: 16, temperature: 0}}
""")
    subprocess.run([os.path.join(build, "llava-pipe"), "run", config, "--requests",
                    os.path.join(EVAL, "requests.jsonl"), "--output", output], check=False)
    expected = {}
    for line in open(os.path.join(EVAL, "answers.jsonl")):
        a = json.loads(line)
        expected[a["id"]] = a
    right, by_kind = 0, {}
    rows = [json.loads(line) for line in open(output)]
    for r in rows:
        want = expected[r["id"]]
        ok = bool(r.get("ok")) and r.get("text") == want["expected"]
        k = by_kind.setdefault(want["kind"], [0, 0])
        k[0] += ok
        k[1] += 1
        right += ok
    return {"right": right, "total": len(rows), "accuracy": right / max(1, len(rows)),
            "by_kind": {k: f"{v[0]}/{v[1]}" for k, v in sorted(by_kind.items())}}


def main():
    build = sys.argv[1]
    results = {}
    with tempfile.TemporaryDirectory() as work:
        results["float32"] = run(build, "float32", "none", work)
        for q in ("none", "int8", "int4"):
            results[f"float16-{q}"] = run(build, "float16", q, work)
    text = json.dumps(results, indent=1)
    print(text)
    if len(sys.argv) > 2:
        open(sys.argv[2], "w").write(text)


if __name__ == "__main__":
    main()
