#!/usr/bin/env python3
"""`llava-pipe bench` and transformers on the same checkpoint, in the same session, side by side.

On the GPU machine, after building build-gpu:
    python3 tests/perf/bench.py --build build-gpu --config CONFIG --image IMAGE [--out DIR]
        [--batches 1,8,32] [--new-tokens 64]

Runs `llava-pipe bench CONFIG` (its workers exit before transformers starts), then
LlavaForConditionalGeneration (float16, one GPU) on the config's checkpoint: time to first
token for one image and the same ~32-token prompt, decode tokens/s at each batch size,
images/s through the vision tower + projector at batch 1 and 32, load time and peak
allocated memory. Prints a table with ours / transformers for each figure and writes
bench.json (both sides and the ratios) to --out. With --throughput N (default 64) the
bench also times N requests submitted together, and tests/perf/in_process runs the same
work in one process: the pipeline's requests/s and tokens/s against it.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
import yaml
from PIL import Image
from transformers import CLIPImageProcessor, LlavaForConditionalGeneration


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def same_work_in_one_process(a, config, ours):
    """tests/perf/in_process: the throughput phase's requests through the same model code in
    one process (vision batches, then the language stage's continuous batching)."""
    tool = os.path.join(a.build, "tests", "in_process")
    stages = config["stages"]
    language = stages["language"]
    args = [tool, config["model"]["checkpoint"], language["devices"][0], a.image, str(a.throughput),
            str(a.new_tokens), str(stages["vision"].get("batch_size", 8)), str(language.get("batch_size", 8)),
            str(ours["prompt_tokens"]), str(language.get("prefill_chunk", 1024))]
    run = subprocess.run(args, capture_output=True, text=True)
    print(run.stdout, run.stderr[-2000:], flush=True)
    return json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else None


def transformers_side(checkpoint, image, batches, new_tokens):
    out = {}
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float16).cuda().eval()
    torch.cuda.synchronize()
    out["load_s"] = time.perf_counter() - t0
    config = model.config
    pixels = CLIPImageProcessor.from_pretrained(checkpoint)(images=Image.open(image), return_tensors="pt")[
        "pixel_values"].half().cuda()
    # One image and 32 text tokens, as in the bench's prompt.
    g = torch.Generator().manual_seed(0)
    words = torch.randint(3, 32000, (32,), generator=g).tolist()
    ids = torch.tensor([[1] + words[:4] + [config.image_token_index] * 576 + words[4:]], device="cuda")
    common = dict(do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=2, **common)  # warm-up
        out["ttft_ms"] = 1e3 * timed(lambda: model.generate(input_ids=ids, pixel_values=pixels,
                                                            max_new_tokens=1, **common), 10)
        processor = CLIPImageProcessor.from_pretrained(checkpoint)
        for b in (1, 32):
            px = pixels.expand(b, -1, -1, -1).contiguous()
            s = timed(lambda: model.get_image_features(pixel_values=px), 5)
            out[f"images_per_s_batch{b}"] = b / s

            def end_to_end():  # the file decoded, preprocessed, encoded: what our vision stage does
                batch = [Image.open(image).convert("RGB") for _ in range(b)]
                p = processor(images=batch, return_tensors="pt")["pixel_values"].half().cuda()
                model.get_image_features(pixel_values=p)
            out[f"images_per_s_end_to_end_batch{b}"] = b / timed(end_to_end, 3)
        for b in batches:
            bi, bp = ids.expand(b, -1).contiguous(), pixels.expand(b, -1, -1, -1).contiguous()
            first = timed(lambda: model.generate(input_ids=bi, pixel_values=bp, max_new_tokens=1, **common), 2)
            total = timed(lambda: model.generate(input_ids=bi, pixel_values=bp, max_new_tokens=new_tokens,
                                                 min_new_tokens=new_tokens, **common), 2)
            out[f"decode_tokens_per_s_batch{b}"] = b * (new_tokens - 1) / max(total - first, 1e-9)
    out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--out", default=".")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--throughput", type=int, default=64, help="requests for the throughput phase (0: none)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    ours_json = os.path.join(a.out, "llava-pipe-bench.json")
    run = subprocess.run([os.path.join(a.build, "llava-pipe"), "bench", a.config, "--image", a.image,
                          "--batches", a.batches, "--new-tokens", str(a.new_tokens),
                          "--throughput", str(a.throughput), "--json", ours_json],
                         capture_output=True, text=True)
    print(run.stdout, run.stderr[-3000:], flush=True)
    ours = json.load(open(ours_json))
    config = yaml.safe_load(open(a.config))
    checkpoint = config["model"]["checkpoint"]
    in_process = same_work_in_one_process(a, config, ours) if a.throughput else None
    batches = [int(b) for b in a.batches.split(",")]
    theirs = transformers_side(checkpoint, a.image, batches, a.new_tokens)
    tower = (in_process or {}).get("vision_tower_images_per_s", {})
    rows = [("time to first token, ms (lower is better)", ours["ttft_ms"]["median"], theirs["ttft_ms"], True),
            ("images/s end to end (file to embeddings), batch 1", ours["images_per_s"]["batch1"],
             theirs["images_per_s_end_to_end_batch1"], False),
            ("images/s end to end (file to embeddings), batch 32", ours["images_per_s"].get("batch32", 0),
             theirs["images_per_s_end_to_end_batch32"], False),
            ("images/s, vision tower + projector alone, batch 1", tower.get("batch1", 0),
             theirs["images_per_s_batch1"], False),
            ("images/s, vision tower + projector alone, batch 32", tower.get("batch32", 0),
             theirs["images_per_s_batch32"], False)]
    for b in batches:
        rows.append((f"decode tokens/s, batch {b}", ours["decode"][f"batch{b}"]["tokens_per_s"],
                     theirs[f"decode_tokens_per_s_batch{b}"], False))
    # Sequential mode pays every stage's load in turn; concurrent workers load at the same
    # time, so the slower one is the wait. Ours include creating each process's CUDA
    # context (transformers' figure starts after torch has made its own).
    loads = [s["load_s"] for s in ours["stages"]]
    sequential = ours.get("mode") == "sequential"
    rows.append(("load, s (stages %s; lower is better)" % ("in turn" if sequential else "at once, the slower"),
                 sum(loads) if sequential else max(loads, default=0), theirs["load_s"], True))
    peak = max((s["peak_bytes"] for s in ours["stages"]), default=0) / 2**30
    rows.append(("peak memory of the largest stage, GiB (lower is better)", peak, theirs["peak_allocated_gib"], True))
    print("%-58s %12s %14s %10s" % ("figure", "llava-pipe", "transformers", "advantage"))
    ratios = {}
    for name, o, t, lower in rows:
        ratio = (t / o if lower else o / t) if o and t else None
        ratios[name] = ratio
        print("%-58s %12.1f %14.1f %9.2fx" % (name, o, t, ratio or 0))
    if in_process:
        print("%-58s %12s %14s %10s" % ("throughput, %d requests" % a.throughput, "pipeline", "one process", "ratio"))
        for key in ("requests_per_s", "tokens_per_s"):
            o, i = ours["throughput"][key], in_process[key]
            print("%-58s %12.2f %14.2f %9.3fx" % (key.replace("_", " "), o, i, o / i))
    json.dump({"llava_pipe": ours, "transformers": theirs, "advantage": ratios, "in_process": in_process},
              open(os.path.join(a.out, "bench.json"), "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
