#!/usr/bin/env python3
"""tests/http/bench.mjs for machines without Node (the GPU machine): the same two figures
with Python's standard library only.

    python3 tests/http/bench.py URL IMAGE [--runs 20] [--clients 64] [--tokens 64]

- ttft_ms: sequential streamed requests of one token; from sending the request to the
  first event after the role's (the token's text, or the finish when the token is part
  of a UTF-8 character): the median, min, max of --runs.
- throughput: --clients concurrent streamed requests of --tokens tokens each, all started
  together; generated tokens (from include_usage) over the wall time of the slowest one.
Every stream must end with `data: [DONE]`, or the run fails.
Compare: `llava-pipe bench CONFIG --image IMAGE --ttft-runs 20 --throughput 64 --new-tokens 64`.
"""
import argparse
import base64
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def streamed(url, image, max_tokens, prompt):
    parts = urllib.parse.urlsplit(url)
    body = json.dumps({
        "model": "m", "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": prompt}]}],
    })
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    start = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    first, completion, done, buffer = 0.0, 0, False, b""
    while True:
        piece = response.read1(65536)
        if not piece:
            break
        buffer += piece
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = event.decode()[len("data: "):]
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            # The first event after the role's: the first token's text, or, when that token
            # is not whole text yet (a byte of a UTF-8 character), the finish chunk.
            if not first and chunk["choices"] and "role" not in chunk["choices"][0].get("delta", {}):
                first = 1e3 * (time.perf_counter() - start)
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
    connection.close()
    if not done:
        raise RuntimeError("a stream ended without data: [DONE]")
    return first, completion


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("image")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    a = parser.parse_args()
    with open(a.image, "rb") as f:
        image = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
    streamed(a.url, image, 4, "warm-up")
    ttfts = [streamed(a.url, image, 1, f"Run {i}: describe it.")[0] for i in range(a.runs)]
    results = [None] * a.clients
    errors = []

    def client(i):
        try:
            results[i] = streamed(a.url, image, a.tokens, f"Client {i}: describe it.")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} of {a.clients} clients failed: {errors[:3]}")
    generated = sum(r[1] for r in results)
    print(json.dumps({
        "ttft_ms": {"median": statistics.median_low(ttfts), "min": min(ttfts), "max": max(ttfts),
                    "runs": a.runs},
        "throughput": {"clients": a.clients, "tokens_per_client": a.tokens, "generated": generated,
                       "seconds": seconds, "tokens_per_s": generated / seconds},
    }, indent=1))


if __name__ == "__main__":
    main()
