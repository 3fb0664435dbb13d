#!/usr/bin/env python3
"""Makes the tiny random LLaVA and every reference output the CPU tests compare against.

Run on a machine with torch, transformers, sentencepiece, safetensors and PIL (the GPU
machine has them; nothing here needs a GPU):

    python3 tests/data/make_tiny_llava.py OUT_DIR

OUT_DIR then holds (copy it over tests/data/):
  tiny-llava/            the model as transformers' save_pretrained writes it, + tokenizer
  tiny-llava-layouts/    the same weights under the other tensor-name layouts in the wild:
                         hub-sharded/ (transformers 4.3x names, two shards + index, minimal
                         hub-style config.json), v452-f16/ (transformers 4.52 names, float16)
  tiny-llava-b/          a second config: "full" feature strategy, two feature layers,
                         tied embeddings, linear RoPE scaling
  reference/             cases.json + case_N.safetensors: input ids, pixel values, image
                         features, prompt logits, 32 greedy tokens (float64 on the CPU);
                         tokenizer.json: transformers' ids for 50 strings
  images/                20 varied test images; preprocess.safetensors (pixel values from
                         CLIPImageProcessor at the tiny size, plain and padded to square);
                         resized336/NN.png (PIL's bicubic resize + centre crop at 336)
  report.json            versions, classes used, checks and margins
"""
import io
import json
import math
import os
import random
import shutil
import sys
import traceback

import numpy as np
import torch
from PIL import Image, ImageDraw

import sentencepiece as spm
import transformers
from safetensors.torch import save_file, load_file
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration)

OUT = sys.argv[1] if len(sys.argv) > 1 else "tiny-out"
REPORT = {"transformers": transformers.__version__, "torch": torch.__version__,
          "sentencepiece": spm.__version__, "steps": {}}
IMAGE_TOKEN = "<image>"
VOCAB_SP = 800           # sentencepiece pieces; <image> = 800, <pad> = 801
VOCAB = 1024             # embedding rows (padded, as llava-hf pads 32002 -> 32064)
TINY_SIZE = 56           # CLIP image size of the tiny model (4 x 4 patches of 14)
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def step(name):
    def wrap(fn):
        def run(*a, **k):
            try:
                result = fn(*a, **k)
                REPORT["steps"][name] = "ok"
                return result
            except Exception:
                REPORT["steps"][name] = traceback.format_exc()
                print(f"step {name} failed:\n{REPORT['steps'][name]}", file=sys.stderr)
                return None
        return run
    return wrap


