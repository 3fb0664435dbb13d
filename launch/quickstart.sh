#!/usr/bin/env bash
# The two set-up commands of the README, for a fresh Debian 12 machine:
#   bash launch/quickstart.sh demo   install what is missing, build, run configs/demo.yaml
#   bash launch/quickstart.sh test   install what is missing, build, run the whole test suite
# Environment: BUILD_DIR (default build), LLAVA_PIPE_CMAKE_ARGS (extra cmake arguments),
# JOBS (parallel build jobs, default: number of cores), LLAVA_PIPE_FUZZ_SECONDS (test: time
# for each libFuzzer target, default 60; 0 skips them).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
what="${1:-}"
case "$what" in demo|test|build) ;; *) echo "usage: $0 demo|test|build" >&2; exit 2 ;; esac

packages=(build-essential cmake ninja-build pkg-config
  libtorch-dev libzmq3-dev cppzmq-dev libcapnp-dev capnproto libyaml-cpp-dev
  libsentencepiece-dev nlohmann-json3-dev libstb-dev libjpeg62-turbo-dev libgtest-dev libgmock-dev
  clang libclang-rt-14-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

build="${BUILD_DIR:-build}"
jobs="${JOBS:-$(nproc)}"
# shellcheck disable=SC2086
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${LLAVA_PIPE_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j "$jobs"

case "$what" in
  demo)
    "$build/llava-pipe" run configs/demo.yaml \
      --image tests/data/images/img01_320x240_RGB.jpg --prompt "What is in the picture?"
    ;;
  test)
    # Fuzzers first, so that ctest's summary is the last word: a fixed seed and input count
    # (reproducible); LLAVA_PIPE_FUZZ_SECONDS=N explores with a random seed, 0 skips.
    case "${LLAVA_PIPE_FUZZ_SECONDS:-}" in
      "") bash tests/fuzz/run.sh ;;
      0) ;;
      *) bash tests/fuzz/run.sh "$LLAVA_PIPE_FUZZ_SECONDS" ;;
    esac
    cd "$build"
    ctest --output-on-failure -j "$jobs"
    ;;
esac
