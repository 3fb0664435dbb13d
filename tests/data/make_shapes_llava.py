#!/usr/bin/env python3
"""Trains a small LLaVA that really answers questions about synthetic pictures of shapes.

Run on the GPU machine (torch, transformers, sentencepiece, safetensors, PIL, numpy; no
network needed):

    python3 tests/data/make_shapes_llava.py OUT_DIR [--minutes 6]

--minutes is the training budget; data generation, evaluation and references add about a
minute on an H200. OUT_DIR then holds:
  shapes-llava/        LlavaForConditionalGeneration (CLIP 112/14 vision tower, 4+4 layers,
                       ~1.1M parameters, float32 safetensors), tokenizer (tokenizer.model,
                       tokenizer.json, tokenizer_config.json with chat_template),
                       chat_template.json (llava-hf LLaVA-1.5 template),
                       preprocessor_config.json (CLIPImageProcessor 112), generation_config.json,
                       demo.png (two red circles at the top left, 200x150)
  shapes-eval/         240 held-out PNGs (e000.png ...), requests.jsonl (a `llava-pipe run
                       --requests` file), answers.jsonl, README.md
  shapes-reference/    shapes_cases.json + shapes_caseN.safetensors, the format of
                       make_tiny_llava.py's references(): float64 CPU logits and 32 greedy
                       tokens (no EOS stop) for 3 eval images and one text-only prompt
  shapes-report.json   versions, sizes, training curve, held-out accuracy (float32/float16)

Each picture: a group of 1-3 identical shapes (circle, square, triangle, star) of one colour
(red, green, blue, yellow, purple, orange) in one region (top left/right, bottom left/right,
centre) of the centred square of side min(w, h) (so CLIP's resize + centre crop never cuts a
shape), on a light or dark plain or gradient background, with per-pixel noise (training).
The prompt the model is trained on is exactly what the pipeline feeds: the LLaVA-1.5 chat
template for one user message [image, text] with the generation prompt,
"USER: <image>\\n{question} ASSISTANT:", tokenized with BOS, <image> expanded to 64 image
tokens; the target is " {answer}" then </s>.
"""
import os
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the image pool forks after tokenizing

import argparse
import copy
import json
import math
import multiprocessing as mp
import platform
import random
import shutil
import sys
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import sentencepiece as spm
import transformers
from safetensors.torch import save_file
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration)

OUT = None  # set in main()
REPORT = {"steps": {}}
STATE = {}  # what later steps need even when an earlier one failed half-way

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
VOCAB_SP = 500           # sentencepiece pieces asked for (a soft limit; the real count is used)
IMAGE_SIZE = 112         # CLIP image size: 8 x 8 patches of 14
PATCH = 14
IMAGE_SEQ = (IMAGE_SIZE // PATCH) ** 2   # 64 image tokens ("default" strategy drops CLS)
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
MAX_NEW_TOKENS = 16
SEEDS = {"python": 0, "numpy": 0, "torch": 0, "train_images": 1, "val_images": 2,
         "eval_images": 3, "batch_sampling": 4, "sentencepiece_corpus": 5}

# llava-hf/llava-1.5-7b-hf's chat template, verbatim (tests/data/chat_template_refs.json).
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def prompt_for(question, with_image=True):
    """What the template renders for one user message [image, text], generation prompt on."""
    return f"USER: {IMAGE_TOKEN}\n{question} ASSISTANT:" if with_image else f"USER: {question} ASSISTANT:"


# ---------------------------------------------------------------- the task -----------
SHAPES = ["circle", "square", "triangle", "star"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
PALETTE = {"red": (220, 35, 35), "green": (35, 165, 60), "blue": (35, 75, 220),
           "yellow": (240, 215, 30), "purple": (135, 55, 185), "orange": (245, 135, 25)}
REGIONS = ["top left", "top right", "bottom left", "bottom right", "centre"]
WHERE = {"top left": "at the top left", "top right": "at the top right",
         "bottom left": "at the bottom left", "bottom right": "at the bottom right",
         "centre": "in the centre"}
ARTICLE = {1: "A", 2: "Two", 3: "Three"}
COUNT_WORD = {1: "One", 2: "Two", 3: "Three"}
KINDS = ["describe", "colour", "count"]
KIND_PROBS = [0.5, 0.25, 0.25]  # training mix
Q_DESCRIBE = "What is in the picture?"
Q_COUNT = "How many shapes are there?"


def q_colour(shape):
    return f"What colour is the {shape}?"


def qa_for(spec, kind):
    """spec = (shape index, colour index, count, region index) -> (question, answer)."""
    shape, colour, n, region = SHAPES[spec[0]], COLOURS[spec[1]], int(spec[2]), REGIONS[spec[3]]
    if kind == "describe":
        noun = shape if n == 1 else shape + "s"
        return Q_DESCRIBE, f"{ARTICLE[n]} {colour} {noun} {WHERE[region]}."
    if kind == "colour":
        return q_colour(shape), colour.capitalize() + "."
    if kind == "count":
        return Q_COUNT, COUNT_WORD[n] + "."
    raise ValueError(kind)


def all_specs():
    return [(s, c, n, r) for s in range(len(SHAPES)) for c in range(len(COLOURS))
            for n in (1, 2, 3) for r in range(len(REGIONS))]


# ---------------------------------------------------------------- pictures -----------
# Region boxes in the centred square (fractions of its side) and where the group's centroid
# must lie, so that a corner group never looks central and the other way round.
REGION_BOX = [(0.04, 0.04, 0.46, 0.46), (0.54, 0.04, 0.96, 0.46), (0.04, 0.54, 0.46, 0.96),
              (0.54, 0.54, 0.96, 0.96), (0.25, 0.25, 0.75, 0.75)]
SIZE_RANGE = {1: (0.14, 0.22), 2: (0.13, 0.19), 3: (0.12, 0.16)}   # shape size / square side
LIGHT, DARK = (165, 255), (0, 60)   # background channel ranges: all far from every palette colour


def centroid_ok(region, cx, cy):
    if region == 4:
        return abs(cx - 0.5) <= 0.09 and abs(cy - 0.5) <= 0.09
    left, top = region in (0, 2), region in (0, 1)
    okx = cx <= 0.34 if left else cx >= 0.66
    oky = cy <= 0.34 if top else cy >= 0.66
    return okx and oky


def place(rng, n, region):
    """-> (size fraction, [(cx, cy)...]) inside the region box, no two shapes touching."""
    lo, hi = SIZE_RANGE[n]
    frac = float(rng.uniform(lo, hi))
    x0, y0, x1, y1 = REGION_BOX[region]
    for _ in range(40):
        half = frac / 2
        for _ in range(200):
            xs = rng.uniform(x0 + half, x1 - half, n)
            ys = rng.uniform(y0 + half, y1 - half, n)
            apart = all(max(abs(xs[i] - xs[j]), abs(ys[i] - ys[j])) >= frac * 1.15
                        for i in range(n) for j in range(i + 1, n))
            if apart and centroid_ok(region, float(xs.mean()), float(ys.mean())):
                return frac, [(float(x), float(y)) for x, y in zip(xs, ys)]
        frac *= 0.93
    # Never reached in practice: a fixed small layout around the region's anchor.
    frac = 0.1
    ax = 0.25 if region in (0, 2) else 0.75
    ay = 0.25 if region in (0, 1) else 0.75
    if region == 4:
        ax = ay = 0.5
    offsets = [(-0.07, -0.04), (0.07, -0.04), (0.0, 0.08)][:n]
    if n == 1:
        offsets = [(0.0, 0.0)]
    elif n == 2:
        offsets = [(-0.07, 0.0), (0.07, 0.0)]
    return frac, [(ax + dx, ay + dy) for dx, dy in offsets]


def background(rng, w, h, shape_rgb):
    lo, hi = LIGHT if rng.random() < 0.5 else DARK
    c1 = rng.uniform(lo, hi, 3)
    if rng.random() < 0.45:
        arr = np.empty((h, w, 3), np.float32)
        arr[:] = c1
    else:
        c2 = rng.uniform(lo, hi, 3)
        a = rng.uniform(0, 2 * math.pi)
        x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
        y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        t = x * math.cos(a) + y * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        arr = (c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]).astype(np.float32)
    # Channel boxes are chosen so that this always holds; kept as a guard.
    dist = float(np.sqrt(((np.array([c1], np.float32) - np.array(shape_rgb, np.float32)) ** 2).sum()))
    assert dist >= 90, (c1, shape_rgb)
    return arr


def draw_shape(d, shape, cx, cy, size, rgb):
    r = size / 2
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "square":
        a = r * 0.88
        d.rectangle([cx - a, cy - a, cx + a, cy + a], fill=rgb)
    elif shape == "triangle":
        R = r * 1.1
        cy2 = cy + R / 4  # centre the bounding box
        pts = [(cx + R * math.cos(math.radians(t)), cy2 + R * math.sin(math.radians(t)))
               for t in (-90, 30, 150)]
        d.polygon(pts, fill=rgb)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            t = math.radians(-90 + 36 * k)
            pts.append((cx + rad * math.cos(t), cy + 0.05 * r + rad * math.sin(t)))
        d.polygon(pts, fill=rgb)
    else:
        raise ValueError(shape)


def render(rng, spec, w, h, noise_sigma, centres=None, frac=None, bg=None):
    shape_i, colour_i, n, region = (int(v) for v in spec)
    s = min(w, h)
    ox, oy = (w - s) / 2.0, (h - s) / 2.0
    base = PALETTE[COLOURS[colour_i]]
    rgb = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in base)
    arr = background(rng, w, h, base) if bg is None else bg
    im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    if centres is None:
        frac, centres = place(rng, n, region)
    d = ImageDraw.Draw(im)
    for cx, cy in centres:
        draw_shape(d, SHAPES[shape_i], ox + cx * s, oy + cy * s, frac * s, rgb)
    if noise_sigma > 0:
        a = np.asarray(im).astype(np.float32)
        a += rng.standard_normal(a.shape, dtype=np.float32) * np.float32(noise_sigma)
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")
    return im


