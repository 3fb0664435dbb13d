"""Times PyTorch's attention backends on a prompt's causal self-attention (LLaVA-1.5-7B:
32 heads of 128), and cuDNN's first call at a new length (its plan), to choose prefill's
attention. Usage: python3 sdpa_backends.py [LENGTH ...]"""
import sys
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F

def timed(fn, repeats=50):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / repeats  # us

lengths = [int(a) for a in sys.argv[1:]] or [641, 704, 768, 1024, 2048]
for n in lengths:
    q, k, v = (torch.randn(1, 32, n, 128, device="cuda", dtype=torch.float16) for _ in range(3))
    flops = 4 * n * n * 128 * 32 / 2
    row = [f"n={n}"]
    ref = None
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
        try:
            with sdpa_kernel(backend):
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                end.record()
                torch.cuda.synchronize()
                first = start.elapsed_time(end) * 1000
                us = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
            if ref is None:
                ref = out.float()
            err = (out.float() - ref).abs().max().item()
            row.append(f"{name} {us:8.1f} us ({flops / us / 1e6:6.1f} TFLOP/s, first call {first:9.1f} us, max diff {err:.2e})")
        except Exception as e:  # a backend that does not take this shape
            row.append(f"{name} n/a ({str(e).splitlines()[0][:80]})")
    # Our prefill's layout: q a view of the projected rows [1, n, 3 * 4096], k and v views
    # of the cache [1, 32, 4096 slots, 128].
    projected = torch.randn(1, n, 3 * 4096, device="cuda", dtype=torch.float16)
    cache_k, cache_v = (torch.randn(1, 32, 4096, 128, device="cuda", dtype=torch.float16) for _ in range(2))
    qv = projected[..., :4096].view(1, n, 32, 128).transpose(1, 2)
    kv_, vv = cache_k[:, :, :n], cache_v[:, :, :n]
    for name, backend in [("flash, our layout", SDPBackend.FLASH_ATTENTION), ("cudnn, our layout", SDPBackend.CUDNN_ATTENTION)]:
        try:
            with sdpa_kernel(backend):
                us = timed(lambda: F.scaled_dot_product_attention(qv, kv_, vv, is_causal=True))
            row.append(f"{name} {us:8.1f} us ({flops / us / 1e6:6.1f} TFLOP/s)")
        except Exception as e:
            row.append(f"{name} n/a ({str(e).splitlines()[0][:80]})")
    print("\n  ".join(row), flush=True)
