#!/usr/bin/env python3
"""Writes a random LLaVA-1.5-7B-shaped checkpoint (float16, transformers' own layout, shards)
with a CLIP 336 preprocessor config and the tiny SentencePiece tokenizer (enough to run the
pipeline; its ids are a subset of the 7B vocabulary). Used by check_7b.py and
tests/perf/pipeline_7b.sh on the GPU machine; SHAPE 13b writes the LLaVA-1.5-13B shape:
    python3 tests/gpu/make_7b.py FOLDER [7b|13b]
"""
import json
import math
import os
import shutil
import sys
import time

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")


def make_7b(folder, keep_on_gpu=False, shape="7b"):
    """Returns (model on the GPU or None, report dict)."""
    os.makedirs(folder, exist_ok=True)
    report = {}
    hub = os.path.join(DATA, "hub-configs", "llava-1.5-%s-hf" % shape, "config.json")
    config = LlavaConfig.from_dict(json.load(open(hub)))
    t0 = time.time()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlavaForConditionalGeneration(config).to(torch.float16).eval()
        g = torch.Generator(device="cuda").manual_seed(0)
        with torch.no_grad():  # scaled so that activations keep their size and logits are peaked
            for name, p in model.named_parameters():
                if p.dim() >= 2 and "embed" not in name:
                    scale = 2.0 if "lm_head" in name else 1.0
                    p.copy_(torch.randn(p.shape, generator=g, device="cuda", dtype=torch.float32).half()
                            * (scale / math.sqrt(p[0].numel())))
                elif p.dim() >= 2 or "class_embedding" in name:
                    p.copy_(torch.randn(p.shape, generator=g, device="cuda").half())
                elif "norm" in name and name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g, device="cuda").half())
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g, device="cuda").half())
    report["parameters"] = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="5GB")
    json.dump({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336},
               "do_center_crop": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
               "do_convert_rgb": True, "resample": 3, "rescale_factor": 1 / 255,
               "image_mean": [0.48145466, 0.4578275, 0.40821073],
               "image_std": [0.26862954, 0.26130258, 0.27577711]},
              open(os.path.join(folder, "preprocessor_config.json"), "w"))
    shutil.copy(os.path.join(DATA, "tiny-llava", "tokenizer.model"), folder)
    report["write_seconds"] = time.time() - t0
    if not keep_on_gpu:
        del model
        torch.cuda.empty_cache()
        model = None
    return model, report


if __name__ == "__main__":
    _, report = make_7b(sys.argv[1], shape=sys.argv[2] if len(sys.argv) > 2 else "7b")
    print(json.dumps(report))