def random_picture(base_seed, index, wmin, wmax, noisy):
    """Deterministic in (base_seed, index): -> (PIL image, spec)."""
    rng = np.random.default_rng([base_seed, index])
    spec = (int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS))),
            int(rng.integers(1, 4)), int(rng.integers(len(REGIONS))))
    w = int(rng.integers(wmin, wmax + 1))
    h = w if rng.random() < 0.25 else int(rng.integers(wmin, wmax + 1))
    sigma = 0.0
    if noisy and rng.random() >= 0.35:
        sigma = float(rng.uniform(1.0, 8.0))
    return render(rng, spec, w, h, sigma), spec


# ---------------------------------------------------------------- preprocessing ------
_PROC = {}


def processor(folder):
    if folder not in _PROC:
        from transformers import CLIPImageProcessor
        _PROC[folder] = CLIPImageProcessor.from_pretrained(folder)
    return _PROC[folder]


def to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def pixel_values(folder, images):
    """CLIPImageProcessor from the saved config, as the pipeline's reference: float32 [n,3,H,W]."""
    out = processor(folder)(images=images, return_tensors="pt")["pixel_values"]
    return torch.as_tensor(to_numpy(out))


_MEAN64 = np.array(MEAN, np.float64).reshape(1, 3, 1, 1)
_STD64 = np.array(STD, np.float64).reshape(1, 3, 1, 1)
_MEAN32 = np.array(MEAN, np.float32).reshape(1, 3, 1, 1)
_STD32 = np.array(STD, np.float32).reshape(1, 3, 1, 1)


def renormalize_np(u8):
    """The slow CLIPImageProcessor's rescale (float64 * 1/255 -> float32) then normalize."""
    x = (u8.astype(np.float64) * (1 / 255)).astype(np.float32)
    return (x - _MEAN32) / _STD32


def to_uint8(pv):
    """Processor output -> the uint8 pixels it was computed from, and the round-trip error."""
    u8 = np.clip(np.rint((pv.astype(np.float64) * _STD64 + _MEAN64) * 255), 0, 255).astype(np.uint8)
    err = float(np.abs(renormalize_np(u8) - pv).max()) if pv.size else 0.0
    return u8, err


def _worker_init(folder):
    try:
        torch.set_num_threads(1)
    except Exception:  # noqa: BLE001
        pass
    processor(folder)


def gen_chunk(args):
    folder, base_seed, start, count, wmin, wmax, noisy = args
    images, specs = [], []
    for i in range(start, start + count):
        im, spec = random_picture(base_seed, i, wmin, wmax, noisy)
        images.append(im)
        specs.append(spec)
    pv = to_numpy(processor(folder)(images=images, return_tensors="pt")["pixel_values"])
    assert pv.shape == (count, 3, IMAGE_SIZE, IMAGE_SIZE), pv.shape
    u8, err = to_uint8(pv)
    return start, u8, np.array(specs, np.int64), err


