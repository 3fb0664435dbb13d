#!/usr/bin/env bash
# The README's set-up commands. On a fresh Debian 12 machine (CPU; Debian's LibTorch):
#   bash launch/quickstart.sh demo   install what is missing, build, run configs/demo.yaml
#   bash launch/quickstart.sh test   install what is missing, build, run the whole test suite
# On a machine with an NVIDIA GPU (Ubuntu 22.04/24.04 or Debian 12, with the NVIDIA driver,
# the CUDA toolkit and a pip-installed PyTorch):
#   bash launch/quickstart.sh gpu [CHECKPOINT_DIR]
#       install what is missing, build with our CUDA kernels against PyTorch's LibTorch
#       into build-gpu, then `llava-pipe check` configs/colab-l4.yaml on CHECKPOINT_DIR
# Environment: BUILD_DIR (default build; gpu: build-gpu), LLAVA_PIPE_CMAKE_ARGS (extra cmake
# arguments), JOBS (parallel build jobs, default: number of cores), LLAVA_PIPE_FUZZ_SECONDS
# (test: time for each libFuzzer target, default 60; 0 skips them); gpu: LLAVA_PIPE_CUDA_ARCHS
# (default native: this machine's GPUs), LLAVA_PIPE_CONFIG (default configs/colab-l4.yaml).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
what="${1:-}"
case "$what" in demo|test|build|gpu) ;; *) echo "usage: $0 demo|test|build|gpu [CHECKPOINT_DIR]" >&2; exit 2 ;; esac

# Installs (apt-get) those of the named Debian/Ubuntu packages that are not installed.
install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# gpu [CHECKPOINT_DIR]: a user's CUDA machine. Checks for what cannot be installed by apt
# (driver, CUDA toolkit, PyTorch), installs the rest, builds with our kernels, runs check.
gpu_setup() {
  local checkpoint="${1:-}"
  fail() { echo "quickstart gpu: $*" >&2; exit 1; }
  command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this mode needs an NVIDIA GPU and its driver"
  nvidia-smi --query-gpu=index,name,compute_cap,memory.total --format=csv,noheader | sed 's/^/gpu: /'
  local nvcc="${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
  [ -x "$nvcc" ] || fail "no nvcc (not on PATH, not /usr/local/cuda/bin/nvcc): install the CUDA toolkit" \
    "(https://developer.nvidia.com/cuda-downloads) or name its compiler in CUDACXX"
  export CUDACXX="$nvcc"
  "$nvcc" --version | tail -1 | sed 's/^/nvcc: /'
  local torch_prefix
  torch_prefix="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')" ||
    fail "python3 cannot import torch: install PyTorch with CUDA (pip install torch)"
  python3 -c 'import sys, torch; print("pytorch:", torch.__version__, "CUDA", torch.version.cuda); sys.exit(0 if torch.version.cuda else 1)' ||
    fail "this PyTorch has no CUDA: install a CUDA build (pip install torch)"
  # LibTorch's std::string must be the one of the Debian/Ubuntu libraries we link (pip's
  # wheels use it from PyTorch 2.7 on).
  python3 -c 'import sys, torch; sys.exit(0 if torch.compiled_with_cxx11_abi() else 1)' ||
    fail "this PyTorch ($(python3 -c 'import torch; print(torch.__version__)')) uses the pre-C++11 string ABI;" \
      "install PyTorch 2.7 or newer"
  # Torch's CMake files look for the GPUs to build for; name them, as our kernels' default does.
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | sort -u | paste -sd ';')"
    export TORCH_CUDA_ARCH_LIST
  fi

  if [ -n "${LLAVA_PIPE_DEBS:-}" ]; then
    # ===== DEVELOPMENT MACHINE ONLY (tests/gpu/README.md): no package registry there; the
    # ===== Debian packages come as .deb files (tests/gpu/fetch-deps.sh), unpacked, not apt.
    source tests/gpu/on-device.sh
  else
    local jpeg
    # shellcheck disable=SC1091
    case "$(. /etc/os-release && echo "$ID")" in
      ubuntu) jpeg=libjpeg-turbo8-dev ;;
      debian) jpeg=libjpeg62-turbo-dev ;;
      *) jpeg=libjpeg-dev; echo "quickstart gpu: not Ubuntu or Debian; trying Debian's package names" >&2 ;;
    esac
    install_missing build-essential cmake ninja-build pkg-config git python3 \
      libzmq3-dev cppzmq-dev libcapnp-dev capnproto libyaml-cpp-dev libsentencepiece-dev \
      nlohmann-json3-dev libstb-dev "$jpeg" libgtest-dev libgmock-dev libcli11-dev \
      libcpp-httplib-dev libcurl4-openssl-dev
  fi

  local build="${BUILD_DIR:-build-gpu}" jobs="${JOBS:-$(nproc)}"
  # shellcheck disable=SC2086
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_prefix" \
    -DCMAKE_CUDA_COMPILER="$nvcc" -DLLAVA_PIPE_CUDA_ARCHS="${LLAVA_PIPE_CUDA_ARCHS:-native}" \
    ${LLAVA_PIPE_CMAKE_ARGS:-} >/dev/null
  cmake --build "$build" -j "$jobs" --target llava-pipe llava-stage
  [ -f "$build/stages/libllava_cuda_kernels.a" ] ||
    fail "$build was configured without our CUDA kernels (LibTorch without CUDA, or no CUDA compiler): see $build/CMakeCache.txt"
  echo "built: $build/llava-pipe, $build/llava-stage"

  if [ -z "$checkpoint" ]; then
    echo "next: bash launch/quickstart.sh gpu CHECKPOINT_DIR  (a llava-hf folder, e.g. llava-hf/llava-1.5-7b-hf)"
    return 0
  fi
  [ -f "$checkpoint/config.json" ] || fail "'$checkpoint' has no config.json: name a llava-hf checkpoint folder"
  # The config with model.checkpoint pointing at the folder (a copy: configs/ stays as it is).
  local config="${LLAVA_PIPE_CONFIG:-configs/colab-l4.yaml}"
  local ours
  ours="$build/$(basename "$config")"
  python3 - "$config" "$(cd "$checkpoint" && pwd)" "$ours" <<'PY'
