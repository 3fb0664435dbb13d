"""Times each operation of one CLIP ViT-L/14-336 layer (and the projector) at a batch of
images, as separate CUDA-event-timed loops at the GPU's running clocks: which GEMM
shapes reach what fraction of the tensor cores, which attention backend is fastest at
577 tokens, what the patch embedding costs. Prints a table and JSON.
    python3 tests/perf/vision_ops.py [--batch 32] [--dtype float16]
"""
import argparse
import json
import subprocess

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def timed(op, runs=30, warm=5):
    for _ in range(warm):
        op()
    start = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for s, e in zip(start, end):
        s.record()
        op()
        e.record()
    torch.cuda.synchronize()
    ms = sorted(s.elapsed_time(e) for s, e in zip(start, end))
    return ms[len(ms) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", default="float16")
    args = parser.parse_args()
    dt = getattr(torch, args.dtype)
    dev = "cuda"
    b, t, h, inter, heads, text = args.batch, 577, 1024, 4096, 16, 4096
    m = b * t
    rows = {}

    def report(name, ms, flops=None, nbytes=None):
        extra = ""
        if flops:
            extra += f"  {flops / ms / 1e9:8.1f} TFLOP/s"
        if nbytes:
            extra += f"  {nbytes / ms / 1e6:8.1f} GB/s"
        print(f"{name:58s} {ms * 1000:9.1f} us{extra}", flush=True)
        rows[name] = {"us": ms * 1000, **({"tflops": flops / ms / 1e9} if flops else {})}

    torch.manual_seed(0)
    x = torch.randn(m, h, device=dev, dtype=dt)
    x4 = torch.randn(m, inter, device=dev, dtype=dt)
    shapes = {"qkv": (h, 3 * h, x), "out": (h, h, x), "fc1": (h, inter, x), "fc2": (inter, h, x4)}
    for lib in ("cublaslt", "cublas"):
        torch.backends.cuda.preferred_blas_library(lib)
        for name, (k, n, inp) in shapes.items():
            w = torch.randn(n, k, device=dev, dtype=dt) * 0.02
            bias = torch.randn(n, device=dev, dtype=dt)
            flops = 2 * m * k * n
            report(f"{lib} linear+bias {name} [{m},{k}]x[{k},{n}]", timed(lambda: F.linear(inp, w, bias)), flops)
            report(f"{lib} matmul      {name}", timed(lambda: torch.matmul(inp, w.t())), flops)
            if n == h:
                res = torch.randn(m, n, device=dev, dtype=dt)
                report(f"{lib} addmm(residual) {name}", timed(lambda: torch.addmm(res, inp, w.t())), flops)
            for mm in (18432, 18560, 19008):
                xx = inp[:mm] if mm <= m else torch.randn(mm, k, device=dev, dtype=dt)
                report(f"{lib} linear+bias {name} M={mm}", timed(lambda: F.linear(xx, w, bias)), 2 * mm * k * n)
    torch.backends.cuda.preferred_blas_library("cublaslt")
    pm = b * 576
    f1 = torch.randn(pm, h, device=dev, dtype=dt)
    w1 = torch.randn(text, h, device=dev, dtype=dt) * 0.02
    b1 = torch.randn(text, device=dev, dtype=dt)
    w2 = torch.randn(text, text, device=dev, dtype=dt) * 0.02
    f2 = torch.randn(pm, text, device=dev, dtype=dt)
    report("projector linear_1", timed(lambda: F.linear(f1, w1, b1)), 2 * pm * h * text)
    report("projector linear_2", timed(lambda: F.linear(f2, w2, b1)), 2 * pm * text * text)
    report("projector gelu (erf)", timed(lambda: F.gelu(f2)), None, 2 * f2.numel() * f2.element_size())

    qkv = torch.randn(b, t, 3 * h, device=dev, dtype=dt)
    q, k, v = (y.view(b, t, heads, h // heads).transpose(1, 2) for y in qkv.split(h, -1))
    qc, kc, vc = q.contiguous(), k.contiguous(), v.contiguous()
    att_flops = 4 * b * heads * t * t * (h // heads)
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        for label, (qq, kk, vv) in (("strided", (q, k, v)), ("contiguous", (qc, kc, vc))):
            try:
                with sdpa_kernel([backend]):
                    report(f"sdpa {backend.name} {label}",
                           timed(lambda: F.scaled_dot_product_attention(qq, kk, vv)), att_flops)
            except RuntimeError as e:
                print(f"sdpa {backend.name} {label}: {str(e).splitlines()[0]}")

    pixels = torch.randn(b, 3, 336, 336, device=dev, dtype=dt)
    pw = torch.randn(h, 3, 14, 14, device=dev, dtype=dt) * 0.02
    report("patch conv2d", timed(lambda: F.conv2d(pixels, pw, stride=14)), 2 * pm * 588 * h)
    pw2 = pw.view(h, 588)

    def unfold_mm():
        p = pixels.view(b, 3, 24, 14, 24, 14).permute(0, 2, 4, 1, 3, 5).reshape(pm, 588)
        return torch.matmul(p, pw2.t())
    report("patch unfold + matmul", timed(unfold_mm), 2 * pm * 588 * h)
    pwp = torch.zeros(h, 592, device=dev, dtype=dt)
    pwp[:, :588] = pw2

    def unfold_mm_padded():
        p = torch.zeros(pm, 592, device=dev, dtype=dt)
        p[:, :588] = pixels.view(b, 3, 24, 14, 24, 14).permute(0, 2, 4, 1, 3, 5).reshape(pm, 588)
        return torch.matmul(p, pwp.t())
    report("patch unfold + matmul (K padded to 592)", timed(unfold_mm_padded), 2 * pm * 588 * h)
    a = torch.randn(m, h, device=dev, dtype=dt)
    report("elementwise add [M,H] (bandwidth)", timed(lambda: a + x), None, 3 * a.numel() * a.element_size())
    report("layer_norm [M,H]", timed(lambda: F.layer_norm(a, (h,))), None, 2 * a.numel() * a.element_size())

    # Clocks while a long GEMM loop runs.
    w = torch.randn(inter, h, device=dev, dtype=dt)
    for _ in range(200):
        F.linear(x, w)
    clocks = subprocess.run(["nvidia-smi", "--query-gpu=name,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu",
                             "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    torch.cuda.synchronize()
    print("under GEMM load:", clocks)
    rows["clocks_under_load"] = clocks
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
