#!/usr/bin/env python3
"""Logprobs through `serve --http` against transformers, on the random LLaVA-1.5-7B-shaped
checkpoint (GPU machine; the device's log-sum-exp and top-k, which CPU tests cannot reach).

    python3 tests/gpu/logprobs_7b.py WORK BUILD_DIR [PORT]

Writes WORK/llava-7b-random if it is missing (make_7b.py), serves it in float16 on cuda:0 and
asks /v1/completions for:
  - the prompt's logprobs alone (echo, max_tokens 0, logprobs 5): the prefill's path;
  - 16 greedy tokens with logprobs 5: the decode steps' path.
Then stops the server and runs transformers (float16, the same checkpoint) over the prompt and
the answer. Each token's logprob is compared with transformers' log-softmax at its place (the
image and pad ids left out, as the server leaves them out), and each top list with transformers'
top 5. Prints JSON; exits 1 when a figure is off (0.05 absolute: float16 logits of ~1e-2 error).
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)

work, build = sys.argv[1], sys.argv[2]
port = int(sys.argv[3]) if len(sys.argv) > 3 else 8791
folder = os.path.join(work, "llava-7b-random")
if not os.path.exists(os.path.join(folder, "config.json")):
    from make_7b import make_7b  # noqa: E402
    make_7b(folder)
    torch.cuda.empty_cache()

config = os.path.join(work, "logprobs.yaml")
with open(config, "w") as f:
    f.write(f"""mode: concurrent
share_devices: true
model: {{checkpoint: {folder}, dtype: float16}}
stages:
  vision: {{devices: [cuda:0], memory_limit: 10GiB, batch_size: 8}}
  language: {{devices: [cuda:0], memory_limit: 30GiB, batch_size: 8, max_context: 1024}}
coordinator: {{endpoint: 'ipc://@llava-logprobs-{{pid}}', heartbeat_interval: 500ms, liveness: 20}}
generation: {{max_new_tokens: 64}}
""")
log = open(os.path.join(work, "logprobs-serve.log"), "w")
server = subprocess.Popen([os.path.join(build, "llava-pipe"), "serve", config, "--http", f"127.0.0.1:{port}"],
                          stdout=log, stderr=subprocess.STDOUT)
base = f"http://127.0.0.1:{port}"


def post(path, body):
    request = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        return json.loads(reply.read())


try:
    deadline = time.time() + 600
    while True:  # the server answers /health once its workers are up
        if server.poll() is not None:
            sys.exit("the server ended: " + open(log.name).read()[-3000:])
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as reply:
                if reply.status == 200:
                    break
        except OSError:
            if time.time() > deadline:
                sys.exit("the server did not come up")
            time.sleep(0.5)
    gen = torch.Generator().manual_seed(7)
    prompt = [1] + torch.randint(3, 32000, (40,), generator=gen).tolist()
    ask = {"model": "llava", "prompt": prompt, "logprobs": 5, "return_tokens_as_token_ids": True}
    echoed = post("/v1/completions", {**ask, "max_tokens": 0, "echo": True})["choices"][0]["logprobs"]
    answered = post("/v1/completions", {**ask, "max_tokens": 16, "temperature": 0, "ignore_eos": True})
finally:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=120)

answer_lp = answered["choices"][0]["logprobs"]


def token_id(name):  # "token_id:N" (return_tokens_as_token_ids)
    assert name.startswith("token_id:"), name
    return int(name[len("token_id:"):])


answer_ids = [token_id(t) for t in answer_lp["tokens"]]

from transformers import LlavaForConditionalGeneration  # noqa: E402

model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float16).cuda().eval()
cfg = json.load(open(os.path.join(folder, "config.json")))
text_cfg = cfg.get("text_config", {})
eos = text_cfg.get("eos_token_id", 2)
eos = set(eos if isinstance(eos, list) else [eos])
banned = [i for i in (cfg.get("image_token_index", 32000), text_cfg.get("pad_token_id", cfg.get("pad_token_id")))
          if i is not None and i not in eos]
ids = prompt + answer_ids
with torch.no_grad():
    logits = model(input_ids=torch.tensor([ids], device="cuda")).logits[0].float()
logits[:, banned] = float("-inf")
reference = torch.log_softmax(logits, -1).cpu()


def compare(place_of, chosen, lps, tops):
    """Max |ours - transformers| over the chosen tokens, and over each top-5 id's value (ours
    against transformers' for the same id); how many places have the same best id."""
    worst, worst_top, same_top1 = 0.0, 0.0, 0
    for n, (token, lp, top) in enumerate(zip(chosen, lps, tops)):
        row = reference[place_of(n)]
        worst = max(worst, abs(lp - row[token].item()))
        ours = sorted(((v, token_id(k)) for k, v in top.items()), reverse=True)[:5]
        worst_top = max(worst_top, max(abs(v - row[i].item()) for v, i in ours))
        same_top1 += int(ours[0][1] == int(row.argmax()))
    return {"tokens": len(lps), "max_abs_error": worst, "max_abs_error_top5": worst_top, "top1_same": same_top1}


report = {"device": torch.cuda.get_device_name(0), "prompt_tokens": len(prompt)}
# Prompt: token i's logprob is the scores at place i - 1; the first has none.
report["prompt"] = compare(lambda n: n, prompt[1:], echoed["token_logprobs"][1:], echoed["top_logprobs"][1:])
report["prompt"]["first_is_null"] = echoed["token_logprobs"][0] is None
# Answer: token n is the scores at the prompt's last place + n.
report["answer"] = compare(lambda n: len(prompt) - 1 + n, answer_ids, answer_lp["token_logprobs"],
                           answer_lp["top_logprobs"])
greedy = [int(reference[len(prompt) - 1 + n].argmax()) for n in range(len(answer_ids))]
report["answer"]["greedy_ids_same"] = sum(int(a == b) for a, b in zip(greedy, answer_ids))
print(json.dumps(report, indent=1))
bad = (not report["prompt"]["first_is_null"] or report["prompt"]["tokens"] != len(prompt) - 1
       or report["answer"]["tokens"] != 16
       or any(report[part][key] > 0.05 for part in ("prompt", "answer")
              for key in ("max_abs_error", "max_abs_error_top5")))
sys.exit(1 if bad else 0)