def make_pool(folder, base_seed, n, wmin, wmax, noisy, workers, chunk=250):
    """-> (uint8 [n,3,112,112] as the processor saw them, specs [n,4], round-trip error)."""
    tasks = [(folder, base_seed, s, min(chunk, n - s), wmin, wmax, noisy) for s in range(0, n, chunk)]
    pix = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    specs = np.empty((n, 4), np.int64)
    worst = 0.0
    results = None
    if workers > 1 and len(tasks) > 1:
        try:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(workers, initializer=_worker_init, initargs=(folder,)) as pool:
                results = []
                for r in pool.imap_unordered(gen_chunk, tasks):
                    results.append(r)
        except Exception:  # noqa: BLE001
            print("image pool failed, generating serially:\n" + traceback.format_exc(),
                  file=sys.stderr, flush=True)
            REPORT["pool_fallback"] = traceback.format_exc()
            results = None
    if results is None:
        results = (gen_chunk(t) for t in tasks)
    for start, u8, sp, err in results:
        pix[start:start + len(u8)] = u8
        specs[start:start + len(u8)] = sp
        worst = max(worst, err)
    return pix, specs, worst


# ---------------------------------------------------------------- helpers ------------
def step(name):
    def wrap(fn):
        def run(*a, **k):
            t0 = time.time()
            try:
                result = fn(*a, **k)
                REPORT["steps"][name] = "ok"
                return result
            except Exception:  # noqa: BLE001
                REPORT["steps"][name] = traceback.format_exc()
                print(f"step {name} failed:\n{REPORT['steps'][name]}", file=sys.stderr, flush=True)
                return None
            finally:
                REPORT.setdefault("step_seconds", {})[name] = round(time.time() - t0, 2)
        return run
    return wrap


