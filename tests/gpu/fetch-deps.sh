#!/usr/bin/env bash
# DEVELOPMENT MACHINE ONLY (tests/gpu/README.md). The project's GPU machine reaches no
# package registry, so its Debian packages travel with the work tree: run this here, from
# the project's root, on a Debian 12 machine that reaches Debian's registry. It downloads
# the packages a GPU build needs beside the GPU machine's own pip-installed PyTorch into
# .gpu-deps/debs/ (ignored by git). There, either
#   LLAVA_PIPE_DEBS=.gpu-deps/debs bash launch/quickstart.sh gpu [CHECKPOINT_DIR]
# or, for commands of your own,
#   source tests/gpu/on-device.sh
# A user's machine needs none of this: `bash launch/quickstart.sh gpu` installs with apt.
set -euo pipefail
root="$(git rev-parse --show-toplevel)"
dest="$root/.gpu-deps/debs"
mkdir -p "$dest"
# shellcheck disable=SC2206  # EXTRA_GPU_DEBS: more package names, split on spaces
pkgs=(
  libzmq5 libzmq3-dev cppzmq-dev libsodium23 libpgm-5.3-0 libnorm1
  libyaml-cpp0.7 libyaml-cpp-dev
  libcapnp-0.9.2 libcapnp-dev capnproto
  libsentencepiece0 libsentencepiece-dev
  nlohmann-json3-dev libstb0 libstb-dev
  libjpeg62-turbo libjpeg62-turbo-dev
  libgtest-dev libgmock-dev libbenchmark1debian libbenchmark-dev
  libfmt9 libfmt-dev libspdlog1.10 libspdlog-dev libcli11-dev
  libcpp-httplib-dev libcpp-httplib0.11 libssl-dev zlib1g-dev libbrotli-dev libbrotli1
  ${EXTRA_GPU_DEBS:-}
)
compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null || apt-get update -q >/dev/null
(cd "$dest" && apt-get download -q "${pkgs[@]}" >/dev/null)
du -sh "$dest" | sed 's/^/gpu deps: /'
