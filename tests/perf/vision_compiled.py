"""The vision tower + projector of LLaVA-1.5 (CLIP ViT-L/14-336, 23 layers of 24 run,
hidden_states[-2] without the class token, 2-layer GELU projector) at a batch of images,
float16, random weights: transformers' eager forward against torch.compile's (Inductor:
Triton kernels with fused epilogues, max-autotune choosing between Triton's and cuBLAS's
matrix products). What the best automatic compiler on this machine reaches, next to
llava-pipe's tower. CUDA-event timed, median of 20; prints a line per variant and JSON.
    python3 tests/perf/vision_compiled.py [--batch 32] [--modes default,max-autotune-no-cudagraphs]
"""
import argparse
import json
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel


class Tower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                  num_attention_heads=16, image_size=336, patch_size=14,
                                  hidden_act="quick_gelu", projection_dim=768)
        config._attn_implementation = "sdpa"
        self.clip = CLIPVisionModel(config)
        self.linear_1 = torch.nn.Linear(1024, 4096)
        self.linear_2 = torch.nn.Linear(4096, 4096)

    def forward(self, pixels):
        # The 23-layer model's last hidden state is the 24-layer model's hidden_states[-2].
        features = self.clip(pixel_values=pixels).last_hidden_state[:, 1:]
        return self.linear_2(torch.nn.functional.gelu(self.linear_1(features)))


def timed(fn, x, runs=20):
    for _ in range(3):
        fn(x)
    start = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for s, e in zip(start, end):
        s.record()
        fn(x)
        e.record()
    torch.cuda.synchronize()
    return sorted(s.elapsed_time(e) for s, e in zip(start, end))[runs // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--modes", default="default,max-autotune-no-cudagraphs")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Tower().to("cuda", torch.float16).eval()
    x = torch.randn(args.batch, 3, 336, 336, device="cuda", dtype=torch.float16)
    results = {}
    with torch.inference_mode():
        reference = model(x)
        ms = timed(model, x)
        results["eager"] = {"ms": ms, "images_per_s": args.batch / ms * 1e3}
        print(f"eager (transformers, sdpa)          {ms:8.2f} ms  {args.batch / ms * 1e3:8.1f} images/s", flush=True)
        for mode in args.modes.split(","):
            torch._dynamo.reset()
            compiled = torch.compile(model, mode=mode)
            t0 = time.time()
            out = compiled(x)
            torch.cuda.synchronize()
            compile_s = time.time() - t0
            error = ((out.float() - reference.float()).abs().max() / reference.float().abs().max()).item()
            ms = timed(compiled, x)
            results[mode] = {"ms": ms, "images_per_s": args.batch / ms * 1e3, "compile_s": compile_s,
                             "relative_error_vs_eager": error}
            print(f"compiled {mode:27s} {ms:8.2f} ms  {args.batch / ms * 1e3:8.1f} images/s"
                  f"  (compile {compile_s:.0f} s, max error vs eager {error:.2e} of the range)", flush=True)
    print(json.dumps({"batch": args.batch, "device": torch.cuda.get_device_name(), **results}))


if __name__ == "__main__":
    main()
