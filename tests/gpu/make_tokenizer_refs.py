#!/usr/bin/env python3
"""Reference ids and decoded text from transformers' fast tokenizer for the real vocabulary.

Run from the repository root on the GPU machine (transformers + tokenizers, no network):
    python3 tests/gpu/make_tokenizer_refs.py
Reads tests/data/vocab/{legacy,legacy-false}/tokenizer.json (made by
tests/data/vocab/make_variants.py) and writes tests/data/vocab/refs.json, which
tests/coordinator/hf_tokenizer_test.cpp compares with ours, id by id.

The reference is transformers.PreTrainedTokenizerFast(tokenizer_file=...): the file exactly
as it declares itself, as LlavaProcessor's tokenizer runs it. The script also encodes with
tokenizers.Tokenizer.from_file and AutoTokenizer.from_pretrained(folder) (the way
AutoProcessor loads a checkpoint) and records how many strings each of those agrees on.
The strings are made here, deterministically (a fixed list plus seeded mixes).
"""
import json
import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = os.path.join(ROOT, "tests", "data", "vocab")
VARIANTS = ["legacy", "legacy-false"]
TEMPLATE = "USER: <image>\n{} ASSISTANT:"  # LLaVA-1.5's chat template, one image


def fixed_strings():
    ascii_ = [
        "Hello", "hello", "Hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
        "What is in the picture?", "Describe the image in detail.", "a", "A", "I", "ok", "x y z",
        "It's a dog's life; isn't it?", "e-mail: someone@example.com", "https://example.org/path?q=1&r=2",
        "UPPER CASE WORDS", "MiXeD CaSe", "don't", "\"quoted\"", "'single'", "(parens) [brackets] {braces}",
        "semi;colon:colon", "100% sure", "#hashtag @mention", "a.b.c", "...", "?!", "-", "--", "___",
        "tokenization", "antidisestablishmentarianism", "supercalifragilisticexpialidocious",
        "The cat sat on the mat.", "USER:", "ASSISTANT:", "Two red circles at the top left.", "Blue.",
        "What colour is the square?", "pneumonoultramicroscopicsilicovolcanoconiosis",
        "s", "st", "the", "The", "THE", "of", "and", "zzzzzzzzzzzzzzzz", "aaaaaaaa", "ab" * 20,
    ]
    spaces = [
        "", " ", "  ", "   ", "    ", " " * 16, " a", "  a", "   a", "a ", "a  ", "a   ", " a ", "  a  ",
        "a  b", "a   b", "a    b", " Hello", "  Hello", "Hello ", "Hello  ", " Hello world ",
        "Hello   world", "  leading and trailing  ", "one two  three   four    five",
        " .", ". ", " , ", "word  .", "\u2581", "\u2581a", "a\u2581b", " \u2581 ", "\u2581\u2581",
    ]
    whitespace = [
        "\n", "\n\n", "\t", "\t\t", "\r\n", "\r", "a\nb", "a\n\nb", "a\tb", "a \n b", "line one\nline two",
        "\nleading newline", "trailing newline\n", "\ttab first", "tab last\t", " \n ", "\n \n",
        "col1\tcol2\tcol3", "a\u00a0b", "a\u2003b", "a\u200bb", "\u3000", "x\fy", "x\vy",
        "Para one.\n\nPara two.\n",
    ]
    cjk = [
        "日本語", "日本語のテキスト", "こんにちは世界", "カタカナ", "中文", "你好，世界！", "我爱北京天安门",
        "한국어", "안녕하세요", "漢字とかな", "東京は日本の首都です。", "中文 English 混合", "汉字",
        "繁體中文字", "ㄅㄆㄇ", "一二三四五六七八九十", " 日本", "日本 ", "北京\n上海", "「引用」",
    ]
    emoji = [
        "😀", "🎉", "😀🎉", "emoji 😀🎉 done", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🇯🇵🇺🇸", "❤️", "☃", "✨ sparkle",
        "🙂 hi", "hi 🙂", "🦙🦙🦙", "🏳️‍🌈", "1️⃣", "🤖 robot", "🍕🍔🍟", " 😀", "😀 ",
    ]
    combining = [
        "e\u0301", "cafe\u0301", "café", "naïve", "n\u0303", "Ångström", "A\u030a", "ñandú", "Zürich",
        "a\u0308\u0304", "Ελληνικά", "Русский текст", "עברית", "العربية", "हिन्दी", "ไทย", "Tiếng Việt",
        "ﬁ ligature", "①②③", "ｆｕｌｌｗｉｄｔｈ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝕏", "\u00ad", "x\u0336y", "Ω≈ç√∫",
    ]
    digits = [
        "0", "1", "12", "123", "1234", "12345", "3.14159", "-42", "1,000,000", "2026-12-03", "10:30",
        "$19.99", "1e-4", "0x1F", "99 bottles", "v1.2.3", "+1 (555) 010-9999", "½", "²³", "٣٤٥",
    ]
    code = [
        "int main() { return 0; }", "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {}",
        "if x == 1:\n\tpass", "std::vector<int32_t> ids;", "#include <iostream>", "console.log('hi');",
        "SELECT * FROM t WHERE id = 1;", "a && b || !c", "x += 1; y -= 2;", "<div class=\"a\">b</div>",
        "{\"key\": [1, 2, 3]}", "`code`", "```python\nprint(1)\n```", "$ ls -la /tmp", "  indented()",
        "\t\tdouble_tab()", "lambda x: x**2", "a->b", "// comment", "/* block */", "x<image>y",
        "<imag", "<image", "image>", "<<image>>", "</image>", "<IMAGE>", "<s", "s>",
    ]
    image = [
        "<image>", "<image>\n", "<image>\nWhat is this?", "<image>What is this?", "<image> What is this?",
        "What is <image> this?", "What is<image>this?", "Left: <image> right: <image>", "<image><image>",
        "<image>\n<image>\nCompare.", "<image> <image>", "a <image>", "a<image>", "<image> a", "<image>  a",
        "<image>\n\nDescribe.", "<image>\t", "end <image>", " <image>", "  <image>  ", "<image>日本",
        "<image>😀", "<image>123", "<image>\u2581", "USER: <image>\nWhat is in the picture? ASSISTANT:",
    ]
    special = [
        "<s>", "</s>", "<unk>", "<pad>", "<s>hello", "<s> hello", "<s>  hello", "</s>hello", "</s> hello",
        "hello</s>", "hello </s>", "<pad>x", "<pad> x", "x<pad>", "<unk>x", "<s><s>", "<s></s>",
        "<s>\nnew line", "</s>\n", "<image><s>", "<s><image>", "A</s>B</s>C", "<pad><pad>",
        "text<s>text", " <s> ", "<s>日本", "<s>😀", "</s>1",
    ]
    groups = [ascii_, spaces, whitespace, cjk, emoji, combining, digits, code, image, special]
    out = []
    for group in groups:
        out.extend(group)
    return out


