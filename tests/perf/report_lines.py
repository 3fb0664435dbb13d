#!/usr/bin/env python3
"""A line per run from the JSON reports the 7B scripts collect (tests/perf/*_7b.sh,
tests/gpu/ptx_check.sh), so that a device call's output reads as a table.

    report_lines.py quantized LABEL FILE   tests/gpu/quantized_7b.py's output: a line per run
        (none / int8 / int4): language prefill, prefill with the vision tower, decode at
        batch 1 / 8 / 32 (tokens/s), and against float16 the max relative error and top-1
    report_lines.py bench LABEL FILE       `llava-pipe bench --json`: failed requests, time to
        first token (median ms), decode at batch 1 / 8 / 32 through the pipeline
    report_lines.py check_7b FILE          tests/gpu/check_7b.py's output: a line per build
        (max relative error, first greedy tokens equal, top-1 over all positions)

Exits 1 with the file's tail where it holds no report.
"""
import json
import sys


def report_in(path, opening):
    text = open(path).read()
    try:
        return json.loads(text[text.index(opening):])
    except ValueError:
        sys.exit("%s holds no report:\n%s" % (path, text[-2000:]))


def quantized(label, path):
    report = report_in(path, "{\n")
    keys = ("language_prefill_tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s_batch1",
            "decode_tokens_per_s_batch8", "decode_tokens_per_s_batch32")
    print(label, "columns: run, language prefill, prefill with vision, decode b1 / b8 / b32,"
          " vs float16: max relative error, top-1")
    for run in ("none", "int8", "int4"):
        if run not in report:
            continue
        entry = report[run]
        if entry.get("exit_code"):
            print(label, run, "exit", entry["exit_code"], entry.get("stderr", "")[-300:])
            continue
        accuracy = entry.get("vs_float16", {})
        print(label, run, *(entry.get(k) for k in keys),
              *(round(accuracy[k], 4) for k in ("max_relative_error", "top1_agreement") if k in accuracy))


def bench(label, path):
    try:
        report = json.load(open(path))
    except (OSError, ValueError) as e:
        sys.exit("%s: no report (%s)" % (label, e))
    decode = report["decode"]
    print(label, "failed", report["failed"], "ttft median ms", round(report["ttft_ms"]["median"], 2),
          "decode b1 / b8 / b32",
          *(round(decode[k]["tokens_per_s"], 1) for k in ("batch1", "batch8", "batch32") if k in decode))


def check_7b(path):
    report = report_in(path, "{")
    for tool, entry in (report.get("builds") or {"the build": report}).items():
        first = entry.get("first_greedy_token_identical", [])
        print("check_7b", tool, "max relative error", entry.get("max_relative_error"), "first greedy token",
              sum(first), "of", len(first), "top-1 all positions", entry.get("top1_agreement_all_positions"))


if __name__ == "__main__":
    kind, args = sys.argv[1], sys.argv[2:]
    {"quantized": quantized, "bench": bench, "check_7b": check_7b}[kind](*args)