def path(*parts):
    p = os.path.join(OUT, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p


def log(*a):
    print(*a, flush=True)


def seed_all():
    random.seed(SEEDS["python"])
    np.random.seed(SEEDS["numpy"])
    torch.manual_seed(SEEDS["torch"])
    torch.cuda.manual_seed_all(SEEDS["torch"])  # lazy: starts no CUDA context (the pool forks later)


def expand(ids, image_id, n):
    out = []
    for t in ids:
        out.extend([image_id] * n if t == image_id else [t])
    return out


def core(model):
    return model.model if hasattr(model, "model") and hasattr(model.model, "multi_modal_projector") else model


def plain(value):
    """JSON-ready: numpy numbers as numbers, every mapping key as a string."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_report():
    try:
        text = json.dumps(plain(REPORT), indent=1, default=str)  # whole, before the file is touched
        with open(path("shapes-report.json"), "w") as f:
            f.write(text)
    except Exception:  # noqa: BLE001
        traceback.print_exc()


# ---------------------------------------------------------------- tokenizer ----------
GENERIC_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "A photo of a cat sitting on a sofa next to a window.",
    "Describe the image in detail and answer the question.",
    "There are many shapes and colours in this small picture.",
    "Images of mountains, rivers, forests and cities at night.",
    "Numbers like 3.14159, 2.71828 and 42 appear in the text.",
    "She said: \"don't stop\" and walked away.",
    "The weather today is sunny with a light breeze from the west.",
    "Please answer with one word or a short sentence.",
    "He read a book about history, science and art.",
    "Where is the nearest station? It is two streets away.",
    "Can you see the bird on the branch of that tree?",
    "This is a test of the tokenizer with plain English words.",
    "The children played in the garden until the evening.",
    "Water boils at 100 degrees and freezes at 0 degrees.",
    "I would like a cup of tea with milk, please.",
    "The train leaves at seven and arrives at nine.",
    "Our team finished the project ahead of schedule.",
    "A small boat sails across the calm blue lake.",
    "Look at the left side and then at the right side of the image.",
    "Is it bigger or smaller than the one next to it?",
    "Café, naïve and Zürich are words with accents.",
    "def f(x): return x * 2  # a line of code",
    "Open the door, turn on the light and close the window.",
    "My favourite colours are grey, white, black, pink and brown.",
    "How many apples are on the table? There are five.",
    "What time is it? It is half past three.",
    "USER: Hello there! ASSISTANT: Hi, how can I help you today?",
]


def corpus_lines():
    lines = []
    for spec in all_specs():
        for kind in KINDS:
            q, a = qa_for(spec, kind)
            lines.append(f"USER: {q} ASSISTANT: {a}")
            lines.append(a)
    for s in SHAPES:
        lines.append(q_colour(s))
    lines += [Q_DESCRIBE, Q_COUNT]
    return sorted(set(lines))


@step("tokenizer")
def make_tokenizer(folder):
    work = path("shapes-work", "x")[:-2]
    corpus = os.path.join(work, "corpus.txt")
    rng = random.Random(SEEDS["sentencepiece_corpus"])
    words = " ".join(GENERIC_LINES).split()
    with open(corpus, "w", encoding="utf-8") as f:
        for line in corpus_lines():
            f.write(line + "\n")
        for line in GENERIC_LINES * 20:
            f.write(line + "\n")
        for _ in range(1500):
            f.write(" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) + "\n")
    # LLaMA's tokenizer.model settings (as make_tiny_llava.py): BPE, byte fallback, identity
    # normalization, a dummy prefix, whitespace kept, digits split. The vocabulary size is a
    # soft limit so that a small corpus never stops the trainer.
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(work, "sp"), vocab_size=VOCAB_SP, model_type="bpe",
        byte_fallback=True, character_coverage=0.9995, normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False, num_threads=4, minloglevel=2)
    sp_model = os.path.join(folder, "tokenizer.model")
    shutil.copy(os.path.join(work, "sp.model"), sp_model)
    json.dump({"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True,
               "add_eos_token": False}, open(os.path.join(folder, "tokenizer_config.json"), "w"))
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    n_pieces = sp.get_piece_size()
    REPORT["sentencepiece_pieces"] = n_pieces
    from transformers import AutoTokenizer, LlamaTokenizer
    tok, errors = None, []
    for name, build in (
        ("LlamaTokenizer.from_pretrained", lambda: LlamaTokenizer.from_pretrained(folder, legacy=False)),
        ("AutoTokenizer.from_pretrained", lambda: AutoTokenizer.from_pretrained(folder, legacy=False)),
        ("LlamaTokenizer(vocab_file)", lambda: LlamaTokenizer(
            vocab_file=sp_model, legacy=False, add_bos_token=True, add_eos_token=False)),
    ):
        try:
            candidate = build()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{name}: {e!r}")
            continue
        probe = "The quick brown fox 123 What colour is the star?"
        got, want = candidate(probe).input_ids, [1] + sp.encode(probe)
        if len(candidate) >= n_pieces and got == want:
            tok = candidate
            REPORT["tokenizer_built_by"] = name
            break
        errors.append(f"{name}: len {len(candidate)}, ids {got} != {want}")
    REPORT["tokenizer_attempts"] = errors
    if tok is None:
        raise RuntimeError("no usable LlamaTokenizer: " + "; ".join(errors))
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)  # first, as llava-hf: <image> = pieces
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    ids = {t: tok.convert_tokens_to_ids(t) for t in (IMAGE_TOKEN, PAD_TOKEN, "<s>", "</s>", "<unk>")}
    REPORT["special_ids"] = ids
    assert ids[IMAGE_TOKEN] == n_pieces and ids[PAD_TOKEN] == n_pieces + 1, ids
    assert ids["<s>"] == 1 and ids["</s>"] == 2, ids
    try:
        tok.chat_template = LLAVA_15_TEMPLATE
    except Exception:  # noqa: BLE001
        REPORT["tokenizer_chat_template_attr"] = traceback.format_exc()
    tok.save_pretrained(folder)
    if not os.path.exists(sp_model):
        shutil.copy(os.path.join(work, "sp.model"), sp_model)
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    cfg = json.load(open(cfg_path))
    cfg.update({"legacy": False, "add_bos_token": True, "add_eos_token": False,
                "padding_side": "left", "chat_template": LLAVA_15_TEMPLATE})
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    json.dump({"chat_template": LLAVA_15_TEMPLATE},
              open(os.path.join(folder, "chat_template.json"), "w"), indent=2)
    jinja = os.path.join(folder, "chat_template.jinja")
    if os.path.exists(jinja) and open(jinja).read() != LLAVA_15_TEMPLATE:
        with open(jinja, "w") as f:
            f.write(LLAVA_15_TEMPLATE)
    REPORT["tokenizer_files"] = sorted(f for f in os.listdir(folder) if "token" in f or "chat" in f)
    # Train with the tokenizer the saved files give (what the pipeline mirrors).
    saved = None
    try:
        saved = AutoTokenizer.from_pretrained(folder)
        REPORT["tokenizer_reloaded_class"] = f"{type(saved).__module__}.{type(saved).__name__}"
    except Exception:  # noqa: BLE001
        REPORT["tokenizer_reload_error"] = traceback.format_exc()
    if saved is not None:
        strings = [prompt_for(q) + " " + a for q, a in
                   {qa_for(s, k) for s in all_specs() for k in KINDS}]
        strings += GENERIC_LINES
        diff = [s for s in strings if saved(s).input_ids != tok(s).input_ids]
        REPORT["tokenizer_reload_mismatches"] = diff[:10]
        if diff:
            log(f"WARNING: the reloaded tokenizer differs on {len(diff)} strings; using the reloaded one")
        if saved.convert_tokens_to_ids(IMAGE_TOKEN) == ids[IMAGE_TOKEN] and \
                saved.convert_tokens_to_ids(PAD_TOKEN) == ids[PAD_TOKEN]:
            tok = saved
        else:
            REPORT["tokenizer_reload_special_ids_differ"] = True
    return tok, ids, n_pieces


@step("prompts")
def make_tables(tok, ids):
    """Every (question, answer) -> token sequence; checks the template and the tokenization."""
    image_id, eos = ids[IMAGE_TOKEN], ids["</s>"]
    # the chat template must render exactly the training prompt
    checks = {}
    for q, with_image in ((Q_DESCRIBE, True), (q_colour("star"), True), (Q_COUNT, True),
                          (Q_DESCRIBE, False)):
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": q}]
        rendered = tok.apply_chat_template([{"role": "user", "content": content}],
                                           chat_template=LLAVA_15_TEMPLATE, tokenize=False,
                                           add_generation_prompt=True)
        assert rendered == prompt_for(q, with_image), (rendered, prompt_for(q, with_image))
        checks[q + (" [image]" if with_image else " [text only]")] = rendered
    REPORT["template_renders"] = checks
    variants, index = [], {}
    prompt_ids = {}
    for spec in all_specs():
        for kind in KINDS:
            q, a = qa_for(spec, kind)
            if (q, a) in index:
                continue
            prompt = prompt_for(q)
            if q not in prompt_ids:
                p = tok(prompt).input_ids
                assert p[0] == 1 and p[-1] != eos and p.count(image_id) == 1, (prompt, p)
                prompt_ids[q] = p
            p = prompt_ids[q]
            full = tok(prompt + " " + a).input_ids
            assert full[:len(p)] == p, ("prompt is not a prefix", prompt, a, p, full)
            ans = full[len(p):] + [eos]
            assert 2 <= len(ans) <= MAX_NEW_TOKENS, (a, ans)
            back = tok.decode(ans[:-1], skip_special_tokens=True).strip()
            assert back == a, (back, a)
            seq = expand(p, image_id, IMAGE_SEQ) + ans
            index[(q, a)] = len(variants)
            variants.append({"kind": kind, "question": q, "answer": a, "seq": seq,
                             "n_prompt": len(seq) - len(ans)})
    # map every picture spec to its three variants
    spec_var = {}
    for spec in all_specs():
        spec_var[spec] = [index[qa_for(spec, k)] for k in KINDS]
    L = max(len(v["seq"]) for v in variants)
    V = len(variants)
    pad = ids[PAD_TOKEN]
    # numpy here: no torch computation may run before the image pool forks its workers
    inp = np.full((V, L), pad, dtype=np.int64)
    tgt = np.full((V, L), -100, dtype=np.int64)
    am = np.zeros((V, L), dtype=np.int64)
    for i, v in enumerate(variants):
        s = v["seq"]
        inp[i, :len(s)] = s
        am[i, :len(s)] = 1
        for t in range(v["n_prompt"] - 1, len(s) - 1):  # logits at t predict token t + 1
            tgt[i, t] = s[t + 1]
    inp, tgt, am = torch.from_numpy(inp), torch.from_numpy(tgt), torch.from_numpy(am)
    expanded = {q: expand(p, image_id, IMAGE_SEQ) for q, p in prompt_ids.items()}
    example_q, example_a = qa_for((0, 0, 2, 0), "describe")
    ex = variants[index[(example_q, example_a)]]
    REPORT["prompt_format"] = {
        "template_output": prompt_for("{question}"),
        "example_prompt": prompt_for(example_q), "example_answer": example_a,
        "example_prompt_ids": prompt_ids[example_q],
        "example_answer_ids": ex["seq"][ex["n_prompt"]:],
        "image_tokens_per_image": IMAGE_SEQ, "variants": V, "max_sequence": L,
        "loss_on": "answer tokens and </s> only",
    }
    log(f"prompt format: {prompt_for('{question}')!r} + ' {{answer}}</s>'; {V} variants, "
        f"sequences up to {L} tokens")
    return {"variants": variants, "spec_var": spec_var, "inp": inp, "tgt": tgt, "am": am,
            "prompt_ids": prompt_ids, "expanded": expanded}


# ---------------------------------------------------------------- model --------------
def shapes_config(vocab_rows, image_id, pad_id):
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                              num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH,
                              projection_dim=64, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = dict(vocab_size=vocab_rows, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
                pad_token_id=pad_id, tie_word_embeddings=False, hidden_act="silu")
    try:
        text_cfg = LlamaConfig(**text)
    except Exception:  # noqa: BLE001  (5.x may want rope_parameters)
        text.pop("rope_theta", None)
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
        text_cfg = LlamaConfig(**text)
    return LlavaConfig(vision_config=vision, text_config=text_cfg, image_token_index=image_id,
                       projector_hidden_act="gelu", image_seq_length=IMAGE_SEQ,
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       tie_word_embeddings=False)


def write_preprocessor_config(folder):
    json.dump({
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "do_center_crop": True,
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": MEAN, "image_std": STD, "image_processor_type": "CLIPImageProcessor",
        "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": IMAGE_SIZE}},
        open(os.path.join(folder, "preprocessor_config.json"), "w"), indent=2)


def unique_params(model):
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


# ---------------------------------------------------------------- data ---------------
@step("data")
def make_data(folder, tables, pool_size, workers):
    t0 = time.time()
    train_pix, train_specs, err = make_pool(folder, SEEDS["train_images"], pool_size, 96, 320, True, workers)
    REPORT["train_pool"] = {"images": pool_size, "sizes": "96..320 (w, h independent; 25% square)",
                            "noise": "35% none, else gaussian sigma 1..8",
                            "seconds": round(time.time() - t0, 1),
                            "processor_uint8_roundtrip_max_abs": err}
    log(f"train pool: {pool_size} images in {time.time() - t0:.1f}s (round-trip error {err:.2e})")
    n_val = 300
    val_pix, val_specs, err_v = make_pool(folder, SEEDS["val_images"], n_val, 96, 320, True, 1)
    val_items = []
    for i in range(n_val):
        kind = KINDS[i % 3]
        spec = tuple(int(v) for v in val_specs[i])
        q, a = qa_for(spec, kind)
        val_items.append({"kind": kind, "question": q, "expected": a,
                          "var": tables["spec_var"][spec][i % 3]})
    var_map = np.array([tables["spec_var"][tuple(int(v) for v in s)] for s in train_specs], np.int64)
    REPORT["val_set"] = {"images": n_val, "seed": SEEDS["val_images"],
                         "processor_uint8_roundtrip_max_abs": err_v}
    # training-set balance, for the record
    counts = {k: int(v) for k, v in zip(*np.unique(train_specs[:, 2], return_counts=True))}
    REPORT["train_pool"]["count_histogram"] = counts
    return {"train_pix": train_pix, "train_specs": train_specs, "var_map": var_map,
            "val_pix": val_pix, "val_items": val_items}


@step("eval_set")
def make_eval_set(tables, n=240):
    folder = path("shapes-eval", "x")[:-2]
    items, total = [], 0
    # requests.jsonl is a `llava-pipe run --requests` file (images beside it); answers.jsonl
    # holds what each should get.
    with open(os.path.join(folder, "requests.jsonl"), "w") as f, \
            open(os.path.join(folder, "answers.jsonl"), "w") as answers:
        for i in range(n):
            im, spec = random_picture(SEEDS["eval_images"], i, 96, 224, noisy=False)
            name = f"e{i:03d}.png"
            im.save(os.path.join(folder, name), format="PNG", optimize=True)
            total += os.path.getsize(os.path.join(folder, name))
            kind = KINDS[i % 3]
            q, a = qa_for(spec, kind)
            item = {"id": f"e{i:03d}", "image": f"shapes-eval/{name}", "prompt": q,
                    "expected": a, "kind": kind, "max_new_tokens": MAX_NEW_TOKENS}
            f.write(json.dumps({"id": item["id"], "image": name, "prompt": q,
                                "max_new_tokens": MAX_NEW_TOKENS}) + "\n")
            answers.write(json.dumps({"id": item["id"], "expected": a, "kind": kind}) + "\n")
            items.append(dict(item, question=q, var=tables["spec_var"][spec][i % 3],
                              size=list(im.size), spec=list(spec)))
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(f"{n} held-out pictures of 1-3 coloured shapes (noise-free PNGs, {96}..{224} px); "
                "requests.jsonl asks one question of each (describe / colour / count), answers.jsonl "
                "holds the expected answers.\n"
                f"Made by tests/data/make_shapes_llava.py (image seed {SEEDS['eval_images']}, never used "
                "in training).\n")
    REPORT["eval_set"] = {"items": n, "png_bytes": total, "seed": SEEDS["eval_images"],
                          "sizes": "96..224", "noise": "none"}
    log(f"eval set: {n} PNGs, {total / 1e6:.2f} MB")
    return items


@step("demo_image")
def make_demo(folder):
    rng = np.random.default_rng(11)
    w, h = 200, 150
    bg = np.empty((h, w, 3), np.float32)
    bg[:] = (240, 238, 228)
    spec = (SHAPES.index("circle"), COLOURS.index("red"), 2, REGIONS.index("top left"))
    im = render(rng, spec, w, h, 0.0, centres=[(0.15, 0.2), (0.37, 0.22)], frac=0.18, bg=bg)
    p = os.path.join(folder, "demo.png")
    im.save(p, format="PNG", optimize=True)
    REPORT["demo"] = {"image": "shapes-llava/demo.png", "size": [w, h],
                      "shows": "two red circles at the top left, on a plain off-white background",
                      "spec": list(spec)}
    return p


# ---------------------------------------------------------------- evaluation ---------
def set_exact(device):
    if device.type == "cuda":
        torch.set_float32_matmul_precision("highest")
        try:
            torch.backends.cudnn.allow_tf32 = False
        except Exception:  # noqa: BLE001
            pass


def set_fast(device):
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        try:
            torch.backends.cudnn.allow_tf32 = True
        except Exception:  # noqa: BLE001
            pass


@torch.no_grad()
def greedy(model, prompt_ids, pixels, eos=2, max_new=MAX_NEW_TOKENS):
    """Plain greedy with full recompute. prompt_ids [L] (shared), pixels [G,3,H,W].
    -> list of (tokens before EOS, saw EOS, min top-2 margin over those steps)."""
    G = pixels.shape[0]
    dev = pixels.device
    seq = torch.tensor(prompt_ids, dtype=torch.long, device=dev)[None].repeat(G, 1)
    done = torch.zeros(G, dtype=torch.bool, device=dev)
    toks = [[] for _ in range(G)]
    saw = [False] * G
    margin = [float("inf")] * G
    for _ in range(max_new):
        logits = model(input_ids=seq, pixel_values=pixels, attention_mask=torch.ones_like(seq),
                       use_cache=False).logits[:, -1].float()
        top = torch.topk(logits, 2, dim=-1)
        nxt = top.indices[:, 0]
        marg = (top.values[:, 0] - top.values[:, 1]).tolist()
        nl = nxt.tolist()
        dl = done.tolist()
        for g in range(G):
            if dl[g]:
                continue
            margin[g] = min(margin[g], marg[g])
            if nl[g] == eos:
                saw[g] = True
            else:
                toks[g].append(nl[g])
        done |= nxt == eos
        seq = torch.cat([seq, nxt[:, None]], 1)
        if bool(done.all()):
            break
    return [(toks[g], saw[g], margin[g]) for g in range(G)]


def evaluate(model, tok, tables, items, pixels, chunk=128):
    """items: dicts with question/expected/kind; pixels [n,3,H,W] on the model's device and dtype."""
    by_q = {}
    for i, it in enumerate(items):
        by_q.setdefault(it["question"], []).append(i)
    preds = [None] * len(items)
    was_training = model.training
    model.eval()
    for q, idx in by_q.items():
        p = tables["expanded"][q]
        for s in range(0, len(idx), chunk):
            part = idx[s:s + chunk]
            res = greedy(model, p, pixels[part])
            for i, r in zip(part, res):
                preds[i] = r
    if was_training:
        model.train()
    per = {k: [0, 0] for k in KINDS}
    fails, margins = [], []
    for it, (toks, saw, marg) in zip(items, preds):
        text = tok.decode(toks, skip_special_tokens=True).strip()
        ok = saw and text == it["expected"]
        per[it["kind"]][0] += int(ok)
        per[it["kind"]][1] += 1
        margins.append(marg)
        if not ok:
            fails.append({"id": it.get("id"), "kind": it["kind"], "question": it["question"],
                          "expected": it["expected"], "got": text, "eos": saw})
    right = sum(v[0] for v in per.values())
    acc = {"overall": right / max(1, len(items))}
    acc.update({k: v[0] / max(1, v[1]) for k, v in per.items()})
    m = sorted(margins)
    return {"accuracy": acc, "right": right, "total": len(items), "failures": fails,
            "min_margin": m[0] if m else None,
            "p01_margin": m[max(0, int(0.01 * len(m)) - 1)] if m else None}, preds


def gpu_pixels(u8, mean, std):
    """uint8 [n,3,H,W] on the device -> what the processor gives (float32 rounding)."""
    x = (u8.double() * (1 / 255)).float()
    return (x - mean) / std


@torch.no_grad()
def teacher_loss(model, tables, var, pixels):
    inp, tgt, am = tables["inp_d"][var], tables["tgt_d"][var], tables["am_d"][var]
    logits = model(input_ids=inp, pixel_values=pixels, attention_mask=am, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                           ignore_index=-100).item()


# ---------------------------------------------------------------- training -----------
@step("train")
def train(model, tok, tables, data, device, args):
    B = args.batch
    train_pix = torch.from_numpy(data["train_pix"]).to(device)
    var_map = torch.from_numpy(data["var_map"]).to(device)
    val_pix_u8 = torch.from_numpy(data["val_pix"]).to(device)
    mean = torch.tensor(MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    val_pixels = gpu_pixels(val_pix_u8, mean, std)
    val_items = data["val_items"]
    val_var = torch.tensor([it["var"] for it in val_items], dtype=torch.long, device=device)
    tables["inp_d"] = tables["inp"].to(device)
    tables["tgt_d"] = tables["tgt"].to(device)
    tables["am_d"] = tables["am"].to(device)
    kind_probs = torch.tensor(KIND_PROBS, dtype=torch.float32, device=device)
    g = torch.Generator(device=device).manual_seed(SEEDS["batch_sampling"])
    N = train_pix.shape[0]

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-8,
                                fused=(device.type == "cuda"))
    except Exception:  # noqa: BLE001
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-8)

    budget = args.minutes * 60.0
    warmup = args.warmup
    history = []
    STATE["best"] = None
    STATE["best_key"] = None
    t0 = time.time()
    last_eval = t0
    stepn = 0
    reached = False
    loss_acc, loss_n = 0.0, 0

    def run_eval():
        set_exact(device)
        res, _ = evaluate(model, tok, tables, val_items, val_pixels)
        vl = teacher_loss(model, tables, val_var, val_pixels)
        set_fast(device)
        acc = res["accuracy"]
        elapsed = time.time() - t0
        history.append({"step": stepn, "seconds": round(elapsed, 1), "val_loss": vl,
                        **{f"acc_{k}": round(v, 4) for k, v in acc.items()}})
        key = (acc["overall"], -vl)
        if STATE["best_key"] is None or key > STATE["best_key"]:
            STATE["best_key"] = key
            STATE["best"] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            STATE["best_step"] = stepn
        log(f"eval step {stepn} t={elapsed:.0f}s acc {acc['overall']:.4f} "
            f"(describe {acc['describe']:.3f} colour {acc['colour']:.3f} count {acc['count']:.3f}) "
            f"val_loss {vl:.4f} min_margin {res['min_margin']:.3f}")
        return acc["overall"]

    set_fast(device)
    model.train()
    log(f"training: batch {B}, lr {args.lr}, warmup {warmup}, budget {budget:.0f}s, pool {N}")
    try:
        while True:
            now = time.time()
            elapsed = now - t0
            if elapsed >= budget:
                break
            frac = min(1.0, elapsed / budget)
            lr = args.lr * min(1.0, (stepn + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
            for grp in opt.param_groups:
                grp["lr"] = lr
            idx = torch.randint(0, N, (B,), device=device, generator=g)
            kinds = torch.multinomial(kind_probs, B, replacement=True, generator=g)
            var = var_map[idx, kinds]
            pixels = gpu_pixels(train_pix[idx], mean, std)
            logits = model(input_ids=tables["inp_d"][var], pixel_values=pixels,
                           attention_mask=tables["am_d"][var], use_cache=False).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                   tables["tgt_d"][var].reshape(-1), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            stepn += 1
            loss_acc += loss.detach()
            loss_n += 1
            if stepn % 100 == 0:
                log(f"step {stepn} t={time.time() - t0:.0f}s loss {float(loss_acc) / loss_n:.4f} lr {lr:.2e}")
                loss_acc, loss_n = 0.0, 0
            if stepn >= warmup and time.time() - last_eval >= args.eval_seconds:
                acc = run_eval()
                last_eval = time.time()
                if acc >= args.target:
                    reached = True
                    log(f"target {args.target} reached at step {stepn}")
                    break
        if not reached:
            run_eval()
    finally:
        STATE["train_info"] = {"steps": stepn, "seconds": round(time.time() - t0, 1),
                               "reached_target": reached, "history": history,
                               "best_step": STATE.get("best_step"),
                               "best_val": STATE["best_key"][0] if STATE["best_key"] else None}
        REPORT["training"] = dict(STATE["train_info"], batch=B, lr=args.lr, warmup=warmup,
                                  budget_seconds=budget, target=args.target,
                                  optimizer="AdamW(0.9, 0.98), wd 0.01, warmup + cosine to 5%",
                                  precision="float32 weights, TF32 matmuls in training; "
                                            "evaluation in full float32")
        if STATE["best"] is None:
            STATE["best"] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        # free the pool
        del train_pix
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # check: the training pixels equal the processor's on a few validation images
    try:
        ims = [random_picture(SEEDS["val_images"], i, 96, 320, True)[0] for i in range(32)]
        ref = pixel_values(args.folder, ims).to(device)
        REPORT["train_pixels_vs_processor_max_abs"] = float((ref - val_pixels[:32]).abs().max())
    except Exception:  # noqa: BLE001
        REPORT["train_pixels_vs_processor_max_abs"] = traceback.format_exc()
    return True


@step("save_model")
def save_model(model, folder):
    model.load_state_dict(STATE["best"])
    dev = next(model.parameters()).device
    model.to("cpu")
    model.float().eval()
    model.save_pretrained(folder, safe_serialization=True)
    if not os.path.exists(os.path.join(folder, "generation_config.json")):
        try:
            model.generation_config.save_pretrained(folder)
        except Exception:  # noqa: BLE001
            REPORT["generation_config_error"] = traceback.format_exc()
    model.to(dev)
    st = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in st)
    REPORT["safetensors_files"] = st
    REPORT["safetensors_bytes"] = size
    REPORT["model_files"] = sorted(os.listdir(folder))
    try:
        REPORT["config"] = json.load(open(os.path.join(folder, "config.json")))
    except Exception:  # noqa: BLE001
        pass
    log(f"saved {folder}: {size / 1e6:.2f} MB safetensors")
    assert size <= 10 * 1024 * 1024, size


@step("final_eval")
def final_eval(model, tok, tables, eval_items, device, folder):
    # reload from disk: what is evaluated is what was saved
    m = LlavaForConditionalGeneration.from_pretrained(folder).to(device).eval()
    sd = m.state_dict()
    diff = max((sd[k].float().cpu() - v.float()).abs().max().item()
               for k, v in STATE["best"].items() if k in sd)
    REPORT["reload_max_param_diff"] = diff
    set_exact(device)
    files = [os.path.join(OUT, it["image"]) for it in eval_items]
    ims = []
    for f in files:
        im = Image.open(f)
        im.load()
        ims.append(im)
    pix = pixel_values(folder, ims).to(device)
    res32, preds32 = evaluate(m, tok, tables, eval_items, pix)
    out = {"float32": res32["accuracy"], "float32_right": f"{res32['right']}/{res32['total']}",
           "float32_failures": res32["failures"][:40],
           "float32_min_margin": res32["min_margin"], "float32_p01_margin": res32["p01_margin"]}
    log(f"held-out float32 accuracy {res32['accuracy']}")
    # transformers' generate must agree with the plain greedy loop
    try:
        agree, total = 0, 0
        by_q = {}
        for i, it in enumerate(eval_items):
            by_q.setdefault(it["question"], []).append(i)
        for q, idx in by_q.items():
            p = torch.tensor(tables["expanded"][q], device=device)[None].repeat(len(idx), 1)
            with torch.no_grad():
                gen = m.generate(input_ids=p, pixel_values=pix[idx], attention_mask=torch.ones_like(p),
                                 max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=2,
                                 pad_token_id=tok.pad_token_id)
            new = gen[:, p.shape[1]:].tolist()
            for i, row in zip(idx, new):
                toks = []
                for t in row:
                    if t == 2:
                        break
                    toks.append(t)
                agree += int(toks == preds32[i][0])
                total += 1
        out["generate_agrees_with_greedy"] = f"{agree}/{total}"
        log(f"generate agrees with the greedy loop on {agree}/{total}")
    except Exception:  # noqa: BLE001
        out["generate_agrees_with_greedy"] = traceback.format_exc()
    if device.type == "cuda":
        try:
            m16 = copy.deepcopy(m).half().eval()
            res16, _ = evaluate(m16, tok, tables, eval_items, pix.half())
            out["float16"] = res16["accuracy"]
            out["float16_right"] = f"{res16['right']}/{res16['total']}"
            out["float16_failures"] = res16["failures"][:20]
            log(f"held-out float16 accuracy {res16['accuracy']}")
            del m16
        except Exception:  # noqa: BLE001
            out["float16"] = traceback.format_exc()
    REPORT["held_out"] = out
    # the demo picture
    demo = os.path.join(folder, "demo.png")
    if os.path.exists(demo):
        im = Image.open(demo)
        im.load()
        dp = pixel_values(folder, [im]).to(device)
        answers = {}
        for q in (Q_DESCRIBE, q_colour("circle"), Q_COUNT):
            toks, saw, marg = greedy(m, tables["expanded"][q], dp)[0]
            answers[q] = {"answer": tok.decode(toks, skip_special_tokens=True).strip(), "eos": saw,
                          "min_margin": marg}
        REPORT.setdefault("demo", {})["answers"] = answers
        log(f"demo: {answers[Q_DESCRIBE]['answer']!r}")
    del m
    return out


# ---------------------------------------------------------------- references ---------
@step("references")
def references(tok, ids, folder, cases):
    from transformers import CLIPImageProcessor
    proc = CLIPImageProcessor.from_pretrained(folder)
    image_id = ids[IMAGE_TOKEN]
    m64 = LlavaForConditionalGeneration.from_pretrained(folder).eval().double()
    captured = {}
    core(m64).multi_modal_projector.register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("features", out.detach()))
    meta = []
    for ci, case in enumerate(cases):
        prompt_ids = tok(case["prompt"]).input_ids
        input_ids = expand(prompt_ids, image_id, IMAGE_SEQ)
        ims = []
        for n in case["images"]:
            im = Image.open(os.path.join(OUT, n))
            im.load()
            ims.append(im)
        pv = proc(images=ims, return_tensors="pt")["pixel_values"] if ims else None
        if pv is not None:
            pv = torch.as_tensor(to_numpy(pv))
        check = None
        try:  # the processor's own expansion must agree with ours
            from transformers import LlavaProcessor
            lp = LlavaProcessor(image_processor=proc, tokenizer=tok, patch_size=PATCH,
                                vision_feature_select_strategy="default",
                                num_additional_image_tokens=1)
            check = lp(images=ims or None, text=case["prompt"],
                       return_tensors="pt")["input_ids"][0].tolist() == input_ids
        except Exception as e:  # noqa: BLE001
            check = repr(e)
        captured.clear()
        with torch.no_grad():
            out = m64(input_ids=torch.tensor([input_ids]),
                      pixel_values=None if pv is None else pv.double(), use_cache=False)
            logits = out.logits[0]
            features = captured.get("features")
            generated, margins, seq = [], [], list(input_ids)
            for _ in range(32):  # plain greedy, full recompute, no EOS stop
                lg = m64(input_ids=torch.tensor([seq]),
                         pixel_values=None if pv is None else pv.double(), use_cache=False).logits[0, -1]
                top = torch.topk(lg, 2)
                margins.append((top.values[0] - top.values[1]).item())
                nxt = int(top.indices[0])
                generated.append(nxt)
                seq.append(nxt)
        tensors = {"input_ids": torch.tensor(input_ids, dtype=torch.int64),
                   "logits": logits.float().contiguous(),
                   "greedy": torch.tensor(generated, dtype=torch.int64)}
        if pv is not None:
            tensors["pixel_values"] = pv.float().contiguous()
            tensors["image_features"] = features.float().contiguous()
        save_file(tensors, path("shapes-reference", f"shapes_case{ci}.safetensors"))
        until_eos = generated[:generated.index(2)] if 2 in generated else generated
        meta.append({"file": f"shapes_case{ci}.safetensors", "prompt": case["prompt"],
                     "images": case["images"], "prompt_ids": prompt_ids,
                     "processor_expansion_agrees": check, "min_greedy_margin": min(margins),
                     "greedy": generated,
                     # extra, for reading: the text before the first </s>, per-step margins
                     "greedy_text": tok.decode(until_eos, skip_special_tokens=True).strip(),
                     "expected": case.get("expected"), "greedy_margins": margins})
        log(f"reference {ci}: {case['prompt']!r} -> {meta[-1]['greedy_text']!r} "
            f"(expansion agrees: {check})")
    json.dump(meta, open(path("shapes-reference", "shapes_cases.json"), "w"), indent=1,
              ensure_ascii=False)
    REPORT["reference_margins"] = [m["min_greedy_margin"] for m in meta]
    REPORT["reference_margins_until_eos"] = [
        min(m["greedy_margins"][:len(m["greedy"][:m["greedy"].index(2)]) + 1]) if 2 in m["greedy"] else None
        for m in meta]
    REPORT["reference_expansion"] = [m["processor_expansion_agrees"] for m in meta]
    REPORT["reference_texts"] = [m["greedy_text"] for m in meta]


