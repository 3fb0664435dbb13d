#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each from the committed
# seed corpus (tests/fuzz/corpus/NAME); new inputs go to a temporary folder, so the
# committed corpus stays as it is. Any crash, leak, out-of-memory or sanitizer report fails
# the run and leaves the input in build-fuzz/crashes/.
#   bash tests/fuzz/run.sh            seed 1 and a fixed number of inputs per target (about a
#                                     minute each here): nearly the same inputs every run
#                                     (the test command's run)
#   bash tests/fuzz/run.sh SECONDS    exploring: a random seed, SECONDS per target
set -euo pipefail
seconds="${1:-}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
mkdir -p build-fuzz
# The build's output is kept, and shown when it fails.
{ CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DLLAVA_PIPE_FUZZ=ON \
    -DLLAVA_PIPE_BUILD_STAGES=OFF -DLLAVA_PIPE_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
  cmake --build build-fuzz --target fuzz_wire fuzz_safetensors fuzz_image fuzz_request \
    fuzz_config fuzz_http_request fuzz_schema; } > build-fuzz/build.log 2>&1 ||
  { grep -E -A8 "error|FAILED" build-fuzz/build.log | head -60; echo "fuzz: the build failed (build-fuzz/build.log)"; exit 1; }
mkdir -p build-fuzz/crashes
declare -A inputs=([wire]=2000000 [safetensors]=1500000 [image]=250000 [request]=500000
  [config]=120000 [http_request]=300000 [schema]=300000)
for target in wire safetensors image request config http_request schema; do
  work="$(mktemp -d)"
  if [ -n "$seconds" ]; then
    echo "fuzzing $target for ${seconds}s (random seed)"
    budget=(-max_total_time="$seconds")
  else
    echo "fuzzing $target: ${inputs[$target]} inputs from seed 1"
    # The time cap only guards against a much slower machine; it ends the same sequence early.
    budget=(-seed=1 -runs="${inputs[$target]}" -max_total_time=240)
  fi
  build-fuzz/tests/fuzz/fuzz_$target "${budget[@]}" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix=build-fuzz/crashes/$target- -print_final_stats=1 "$work" "tests/fuzz/corpus/$target" \
    2> "build-fuzz/$target.log" || { tail -40 "build-fuzz/$target.log"; exit 1; }
  grep -E "stat::number_of_executed_units|stat::new_units_added" "build-fuzz/$target.log" | tr '\n' ' '
  echo
  rm -rf "$work"
done