import json, re, sys
source, checkpoint, out = sys.argv[1:]
text, n = re.subn(r"(?m)^(\s*checkpoint:).*$", lambda m: m.group(1) + " " + json.dumps(checkpoint),
                  open(source).read(), count=1)
if n != 1:
    sys.exit("quickstart gpu: %s has no model.checkpoint line" % source)
open(out, "w").write(text)
PY
  echo "config: $ours (model.checkpoint: $checkpoint)"
  "$build/llava-pipe" check "$ours"
  echo "next: $build/llava-pipe run $ours --image tests/data/images/img01_320x240_RGB.jpg --prompt \"What is in the picture?\""
}

if [ "$what" = gpu ]; then
  gpu_setup "${2:-}"
  exit 0
fi

packages=(build-essential cmake ninja-build pkg-config
  libtorch-dev libzmq3-dev cppzmq-dev libcapnp-dev capnproto libyaml-cpp-dev
  libsentencepiece-dev nlohmann-json3-dev libstb-dev libjpeg62-turbo-dev libgtest-dev libgmock-dev
  libcli11-dev libcpp-httplib-dev libcurl4-openssl-dev)
# The tests also need: clang (fuzzers), promtool (metrics), Node.js and npm (the openai
# client), Slurm and munge (a two-node test cluster), procps.
if [ "$what" = test ]; then
  packages+=(clang libclang-rt-14-dev prometheus slurmctld slurmd slurm-client munge procps)
  # Node.js from Debian, unless one is there already (a nodejs package that bundles npm
  # conflicts with Debian's npm package).
  command -v node >/dev/null || packages+=(nodejs)
  command -v npm >/dev/null || packages+=(npm)
fi
install_missing "${packages[@]}"

build="${BUILD_DIR:-build}"
jobs="${JOBS:-$(nproc)}"
# shellcheck disable=SC2086
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${LLAVA_PIPE_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j "$jobs"

case "$what" in
  demo)
    "$build/llava-pipe" run configs/demo.yaml \
      --image tests/data/shapes-llava/demo.png --prompt "What is in the picture?"
    ;;
  test)
    # Fuzzers first, so that ctest's summary is the last word: a fixed seed and input count
    # (reproducible); LLAVA_PIPE_FUZZ_SECONDS=N explores with a random seed, 0 skips.
    case "${LLAVA_PIPE_FUZZ_SECONDS:-}" in
      "") bash tests/fuzz/run.sh ;;
      0) ;;
      *) bash tests/fuzz/run.sh "$LLAVA_PIPE_FUZZ_SECONDS" ;;
    esac
    # Across hosts: the real launch/slurm.sbatch on a two-node Slurm cluster started here
    # (needs root; LLAVA_PIPE_SKIP_SLURM=1 skips it, saying so), and the Kubernetes
    # manifests checked offline.
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo bash tests/cluster/slurm_test.sh "$build"
    bash tests/cluster/k8s_check.sh "$build"
    cd "$build"
    ctest --output-on-failure -j "$jobs"
    ;;
esac