def path(*parts):
    p = os.path.join(OUT, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p


# ---------------------------------------------------------------- tokenizer ----------
CORPUS_LINES = [
    "A photo of a cat sitting on a red sofa next to a window.",
    "What is in the picture? Describe the image in detail.",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
    "USER: What color is the car? ASSISTANT: The car is blue.",
    "Images of mountains, rivers, forests and cities at night.",
    "Café, naïve, émigré, Zürich, São Paulo, København.",
    "日本語のテキストと中文文本，还有한국어 문장.",
    "Numbers like 3.14159, 2.71828 and 42 appear in the text.",
    "def f(x): return x * 2  # a line of code",
    "She said: \"don't stop\" — and walked away…",
]


@step("tokenizer")
def make_tokenizer(folder):
    corpus = path("work", "corpus.txt")
    rng = random.Random(0)
    words = " ".join(CORPUS_LINES).split()
    with open(corpus, "w", encoding="utf-8") as f:
        for line in CORPUS_LINES * 30:
            f.write(line + "\n")
        for _ in range(2000):
            f.write(" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) + "\n")
    # LLaMA's tokenizer.model settings: BPE, byte fallback, identity normalization,
    # a dummy prefix, whitespace kept, digits split.
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=path("work", "sp"), vocab_size=VOCAB_SP, model_type="bpe",
        byte_fallback=True, character_coverage=0.9995, normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=4, minloglevel=2)
    shutil.copy(path("work", "sp.model"), os.path.join(folder, "tokenizer.model"))
    json.dump({"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True,
               "add_eos_token": False}, open(os.path.join(folder, "tokenizer_config.json"), "w"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(folder, "tokenizer.model"))
    from transformers import AutoTokenizer, LlamaTokenizer
    tok, errors = None, []
    for name, build in (
        ("LlamaTokenizer.from_pretrained", lambda: LlamaTokenizer.from_pretrained(folder, legacy=False)),
        ("AutoTokenizer.from_pretrained", lambda: AutoTokenizer.from_pretrained(folder, legacy=False)),
        ("LlamaTokenizer(vocab_file)", lambda: LlamaTokenizer(
            vocab_file=os.path.join(folder, "tokenizer.model"), legacy=False,
            add_bos_token=True, add_eos_token=False)),
    ):
        try:
            candidate = build()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{name}: {e!r}")
            continue
        # A tokenizer that lost the sentencepiece vocabulary must not pass silently.
        probe = "The quick brown fox 123"
        got, want = candidate(probe).input_ids, [1] + sp.encode(probe)
        if len(candidate) >= VOCAB_SP and got == want:
            tok = candidate
            REPORT["tokenizer_built_by"] = name
            break
        errors.append(f"{name}: len {len(candidate)}, ids {got} != {want}")
    REPORT["tokenizer_attempts"] = errors
    if tok is None:
        raise RuntimeError("no usable LlamaTokenizer: " + "; ".join(errors))
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)  # first: llava-hf has <image> = 32000
    tok.add_special_tokens({"pad_token": "<pad>"})
    REPORT["tokenizer_class"] = f"{type(tok).__module__}.{type(tok).__name__}"
    ids = {t: tok.convert_tokens_to_ids(t) for t in (IMAGE_TOKEN, "<pad>", "<s>", "</s>", "<unk>")}
    REPORT["special_ids"] = ids
    assert ids[IMAGE_TOKEN] == VOCAB_SP and ids["<pad>"] == VOCAB_SP + 1, ids
    tok.save_pretrained(folder)
    # tokenizer_config.json as llava-hf ships it (the C++ side reads tokenizer.model only).
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    cfg = json.load(open(cfg_path))
    cfg.update({"legacy": False, "add_bos_token": True, "add_eos_token": False,
                "padding_side": "left"})
    json.dump(cfg, open(cfg_path, "w"), indent=2)
    return tok, ids


TOKENIZER_STRINGS = [
    "", " ", "hello", "Hello world", "  two leading spaces", "trailing spaces  ",
    "tabs\tand\nnewlines\n\n", "digits 1234567890 and 3.14", "Café naïve émigré",
    "日本語のテキスト", "中文文本，还有한국어", "emoji 😀🎉 and ☃", "<image>",
    "USER: <image>\nWhat is in the picture? ASSISTANT:", "<image><image>", "a<image>b",
    " <image> ", "<image>\n<image>\nCompare the two images.", "don't won't it's",
    "C++ code: x = y * 2; // comment", "URL https://example.com/a?b=c&d=e",
    "The quick brown fox jumps over the lazy dog.", "ﬁ ligature and ½ fraction",
    "\u00a0non-breaking\u00a0space", "Ω≈ç√∫˜µ≤≥÷", "<s>", "</s>", "text </s> more",
    "<unk>", "<pad>", "\n", "\t", "   ", "a", "ab", "a b c d e f g", "A" * 40,
    "mixed CASE Words", "punctuation!!! ??? ...", "quotes \"double\" 'single'",
    "em—dash – en-dash … ellipsis", "math: e^(iπ) + 1 = 0", "path/to/file.txt",
    "email@example.org", "#hashtag @mention", "zero-width\u200bjoiner", "Zürich São Paulo",
    "line1\r\nline2", "USER: Describe this. ASSISTANT: It is a cat.</s>",
    "ASSISTANT: 😀 ok",
]


@step("tokenizer_reference")
def tokenizer_reference(tok, folder):
    assert len(TOKENIZER_STRINGS) == 50, len(TOKENIZER_STRINGS)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(folder, "tokenizer.model"))
    cases = []
    for s in TOKENIZER_STRINGS:
        cases.append({"text": s, "ids": tok(s).input_ids,
                      "sentencepiece_ids": sp.encode(s),
                      "decoded": tok.decode(tok(s).input_ids, skip_special_tokens=True)})
    json.dump({"tokenizer_class": REPORT.get("tokenizer_class"), "cases": cases},
              open(path("reference", "tokenizer.json"), "w"), indent=1, ensure_ascii=False)


