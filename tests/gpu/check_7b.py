#!/usr/bin/env python3
"""GPU check of the model code on a LLaVA-1.5-7B-shaped checkpoint (random weights).

Run on the GPU machine from the project root, after building build-gpu/:
    python3 tests/gpu/check_7b.py WORKDIR build-gpu/tests/llava_logits [MORE_LLAVA_LOGITS...]
(several builds, e.g. PTX-only ones, are checked against one reference: a report each, under
"builds", when more than one is named)
Writes a random 7B-shaped checkpoint with transformers (float16, the 5.x layout, shards),
computes transformers' prompt logits for 10 prompts (one image each, 576 image tokens),
runs our llava_logits on the same checkpoint, and prints the agreement as JSON.
"""
import json
import os
import subprocess
import sys
import time

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_7b import make_7b  # noqa: E402

work, tools = sys.argv[1], sys.argv[2:]
here = os.path.dirname(os.path.abspath(__file__))
data = os.path.join(here, "..", "data")
folder = os.path.join(work, "llava-7b-random")

model, report = make_7b(folder, keep_on_gpu=True)

proc = CLIPImageProcessor.from_pretrained(folder)
images = sorted(f for f in os.listdir(os.path.join(data, "images")) if f.startswith("img"))[:10]
gen = torch.Generator().manual_seed(1)
inputs, reference = {}, {}
for c, name in enumerate(images):
    text = torch.randint(3, 32000, (24,), generator=gen).tolist()
    ids = [1] + text[:5] + [32000] * 576 + text[5:]
    pv = proc(images=Image.open(os.path.join(data, "images", name)), return_tensors="pt")["pixel_values"]
    inputs[f"input_ids.{c}"] = torch.tensor(ids)
    inputs[f"pixel_values.{c}"] = pv.float().contiguous()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device="cuda"), pixel_values=pv.half().cuda())
    reference[c] = out.logits[0].float().cpu()
save_file(inputs, os.path.join(work, "inputs.safetensors"))
# float32 truth on the same (float16-rounded) weights: which float16 result is nearer?
model = model.float()
truth = {}
for c in reference:
    with torch.no_grad():
        out = model(input_ids=inputs[f"input_ids.{c}"][None].cuda(),
                    pixel_values=inputs[f"pixel_values.{c}"].cuda())
    truth[c] = out.logits[0].float().cpu()
del model
torch.cuda.empty_cache()

def evaluate(tool):
    report = {}
    run = subprocess.run([tool, folder, "cuda:0", "float16", os.path.join(work, "inputs.safetensors"),
                          os.path.join(work, "outputs.safetensors")], capture_output=True, text=True)
    report["tool_stdout"] = run.stdout.strip()
    report["tool_stderr"] = run.stderr.strip()[-2000:]
    if run.returncode == 0:
        ours = load_file(os.path.join(work, "outputs.safetensors"))
        rel, top1, first, margins, rel_hf32, rel_ours32, first32 = [], [], [], [], [], [], []
        for c in reference:
            o, r = ours[f"logits.{c}"], reference[c]
            rel.append(((o - r).abs().max() / r.abs().max()).item())
            top1.append((o.argmax(-1) == r.argmax(-1)).float().mean().item())
            first.append(int(ours[f"greedy.{c}"][0]) == int(r[-1].argmax()))
            t = truth[c]
            top2 = torch.topk(t[-1], 2).values
            margins.append((top2[0] - top2[1]).item())
            rel_hf32.append(((r - t).abs().max() / t.abs().max()).item())
            rel_ours32.append(((o - t).abs().max() / t.abs().max()).item())
            first32.append(int(ours[f"greedy.{c}"][0]) == int(t[-1].argmax()))
        report.update({"relative_error": rel, "max_relative_error": max(rel),
                       "top1_agreement_all_positions": sum(top1) / len(top1),
                       "first_greedy_token_identical": first,
                       "first_greedy_identical_count": sum(first),
                       "float32_last_position_top2_margin": margins,
                       "transformers_fp16_vs_fp32_relative_error": rel_hf32,
                       "ours_fp16_vs_fp32_relative_error": rel_ours32,
                       "ours_first_token_equals_fp32": first32})
    return report


results = {tool: evaluate(tool) for tool in tools}
if len(tools) == 1:
    report.update(results[tools[0]])
else:
    report["builds"] = results
print(json.dumps(report, indent=1))