def reference_cases(eval_items):
    cases = []
    for kind in KINDS:
        it = next((x for x in eval_items if x["kind"] == kind), None)
        if it is not None:
            cases.append({"prompt": prompt_for(it["prompt"]), "images": [it["image"]],
                          "expected": it["expected"]})
    cases.append({"prompt": prompt_for(Q_DESCRIBE, with_image=False), "images": [], "expected": None})
    return cases


# ---------------------------------------------------------------- main ---------------
def versions(device):
    v = {"python": platform.python_version(), "torch": torch.__version__,
         "transformers": transformers.__version__, "sentencepiece": spm.__version__,
         "numpy": np.__version__}
    try:
        import PIL
        v["PIL"] = PIL.__version__
    except Exception:  # noqa: BLE001
        pass
    try:
        import safetensors
        v["safetensors"] = safetensors.__version__
    except Exception:  # noqa: BLE001
        pass
    if device.type == "cuda":
        v["cuda"] = torch.version.cuda
        v["gpu"] = torch.cuda.get_device_name(0)
    return v


def main():
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget (default 6)")
    ap.add_argument("--pool", type=int, default=40000, help="training pictures (default 40000)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--target", type=float, default=0.99, help="stop at this validation accuracy")
    ap.add_argument("--eval-seconds", type=float, default=15.0, help="validation every N seconds")
    ap.add_argument("--workers", type=int, default=min(12, max(1, (os.cpu_count() or 2) - 2)))
    args = ap.parse_args()
    OUT = os.path.abspath(args.out_dir)
    os.makedirs(OUT, exist_ok=True)
    t_start = time.time()
    seed_all()
    REPORT["seeds"] = SEEDS
    REPORT["args"] = vars(args)
    folder = path("shapes-llava", "x")[:-2]
    args.folder = folder

    made = make_tokenizer(folder)
    if made is None:
        write_report()
        sys.exit("tokenizer step failed")
    tok, ids, n_pieces = made
    tables = make_tables(tok, ids)
    if tables is None:
        write_report()
        sys.exit("prompt step failed")
    write_preprocessor_config(folder)
    make_demo(folder)
    eval_items = make_eval_set(tables)
    data = make_data(folder, tables, args.pool, args.workers)  # before CUDA starts (fork)
    if data is None:
        write_report()
        sys.exit("data step failed")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    REPORT["device"] = str(device)
    REPORT["versions"] = versions(device)
    seed_all()
    vocab_rows = ((n_pieces + 2 + 63) // 64) * 64
    config = shapes_config(vocab_rows, ids[IMAGE_TOKEN], ids[PAD_TOKEN])
    model = LlavaForConditionalGeneration(config).to(device)
    nparams = unique_params(model)
    REPORT["vocab"] = {"sentencepiece_pieces": n_pieces, "image_token_id": ids[IMAGE_TOKEN],
                       "pad_token_id": ids[PAD_TOKEN], "embedding_rows": vocab_rows}
    REPORT["parameters"] = nparams
    log(f"model: {nparams} parameters, vocab rows {vocab_rows}, device {device}")
    STATE["model"] = model

    train(model, tok, tables, data, device, args)
    data = None
    if STATE.get("best") is None:
        write_report()
        sys.exit("training produced no weights")
    if save_model(model, folder) is None and REPORT["steps"].get("save_model") != "ok":
        write_report()
        sys.exit("saving the model failed")
    write_report()
    if eval_items:
        final_eval(model, tok, tables, eval_items, device, folder)
        write_report()
        references(tok, ids, folder, reference_cases(eval_items))
    shutil.rmtree(path("shapes-work", "x")[:-2], ignore_errors=True)
    REPORT["total_seconds"] = round(time.time() - t_start, 1)
    write_report()
    summary = {k: REPORT.get(k) for k in ("steps", "parameters", "safetensors_bytes", "held_out",
                                          "demo", "reference_texts", "reference_margins_until_eos",
                                          "total_seconds")}
    if isinstance(summary.get("held_out"), dict):
        summary["held_out"] = {k: v for k, v in summary["held_out"].items() if "failures" not in k}
    print(json.dumps(summary, indent=1, default=str)[:6000], flush=True)
    failed = [k for k, v in REPORT["steps"].items() if v != "ok"]
    if failed:
        print(f"failed steps: {failed}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