# ---------------------------------------------------------------- model --------------
def tiny_config(variant):
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=4, image_size=TINY_SIZE, patch_size=14,
                              projection_dim=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
                pad_token_id=VOCAB_SP + 1, tie_word_embeddings=(variant == "b"))
    if variant == "b":
        text["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    try:
        text = LlamaConfig(**text)
    except Exception:  # noqa: BLE001  (5.x may want rope_parameters)
        text.pop("rope_scaling", None)
        text["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
        text = LlamaConfig(**text)
    kw = dict(vision_config=vision, text_config=text, image_token_index=VOCAB_SP,
              projector_hidden_act="gelu", image_seq_length=16,
              vision_feature_layer=-3, vision_feature_select_strategy="default",
              tie_word_embeddings=(variant == "b"))
    if variant == "b":
        kw.update(vision_feature_layer=[-3, -1], vision_feature_select_strategy="full",
                  image_seq_length=17)
    return LlavaConfig(**kw)


def randomize(model, seed):
    # Scales chosen so that activations keep their size through the layers and the
    # logits are peaked: greedy choices then have clear margins in float32.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embed" not in name and "embedding" not in name:
                fan_in = p[0].numel()
                scale = 2.0 if "lm_head" in name else 1.0
                p.copy_(torch.randn(p.shape, generator=g) * scale / math.sqrt(fan_in))
            elif p.dim() >= 2 or "class_embedding" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def core(model):
    return model.model if hasattr(model, "model") and hasattr(model.model, "multi_modal_projector") else model


@step("model")
def make_model(folder, variant, seed):
    torch.manual_seed(seed)
    config = tiny_config(variant)
    model = LlavaForConditionalGeneration(config).eval()
    randomize(model, seed)
    if config.text_config.tie_word_embeddings or getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.save_pretrained(folder, safe_serialization=True)
    json.dump({
        "crop_size": {"height": TINY_SIZE, "width": TINY_SIZE}, "do_center_crop": True,
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": MEAN, "image_std": STD, "image_processor_type": "CLIPImageProcessor",
        "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": TINY_SIZE}},
        open(os.path.join(folder, "preprocessor_config.json"), "w"), indent=2)
    REPORT[f"config_{variant}"] = json.load(open(os.path.join(folder, "config.json")))
    saved = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            saved.update({k: list(v.shape) for k, v in load_file(os.path.join(folder, f)).items()})
    REPORT[f"saved_names_{variant}"] = sorted(saved)[:8] + ["..."] + sorted(saved)[-4:]
    REPORT[f"saved_tensor_count_{variant}"] = len(saved)
    return model


def canonical(state):
    """In-memory names -> (language, vision, projector, head) parts without prefixes."""
    out = {}
    for k, v in state.items():
        for prefix, kind in (("model.language_model.", "lang"), ("language_model.model.", "lang"),
                             ("model.vision_tower.vision_model.", "vis"),
                             ("vision_tower.vision_model.", "vis"), ("model.vision_tower.", "vis"),
                             ("vision_tower.", "vis"),
                             ("model.multi_modal_projector.", "proj"),
                             ("multi_modal_projector.", "proj"),
                             ("language_model.lm_head.", "head"), ("lm_head.", "head")):
            if k.startswith(prefix):
                out[(kind, k[len(prefix):])] = v.detach().clone().contiguous()
                break
        else:
            raise KeyError(f"unexpected tensor name {k}")
    return out


LAYOUTS = {
    # transformers 4.3x, as on the hub (llava-hf/llava-1.5-7b-hf)
    "hub": {"lang": "language_model.model.", "vis": "vision_tower.vision_model.",
            "proj": "multi_modal_projector.", "head": "language_model.lm_head."},
    # transformers 4.52 save_pretrained
    "v452": {"lang": "model.language_model.", "vis": "model.vision_tower.vision_model.",
             "proj": "model.multi_modal_projector.", "head": "lm_head."},
}


@step("layouts")
def make_layouts(model, base_folder):
    parts = canonical(model.state_dict())
    names = {}
    for layout, prefixes in LAYOUTS.items():
        names[layout] = {prefixes[kind] + rest: t for (kind, rest), t in parts.items()}
    # hub-sharded: two shards + index, float32, minimal hub-style config.json
    folder = path("tiny-llava-layouts", "hub-sharded", "x")[:-2]
    tensors = names["hub"]
    keys = sorted(tensors)
    half = len(keys) // 2
    weight_map = {}
    for i, chunk in enumerate((keys[:half], keys[half:])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in chunk}, os.path.join(folder, fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in chunk})
    json.dump({"metadata": {"total_size": sum(t.numel() * 4 for t in tensors.values())},
               "weight_map": weight_map},
              open(os.path.join(folder, "model.safetensors.index.json"), "w"), indent=2)
    c = model.config
    hub_config = {  # what a 4.3x config.json lists: only what differs from the defaults
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "ignore_index": -100, "image_token_index": VOCAB_SP, "pad_token_id": VOCAB_SP + 1,
        "projector_hidden_act": "gelu", "vision_feature_layer": -3,
        "vision_feature_select_strategy": "default", "tie_word_embeddings": False,
        "vocab_size": VOCAB, "torch_dtype": "float32", "transformers_version": "4.36.0.dev0",
        "text_config": {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 64,
                        "intermediate_size": 128, "num_hidden_layers": 3,
                        "num_attention_heads": 4, "num_key_value_heads": 2,
                        "max_position_embeddings": 512, "pad_token_id": VOCAB_SP + 1},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32,
                          "intermediate_size": 64, "num_hidden_layers": 4,
                          "num_attention_heads": 4, "image_size": TINY_SIZE, "patch_size": 14,
                          "projection_dim": 32},
    }
    json.dump(hub_config, open(os.path.join(folder, "config.json"), "w"), indent=2)
    # the hub config must describe the same model
    reloaded = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    diff = max((reloaded.state_dict()[k].float() - v.float()).abs().max().item()
               for k, v in model.state_dict().items())
    REPORT["hub_sharded_reload_max_diff"] = diff
    # v452-f16: 4.52 names, float16, the full config
    folder = path("tiny-llava-layouts", "v452-f16", "x")[:-2]
    save_file({k: t.half() for k, t in names["v452"].items()},
              os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(base_folder, "config.json")))
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"), indent=2)
    return {k: t.half() for k, t in names["v452"].items()}