def mixed_strings(count):
    rng = random.Random(18)
    fragments = ["Hello", "world", "日本語", "😀", "café", "e\u0301", "<image>", "</s>", "<s>", "<pad>",
                 "123", "x = 1;", "\n", "\t", " ", "  ", "What", "is", "this", "?", "🇫🇷", "▁", "Ω",
                 "ñ", "def", "return", "안녕", "the", "picture", ".", ",", "𝔘", "1.5", "(", ")"]
    seps = ["", " ", "  ", "\n", "\t", " \n"]
    out = []
    while len(out) < count:
        n = rng.randint(2, 6)
        parts = [rng.choice(fragments) for _ in range(n)]
        s = parts[0]
        for p in parts[1:]:
            s += rng.choice(seps) + p
        if rng.random() < 0.2:
            s = " " + s
        if rng.random() < 0.2:
            s = s + " "
        if s not in out:
            out.append(s)
    return out


def strings():
    fixed = fixed_strings()
    out = fixed + [s for s in mixed_strings(120) if s not in fixed]
    assert len(out) >= 300 and len(set(out)) == len(out), (len(out), len(set(out)))
    return out


def main():
    import tokenizers
    import transformers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    for variant in VARIANTS:
        if not os.path.exists(os.path.join(VOCAB, variant, "tokenizer.json")):
            subprocess.run([sys.executable, os.path.join(VOCAB, "make_variants.py")], check=True)
    base = strings()
    texts = []
    for s in base:
        texts.append(s)
        texts.append(TEMPLATE.format(s))
    result = {"made_by": "tests/gpu/make_tokenizer_refs.py",
              "reference": "transformers.PreTrainedTokenizerFast(tokenizer_file=...), "
                           "input_ids with add_special_tokens=True (ids) and False (ids_no_bos); "
                           "decode(ids, skip_special_tokens=True)",
              "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
              "template": TEMPLATE, "variants": {}}
    for variant in VARIANTS:
        folder = os.path.join(VOCAB, variant)
        fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
        raw = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        try:
            auto = AutoTokenizer.from_pretrained(folder)
        except Exception as e:  # noqa: BLE001  (recorded, not fatal)
            auto = None
            print(f"{variant}: AutoTokenizer failed: {e}", file=sys.stderr)
        cases, raw_agrees, auto_agrees = [], 0, 0
        for text in texts:
            ids = fast(text, add_special_tokens=True).input_ids
            ids_no_bos = fast(text, add_special_tokens=False).input_ids
            decoded = fast.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            raw_agrees += raw.encode(text).ids == ids and \
                raw.encode(text, add_special_tokens=False).ids == ids_no_bos
            if auto is not None:
                auto_agrees += auto(text).input_ids == ids
            cases.append({"text": text, "ids": ids, "ids_no_bos": ids_no_bos, "decoded": decoded})
        summary = {"class": type(fast).__name__, "strings": len(texts),
                   "tokenizers_from_file_agrees": raw_agrees,
                   "auto_tokenizer": type(auto).__name__ if auto is not None else None,
                   "auto_tokenizer_agrees": auto_agrees}
        print(variant, json.dumps(summary))
        result["variants"][variant] = {"summary": summary, "cases": cases}
    path = os.path.join(VOCAB, "refs.json")
    with open(path, "w", encoding="utf-8") as f:
        # One case a line: reviewable diffs, modest size.
        f.write("{\n")
        head = {k: v for k, v in result.items() if k != "variants"}
        for k, v in head.items():
            f.write(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},\n")
        f.write(' "variants": {\n')
        for i, (variant, data) in enumerate(result["variants"].items()):
            f.write(f"  {json.dumps(variant)}: {{\n   \"summary\": {json.dumps(data['summary'])},\n")
            f.write('   "cases": [\n')
            lines = [json.dumps(c, ensure_ascii=False) for c in data["cases"]]
            f.write(",\n".join("    " + line for line in lines))
            f.write("\n   ]\n  }" + ("," if i + 1 < len(result["variants"]) else "") + "\n")
        f.write(" }\n}\n")
    print(f"wrote {path}: {len(texts)} strings x {len(VARIANTS)} variants")


if __name__ == "__main__":
    main()
