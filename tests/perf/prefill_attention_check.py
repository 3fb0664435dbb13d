#!/usr/bin/env python3
"""Our prefill attention kernel (stages/language/prefill_attention.cu) against PyTorch's
flash kernel, which transformers runs: whether it gives the flash kernel's output bit for bit
(wherever that kernel runs in one pass), built for 1, 2 and 3 blocks a multiprocessor, and the
time of each at the 7B's shape. (Its first form tried four ways of rounding the softmax:
results/prefill_attention_variants-h100-2026-12-06.txt.)

    nvcc -O3 -std=c++17 -arch=sm_90 -shared -Xcompiler -fPIC -I. \
        tests/perf/prefill_attention_check.cu -o /tmp/prefill_attention_check.so
    python3 tests/perf/prefill_attention_check.py /tmp/prefill_attention_check.so [--json OUT]

Inputs are laid out as the decoder holds them: q in the rows of the qkv projection
[prompts * n, (heads + 2 kv_heads) * 128], keys and values in a cache [slots, kv_heads,
max_tokens, 128] from slot 1 on. The reference reads the same memory through views.
"""
import argparse
import ctypes
import json
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

D = 128
VARIANTS = (1, 2, 3)  # the kernel's launch bounds: blocks a multiprocessor


def make(n, prompts, heads, kv_heads, dtype, spread, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    width = (heads + 2 * kv_heads) * D
    qkv = (torch.randn(prompts * n, width, device="cuda", generator=g) * spread).to(dtype)
    max_tokens = n + 37
    slots = prompts + 2
    k = (torch.randn(slots, kv_heads, max_tokens, D, device="cuda", generator=g) * spread).to(dtype)
    v = torch.randn(slots, kv_heads, max_tokens, D, device="cuda", generator=g).to(dtype)
    return qkv, k, v, max_tokens


def reference(qkv, k, v, n, prompts, heads, kv_heads):
    q = qkv[:, : heads * D].view(prompts, n, heads, D).transpose(1, 2)
    kk = k[1 : 1 + prompts, :, :n]
    vv = v[1 : 1 + prompts, :, :n]
    if heads != kv_heads:
        kk = kk.repeat_interleave(heads // kv_heads, 1)
        vv = vv.repeat_interleave(heads // kv_heads, 1)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        o = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, scale=1.0 / math.sqrt(D))
    return o.transpose(1, 2).reshape(prompts, n, heads * D)


def ours(lib, variant, qkv, k, v, max_tokens, n, prompts, heads, kv_heads, out=None):
    if out is None:
        out = torch.full((prompts, n, heads * D), float("nan"), device="cuda", dtype=qkv.dtype)
    ran = lib.prefill_attention_variant(
        variant, int(qkv.dtype == torch.bfloat16), ctypes.c_void_p(qkv.data_ptr()), qkv.shape[1],
        ctypes.c_void_p(k.data_ptr()), ctypes.c_void_p(v.data_ptr()), max_tokens, 1, n, prompts, heads,
        kv_heads, ctypes.c_float(1.0 / math.sqrt(D)), ctypes.c_void_p(out.data_ptr()),
        ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
    if ran != 1:
        raise RuntimeError(f"variant {variant} did not run ({ran})")
    return out


def flash_splits(n, prompts, heads, sms):
    """How many parts PyTorch's flash kernel splits the keys into (its heuristic for one
    query block of 64 rows per 128 threads): above 1 it runs its split-KV kernels, whose
    sums differ from the one-pass kernel's."""
    blocks = prompts * heads * ((n + 63) // 64)
    slots = 2 * sms
    if blocks >= 0.8 * slots:
        return 1
    key_blocks = (n + 127) // 128
    most = min(128, slots, key_blocks)
    ceil_div = lambda a, b: (a + b - 1) // b
    eligible = lambda s: s == 1 or ceil_div(key_blocks, s) != ceil_div(key_blocks, s - 1)
    efficiency = []
    for s in range(1, most + 1):
        if not eligible(s):
            efficiency.append(0.0)
            continue
        waves = blocks * s / slots
        efficiency.append(waves / math.ceil(waves))
    best = max(efficiency)
    for s in range(1, most + 1):
        if eligible(s) and efficiency[s - 1] >= 0.85 * best:
            return s
    return 1


def timed(fn, calls=20, replays=20):
    """µs a call: `calls` calls captured in a CUDA graph, replayed (no launch overhead)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000.0 / (calls * replays)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("library")
    parser.add_argument("--json")
    args = parser.parse_args()
    lib = ctypes.CDLL(args.library)
    lib.prefill_attention_variant.restype = ctypes.c_int
    lib.prefill_attention_variant.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_longlong, ctypes.c_longlong, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p]
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)

    cases = [(n, 1, 32, 32, torch.float16, 1.0) for n in (1, 2, 17, 63, 64, 65, 127, 128, 129, 300, 420, 430, 576, 641, 1000, 2048, 3001)]
    cases += [(641, 1, 32, 32, torch.float16, 4.0), (641, 1, 32, 32, torch.bfloat16, 1.0),
              (200, 3, 32, 32, torch.float16, 1.0), (333, 2, 32, 8, torch.float16, 1.0),
              (641, 1, 32, 8, torch.bfloat16, 2.0)]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    mismatched = {variant: 0 for variant in VARIANTS}
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": [], "timing_us": {}}
    for seed, (n, prompts, heads, kv_heads, dtype, spread) in enumerate(cases):
        qkv, k, v, max_tokens = make(n, prompts, heads, kv_heads, dtype, spread, seed)
        ref = reference(qkv, k, v, n, prompts, heads, kv_heads).float()
        splits = flash_splits(n, prompts, heads, sms)
        row = {"n": n, "prompts": prompts, "heads": heads, "kv_heads": kv_heads, "dtype": str(dtype),
               "spread": spread, "flash_splits": splits, "variants": {}}
        for variant in VARIANTS:
            got = ours(lib, variant, qkv, k, v, max_tokens, n, prompts, heads, kv_heads).float()
            differ = int((got != ref).sum().item())
            worst = float((got - ref).abs().max().item())
            finite = bool(torch.isfinite(got).all().item())
            row["variants"][variant] = {"elements_differing": differ, "max_abs_difference": worst, "finite": finite}
            if (differ and splits == 1) or not finite:
                mismatched[variant] += 1
        report["cases"].append(row)
        print(n, prompts, heads, kv_heads, dtype, spread, "flash splits", splits,
              " ".join(f"v{v_}:{r['elements_differing']}/{r['max_abs_difference']:.3g}"
                       for v_, r in row["variants"].items()), flush=True)
    exact = [variant for variant in VARIANTS if mismatched[variant] == 0]
    print("bit for bit wherever the flash kernel runs in one pass:", exact or "none", flush=True)
    report["exact_variants"] = exact

    # Time at the 7B's prompt: 641 tokens, 32 heads.
    for n in (576, 641, 700, 1024, 1536, 2048, 4096):
        qkv, k, v, max_tokens = make(n, 1, 32, 32, torch.float16, 1.0, 99)
        q = qkv[:, : 32 * D].view(1, n, 32, D).transpose(1, 2)
        kk, vv = k[1:2, :, :n], v[1:2, :, :n]

        def flash():
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                F.scaled_dot_product_attention(q, kk, vv, is_causal=True, scale=1.0 / math.sqrt(D))

        line = {"flash": timed(flash)}
        out = torch.empty(1, n, 32 * D, device="cuda", dtype=qkv.dtype)
        for variant in VARIANTS:
            line[f"blocks{variant}"] = timed(lambda: ours(lib, variant, qkv, k, v, max_tokens, n, 1, 32, 32, out))
        report["timing_us"][n] = line
        print("n", n, " ".join(f"{key} {value:.1f} us" for key, value in line.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
