#!/usr/bin/env python3
"""Images tagged with every Exif orientation, and what transformers makes of them.

Run where transformers and PIL are installed (the GPU machine; no GPU is needed), from the
project's root:

    python3 tests/gpu/make_exif_refs.py tests/data/images/exif

It writes, into that folder:
  o1.jpg ... o8.jpg   one picture (asymmetric, so every turn shows) saved as JPEG with
                      Exif Orientation 1..8 (PIL's little-endian Exif)
  o6_be.jpg           Orientation 6 in a big-endian ("MM") Exif block written by hand
  o8.png              a PNG whose eXIf chunk says 8
  o6_upright.png      o6.jpg as load_image shows it (decoded, turned), losslessly: the
                      pipeline test feeds both and expects the same answer
  exif.safetensors    pixel values from transformers' load_image + CLIPImageProcessor at
                      the tiny model's size (tests/data/tiny-llava/preprocessor_config.json)
  exif.json           per file: orientation, the upright size load_image gives
"""
import json
import os
import struct
import sys

import numpy as np
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from transformers import CLIPImageProcessor
from transformers.image_utils import load_image

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/data/images/exif"
TINY = os.path.join(os.path.dirname(__file__), "..", "data", "tiny-llava")


def picture():
    # 150 x 90: wide, with a different colour in each corner and a diagonal, so each of the
    # eight orientations gives different pixels.
    rng = np.random.default_rng(3)
    base = np.zeros((90, 150, 3), np.uint8)
    base[..., 0] = np.linspace(0, 255, 150)[None, :]
    base[..., 1] = np.linspace(0, 255, 90)[:, None]
    base[..., 2] = 80
    base = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(base, "RGB")
    d = ImageDraw.Draw(im)
    d.rectangle([5, 5, 40, 30], fill=(255, 0, 0))
    d.ellipse([100, 50, 140, 85], fill=(0, 0, 255))
    d.polygon([(60, 10), (90, 10), (60, 60)], fill=(255, 255, 0))
    return im


def exif_bytes(orientation, big_endian=False):
    if not big_endian:
        exif = Image.Exif()
        exif[0x0112] = orientation
        return exif.tobytes()
    # TIFF header, IFD0 at offset 8 with one SHORT entry, no next IFD.
    tiff = b"MM" + struct.pack(">HI", 42, 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    return b"Exif\x00\x00" + tiff


def main():
    os.makedirs(OUT, exist_ok=True)
    im = picture()
    files = []
    for o in range(1, 9):
        name = f"o{o}.jpg"
        im.save(os.path.join(OUT, name), "JPEG", quality=92, exif=exif_bytes(o))
        files.append((name, o))
    im.save(os.path.join(OUT, "o6_be.jpg"), "JPEG", quality=92, exif=exif_bytes(6, True))
    files.append(("o6_be.jpg", 6))
    im.save(os.path.join(OUT, "o8.png"), "PNG", exif=exif_bytes(8))
    files.append(("o8.png", 8))
    upright = load_image(os.path.join(OUT, "o6.jpg")).convert("RGB")
    upright.save(os.path.join(OUT, "o6_upright.png"), "PNG")
    files.append(("o6_upright.png", 1))

    proc = CLIPImageProcessor.from_pretrained(TINY)
    tensors, info = {}, []
    for i, (name, o) in enumerate(files):
        path = os.path.join(OUT, name)
        with Image.open(path) as raw:
            tagged = raw.getexif().get(0x0112, 1)
        assert tagged == o, (name, tagged, o)
        shown = load_image(path)
        pv = proc(images=shown, return_tensors="pt")["pixel_values"][0].float().contiguous()
        tensors[f"exif.{i:02d}"] = pv
        info.append({"file": name, "orientation": o, "width": shown.width, "height": shown.height})
    # The tags must matter: orientation 6 turns the 150x90 picture to 90x150.
    assert info[5]["width"] == 90 and info[5]["height"] == 150, info[5]
    assert (tensors["exif.05"] - tensors["exif.00"]).abs().max() > 0.5
    save_file(tensors, os.path.join(OUT, "exif.safetensors"))
    import transformers
    json.dump({"transformers": transformers.__version__, "images": info},
              open(os.path.join(OUT, "exif.json"), "w"), indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
