#!/usr/bin/env python3
"""int8 / int4 against float16 on a random LLaVA-shaped checkpoint, on the GPU machine.

    python3 tests/gpu/quantized_7b.py WORKDIR build-gpu/tests/llava_logits [7b|13b] [RUN ...]

Writes the checkpoint with transformers (tests/gpu/make_7b.py) unless WORKDIR has it,
prepares 3 prompts of one image each (576 image tokens + 24 text tokens), runs our
llava_logits once per RUN ("none", "int8", "int4", "QUANTIZE:RESIDENT" for streamed
layers, a "+unfused" suffix for LibTorch's kernels instead of our fused ones; default:
none int8 int4) and prints JSON: per run the tool's speeds and bytes,
and for each quantized run its prompt-logit relative error and top-1 agreement with the
float16 run over all prompt positions.
"""
import json
import os
import subprocess
import sys

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_7b import make_7b  # noqa: E402

work, tool = sys.argv[1], sys.argv[2]
shape = sys.argv[3] if len(sys.argv) > 3 else "7b"
runs = sys.argv[4:] or ["none", "int8", "int4"]
data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
folder = os.path.join(work, "llava-%s-random" % shape)
report = {"shape": shape}
if not os.path.exists(os.path.join(folder, "config.json")):
    _, report["checkpoint"] = make_7b(folder, shape=shape)

proc = CLIPImageProcessor.from_pretrained(folder)
images = sorted(f for f in os.listdir(os.path.join(data, "images")) if f.startswith("img"))[:3]
gen = torch.Generator().manual_seed(1)
inputs = {}
for c, name in enumerate(images):
    text = torch.randint(3, 32000, (24,), generator=gen).tolist()
    inputs[f"input_ids.{c}"] = torch.tensor([1] + text[:5] + [32000] * 576 + text[5:])
    pv = proc(images=Image.open(os.path.join(data, "images", name)), return_tensors="pt")["pixel_values"]
    inputs[f"pixel_values.{c}"] = pv.float().contiguous()
save_file(inputs, os.path.join(work, "quant-inputs.safetensors"))

logits = {}
for spec in runs:
    quantize, _, resident = spec.replace("+unfused", "").partition(":")
    env = dict(os.environ, **({"LLAVA_PIPE_UNFUSED": "1"} if spec.endswith("+unfused") else {}))
    out = os.path.join(work, "quant-%s.safetensors" % spec.replace(":", "-").replace("+", "-"))
    args = [tool, folder, "cuda:0", "float16", os.path.join(work, "quant-inputs.safetensors"), out, quantize]
    if resident:
        args.append(resident)
    run = subprocess.run(args, capture_output=True, text=True, env=env)
    entry = {"exit_code": run.returncode, "stderr": run.stderr.strip()[-1500:]}
    if run.returncode == 0:
        entry.update(json.loads(run.stdout.strip().splitlines()[-1]))
        logits[spec] = load_file(out)
        os.remove(out)
    report[spec] = entry
    print(json.dumps({spec: entry}), flush=True)

if "none" in logits:
    ref = logits["none"]
    for spec, ours in logits.items():
        if spec == "none":
            continue
        rel, same, total = [], 0, 0
        for c in range(len(images)):
            o, r = ours[f"logits.{c}"], ref[f"logits.{c}"]
            rel.append(((o - r).abs().max() / r.abs().max()).item())
            same += int((o.argmax(-1) == r.argmax(-1)).sum())
            total += r.shape[0]
        report[spec]["vs_float16"] = {"max_relative_error": max(rel), "relative_error": rel,
                                      "top1_agreement": same / total, "positions": total}
print(json.dumps(report, indent=1))