# ---------------------------------------------------------------- images -------------
def make_image(rng, w, h, mode):
    x = np.linspace(0, 1, w)[None, :]
    y = np.linspace(0, 1, h)[:, None]
    base = np.stack([(np.sin(6 * x + 3 * y + k) * 0.5 + 0.5) for k in range(3)], -1)
    noise = rng.normal(0, 0.06, (h, w, 3))
    arr = np.clip((base + noise) * 255, 0, 255).astype(np.uint8)
    im = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(1, max(2, w // 2)), y0 + rng.integers(1, max(2, h // 2))
        d.rectangle([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    if mode == "L":
        return im.convert("L")
    if mode == "RGBA":
        a = Image.fromarray(((x * 0 + y) * 255 * np.ones((h, w))).astype(np.uint8), "L")
        im.putalpha(a)
        return im
    if mode == "LA":
        im = im.convert("L")
        im.putalpha(128)
        return im
    if mode == "P":
        return im.convert("P", palette=Image.ADAPTIVE, colors=64)
    return im


IMAGE_SPECS = [  # (width, height, mode, format)
    (64, 48, "RGB", "PNG"), (320, 240, "RGB", "JPEG"), (240, 320, "RGB", "JPEG"),
    (336, 336, "RGB", "PNG"), (224, 224, "RGB", "JPEG"), (500, 120, "RGB", "JPEG"),
    (120, 500, "RGB", "PNG"), (57, 55, "RGB", "BMP"), (30, 20, "RGB", "PNG"),
    (400, 300, "L", "JPEG"), (100, 130, "L", "PNG"), (200, 150, "RGBA", "PNG"),
    (90, 160, "LA", "PNG"), (180, 120, "P", "GIF"), (150, 150, "P", "PNG"),
    (337, 335, "RGB", "JPEG"), (1000, 60, "RGB", "JPEG"), (13, 400, "RGB", "PNG"),
    (448, 256, "RGB", "JPEG"), (300, 301, "RGBA", "PNG"),
]


def pil_reference(im, size, crop, pad):
    """CLIPImageProcessor's steps done directly with PIL: the "as PIL does it" reference."""
    im = im.convert("RGB")
    if pad:  # LLaVA's expand2square with the mean colour
        w, h = im.size
        bg = tuple(int(m * 255) for m in MEAN)
        if w != h:
            s = max(w, h)
            canvas = Image.new("RGB", (s, s), bg)
            canvas.paste(im, ((s - w) // 2, (s - h) // 2))
            im = canvas
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    im = im.resize((nw, nh), resample=Image.BICUBIC)
    arr = np.asarray(im)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    arr = arr[top:top + crop, left:left + crop]
    return arr  # uint8 [crop, crop, 3]


def normalize(arr):
    x = arr.astype(np.float32) / 255.0
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


@step("images")
def make_images():
    rng = np.random.default_rng(7)
    names = []
    for i, (w, h, mode, fmt) in enumerate(IMAGE_SPECS):
        im = make_image(rng, w, h, mode)
        ext = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "GIF": "gif"}[fmt]
        name = f"img{i:02d}_{w}x{h}_{mode}.{ext}"
        kw = {"quality": 85} if fmt == "JPEG" else {}
        if fmt == "JPEG" and mode not in ("RGB", "L"):
            im = im.convert("RGB")
        im.save(path("images", name), format=fmt, **kw)
        names.append(name)
    return names


@step("preprocess_reference")
def preprocess_reference(names):
    from transformers import CLIPImageProcessor
    proc = CLIPImageProcessor(size={"shortest_edge": TINY_SIZE},
                              crop_size={"height": TINY_SIZE, "width": TINY_SIZE},
                              image_mean=MEAN, image_std=STD, resample=3)
    REPORT["image_processor_class"] = f"{type(proc).__module__}.{type(proc).__name__}"
    tensors, info = {}, []
    worst_proc_vs_pil = 0.0
    fast_diff = None
    try:
        from transformers import CLIPImageProcessorFast
        fast = CLIPImageProcessorFast(size={"shortest_edge": TINY_SIZE},
                                      crop_size={"height": TINY_SIZE, "width": TINY_SIZE},
                                      image_mean=MEAN, image_std=STD, resample=3)
        fast_diff = 0.0
    except Exception:  # noqa: BLE001
        fast = None
    for i, name in enumerate(names):
        im = Image.open(path("images", name))
        im.load()
        pv = proc(images=im, return_tensors="pt")["pixel_values"][0].float()
        ours = normalize(pil_reference(im, TINY_SIZE, TINY_SIZE, pad=False))
        worst_proc_vs_pil = max(worst_proc_vs_pil, (pv - ours).abs().mean().item())
        tensors[f"plain.{i:02d}"] = pv.contiguous()
        tensors[f"pad.{i:02d}"] = normalize(pil_reference(im, TINY_SIZE, TINY_SIZE, pad=True))
        if fast is not None:
            pf = fast(images=im, return_tensors="pt")["pixel_values"][0].float()
            fast_diff = max(fast_diff, (pf - pv).abs().mean().item())
        big = pil_reference(im, 336, 336, pad=False)
        Image.fromarray(big, "RGB").save(path("images", "resized336", f"{i:02d}.png"))
        info.append({"file": name, "mode": im.mode, "size": list(im.size)})
    save_file(tensors, path("images", "preprocess.safetensors"))
    json.dump({"size": TINY_SIZE, "mean": MEAN, "std": STD, "images": info},
              open(path("images", "preprocess.json"), "w"), indent=1)
    REPORT["preprocess_processor_vs_pil_mean_abs"] = worst_proc_vs_pil
    REPORT["preprocess_fast_vs_slow_mean_abs"] = fast_diff
    try:  # transformers' own pad-to-square, where it has one
        from transformers import LlavaImageProcessor
        lp = LlavaImageProcessor(do_pad=True, size={"shortest_edge": TINY_SIZE},
                                 crop_size={"height": TINY_SIZE, "width": TINY_SIZE},
                                 image_mean=MEAN, image_std=STD, resample=3)
        worst = 0.0
        for i, name in enumerate(names):
            im = Image.open(path("images", name))
            pv = lp(images=im, return_tensors="pt")["pixel_values"][0].float()
            worst = max(worst, (pv - tensors[f"pad.{i:02d}"]).abs().mean().item())
        REPORT["pad_llava_processor_vs_pil_mean_abs"] = worst
    except Exception as e:  # noqa: BLE001
        REPORT["pad_llava_processor_vs_pil_mean_abs"] = repr(e)


# ---------------------------------------------------------------- references ---------
CASES = [
    {"prompt": "USER: <image>\nWhat is in the picture? ASSISTANT:", "images": ["img01_320x240_RGB.jpg"]},
    {"prompt": "USER: <image>\nDescribe the image in detail, café 日本 😀. ASSISTANT:", "images": ["img11_200x150_RGBA.png"]},
    {"prompt": "USER: <image>\n<image>\nCompare the two images. ASSISTANT:", "images": ["img02_240x320_RGB.jpg", "img09_400x300_L.jpg"]},
    {"prompt": "USER: What is the capital of France? ASSISTANT:", "images": []},
    {"prompt": "USER: <image>\nA long question about 3.14159 and the quick brown fox, then <image>\nagain? ASSISTANT:", "images": ["img05_500x120_RGB.jpg", "img13_180x120_P.gif"]},
]


def expand(ids, image_id, n):
    out = []
    for t in ids:
        out.extend([image_id] * n if t == image_id else [t])
    return out


def pixel_values_for(names, proc):
    if not names:
        return None
    ims = [Image.open(path("images", n)) for n in names]
    return proc(images=ims, return_tensors="pt")["pixel_values"]


@step("references")
def references(model, tok, ids, folder, tag, n_image_tokens, cases, half_model=None):  # noqa: C901
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
        input_ids = expand(prompt_ids, image_id, n_image_tokens)
        pv = pixel_values_for(case["images"], proc)
        check = None
        try:  # the processor's own expansion must agree with ours
            from transformers import LlavaProcessor
            lp = LlavaProcessor(image_processor=proc, tokenizer=tok, patch_size=14,
                                vision_feature_select_strategy=model.config.vision_feature_select_strategy,
                                num_additional_image_tokens=1)
            ims = [Image.open(path("images", n)) for n in case["images"]] or None
            check = lp(images=ims, text=case["prompt"], return_tensors="pt")["input_ids"][0].tolist() == input_ids
        except Exception as e:  # noqa: BLE001
            check = repr(e)
        captured.clear()
        x = torch.tensor([input_ids])
        with torch.no_grad():
            out = m64(input_ids=x, pixel_values=None if pv is None else pv.double())
            logits = out.logits[0]
            generated, margins, seq = [], [], list(input_ids)
            for _ in range(32):  # plain greedy, full recompute, no EOS stop
                lg = m64(input_ids=torch.tensor([seq]),
                         pixel_values=None if pv is None else pv.double()).logits[0, -1]
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
            tensors["image_features"] = captured["features"].float().contiguous()
        save_file(tensors, path("reference", f"{tag}_case{ci}.safetensors"))
        meta.append({"file": f"{tag}_case{ci}.safetensors", "prompt": case["prompt"],
                     "images": case["images"], "prompt_ids": prompt_ids,
                     "processor_expansion_agrees": check, "min_greedy_margin": min(margins),
                     "greedy": generated})
    if half_model is not None:  # float16 weights, computed in float64: for the f16 layout
        m16 = LlavaForConditionalGeneration.from_pretrained(folder).eval()
        with torch.no_grad():
            for p in m16.parameters():
                p.copy_(p.half().float())
        m16 = m16.double()
        case = cases[0]
        input_ids = expand(tok(case["prompt"]).input_ids, image_id, n_image_tokens)
        pv = pixel_values_for(case["images"], proc)
        with torch.no_grad():
            lg = m16(input_ids=torch.tensor([input_ids]), pixel_values=pv.double()).logits[0]
        save_file({"input_ids": torch.tensor(input_ids), "pixel_values": pv.float().contiguous(),
                   "logits": lg.float().contiguous()},
                  path("reference", f"{tag}_f16weights_case0.safetensors"))
    json.dump(meta, open(path("reference", f"{tag}_cases.json"), "w"), indent=1, ensure_ascii=False)
    REPORT[f"margins_{tag}"] = [m["min_greedy_margin"] for m in meta]
    REPORT[f"expansion_{tag}"] = [m["processor_expansion_agrees"] for m in meta]


def main():
    os.makedirs(OUT, exist_ok=True)
    folder = path("tiny-llava", "x")[:-2]
    made = make_tokenizer(folder)
    tok, ids = made if made else (None, None)
    if tok is not None:
        tokenizer_reference(tok, folder)
    model = make_model(folder, "a", seed=1)
    names = make_images()
    if names:
        preprocess_reference(names)
    half = make_layouts(model, folder) if model is not None else None
    if model is not None and tok is not None:
        references(model, tok, ids, folder, "a", 16, CASES, half_model=half)
    folder_b = path("tiny-llava-b", "x")[:-2]
    model_b = make_model(folder_b, "b", seed=2)
    if model_b is not None and tok is not None:
        for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            if os.path.exists(os.path.join(folder, f)):
                shutil.copy(os.path.join(folder, f), folder_b)
        references(model_b, tok, ids, folder_b, "b", 17, CASES[:3])
    shutil.rmtree(path("work", "x")[:-2], ignore_errors=True)
    json.dump(REPORT, open(path("report.json"), "w"), indent=1, default=str)
    print(json.dumps(REPORT, indent=1, default=str)[:6000])


if __name__ == "__main__":
    main()
