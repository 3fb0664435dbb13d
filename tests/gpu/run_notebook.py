#!/usr/bin/env python3
"""Runs launch/colab.ipynb's code cells in order, as Colab would, on a GPU machine, and writes
a transcript (each cell's source, output, status and time).

    python3 tests/gpu/run_notebook.py launch/colab.ipynb --checkpoint /tmp/nb/llava-7b \\
        --transcript tests/perf/results/colab_notebook-h200-DATE.txt

Every cell runs unchanged except the one tagged "download" (the hub is out of reach here):
in its place, CHECKPOINT is set to --checkpoint, which tests/gpu/make_7b.py fills with a
random LLaVA-1.5-7B-shaped checkpoint (kept if it is already there). Python cells share one
namespace; a line starting with "!" runs in bash (as IPython's shell escape, without its
{}/$ expansion, which the notebook does not use); "%%bash" cells run in bash; "%cd" and
"%env" work; other magics are refused. The first failing cell (an exception, or a shell
command with a non-zero exit) ends the run with exit code 1.

The development machine has no package registry: there, pass the .deb switch through the
environment (LLAVA_PIPE_DEBS=.gpu-deps/debs; see tests/gpu/README.md). The cells themselves
do not change.
"""
import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


class Tee:
    """Writes to the console and the transcript at once."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
            s.flush()
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


class ShellFailed(Exception):
    pass


def load_notebook(path):
    nb = json.load(open(path))
    for key in ("nbformat", "nbformat_minor", "metadata", "cells"):
        if key not in nb:
            raise SystemExit("%s: not a notebook: no '%s'" % (path, key))
    if nb["nbformat"] != 4:
        raise SystemExit("%s: nbformat %s (expected 4)" % (path, nb["nbformat"]))
    for i, cell in enumerate(nb["cells"]):
        for key in ("cell_type", "metadata", "source"):
            if key not in cell:
                raise SystemExit("%s: cell %d has no '%s'" % (path, i, key))
    return nb


def shell(command, out):
    """Runs command in bash from the current folder, its output (stdout and stderr, as it
    comes: a streamed answer has no newlines) to out."""
    process = subprocess.Popen(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while True:
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            break
        out.write(chunk.decode("utf-8", "replace"))
    code = process.wait()
    if code != 0:
        raise ShellFailed("exit code %d: %s" % (code, command))


def as_python(source):
    """The cell's source with IPython's line syntax turned into calls of _shell / os."""
    lines = []
    for line in source.split("\n"):
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if stripped.startswith("!"):
            command = stripped[1:]
            if re.search(r"[{}$]", command):
                raise SystemExit("unsupported shell escape (IPython would expand {} or $): " + line)
            lines.append("%s_shell(%r)" % (indent, command))
        elif stripped.startswith("%cd "):
            lines.append("%sos.chdir(%r)" % (indent, os.path.expanduser(stripped[4:].strip())))
        elif stripped.startswith("%env "):
            key, _, value = stripped[5:].strip().partition("=")
            lines.append("%sos.environ[%r] = %r" % (indent, key.strip(), value.strip()))
        elif stripped.startswith("%"):
            raise SystemExit("unsupported magic: " + line)
        else:
            lines.append(line)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook")
    parser.add_argument("--checkpoint", required=True, help="folder for make_7b.py's random 7B checkpoint")
    parser.add_argument("--transcript", required=True)
    args = parser.parse_args()

    nb = load_notebook(args.notebook)
    downloads = [c for c in nb["cells"] if "download" in c["metadata"].get("tags", [])]
    if len(downloads) != 1:
        raise SystemExit("%s: %d cells tagged 'download' (expected 1)" % (args.notebook, len(downloads)))
    checkpoint = os.path.abspath(args.checkpoint)
    transcript_path = os.path.abspath(args.transcript)
    os.chdir(ROOT)
    if os.environ.get("LLAVA_PIPE_DEBS"):
        # Development machine: the cells' programs load the unpacked libraries at run time,
        # so the whole run takes on-device.sh's environment (LD_LIBRARY_PATH, ...).
        env = subprocess.check_output(["bash", "-c", "source tests/gpu/on-device.sh >&2 && env -0"])
        os.environ.update(dict(item.split("=", 1) for item in env.decode().split("\0") if "=" in item))

    with open(transcript_path, "w") as transcript:
        out = Tee(sys.stdout, transcript)
        out.write("notebook: %s\nstarted: %s\nLLAVA_PIPE_DEBS: %s\n" % (
            args.notebook, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            os.environ.get("LLAVA_PIPE_DEBS", "(unset: apt-get)")))
        namespace = {"__name__": "__main__", "os": os, "_shell": lambda c: shell(c, out)}
        number = 0
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            number += 1
            source = "".join(cell["source"])
            replaced = cell in downloads
            if replaced:
                source = ("CHECKPOINT = %r\n" % checkpoint +
                          "if not os.path.exists(os.path.join(CHECKPOINT, 'config.json')):\n"
                          "    !python3 %s %s\n" % (os.path.join(ROOT, "tests", "gpu", "make_7b.py"), checkpoint) +
                          "print(CHECKPOINT)")
            out.write("\n=== cell %d%s (in %s) ===\n%s\n--- output ---\n" % (
                number, ", the download replaced by make_7b.py" if replaced else "", os.getcwd(), source))
            start = time.time()
            try:
                with contextlib.redirect_stdout(out):
                    if source.startswith("%%bash"):
                        shell(source.split("\n", 1)[1] if "\n" in source else "", out)
                    else:
                        exec(compile(as_python(source), "cell %d" % number, "exec"), namespace)
            except (Exception, SystemExit) as e:  # the cell's own failure, reported as the notebook shows it
                out.write("\n--- cell %d failed after %.1f s: %s: %s ---\n" % (
                    number, time.time() - start, type(e).__name__, e))
                return 1
            out.write("\n--- cell %d ok, %.1f s ---\n" % (number, time.time() - start))
        out.write("\nall %d code cells ran\n" % number)
    return 0


if __name__ == "__main__":
    sys.exit(main())
