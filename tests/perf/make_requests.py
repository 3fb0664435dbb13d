#!/usr/bin/env python3
"""A JSONL batch for `llava-pipe run --requests`: COUNT requests of one image each (cycling
over tests/data/images) and NEW_TOKENS new tokens.
    python3 tests/perf/make_requests.py OUT.jsonl COUNT NEW_TOKENS
"""
import json
import os
import sys

IMAGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "images")


def write_requests(path, count, new_tokens):
    images = sorted(f for f in os.listdir(IMAGES) if f.startswith("img"))
    with open(path, "w") as out:
        for i in range(count):
            out.write(json.dumps({"id": i, "image": os.path.abspath(os.path.join(IMAGES, images[i % len(images)])),
                                  "prompt": "Describe the picture.", "max_new_tokens": new_tokens}) + "\n")


if __name__ == "__main__":
    write_requests(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
