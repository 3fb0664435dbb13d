#!/usr/bin/env bash
# One GPU lease's check of work done where there is no GPU (a development session without a
# device): builds build-gpu, runs the GPU tests of the model code (our CUDA kernels against
# LibTorch's composition, graphs, parity on the tiny checkpoint), makes the random 7B
# checkpoint (check_7b.py makes it), runs the 7B parity check, the served-logprobs check
# and JSON-mode, JSON-schema and tool-call answers (4 choices each) through `serve --http` on
# it, and `bench` with and
# without JSON mode's mask. Each step's log and the summary go to OUT (tar it for the
# device tool); the script goes on past a failed step and exits 1 if any failed.
#   bash tests/gpu/session_check.sh WORK OUT [CUDA_ARCHS]   (default archs: native)
# STEPS="build gpu_tests ..." runs only the steps named (a lease's calls are limited in time:
# split the check over calls on the same warm machine, WORK and build-gpu kept between them).
set -uo pipefail
work="${1:?usage: session_check.sh WORK OUT [CUDA_ARCHS]}"
out="${2:?usage: session_check.sh WORK OUT [CUDA_ARCHS]}"
archs="${3:-native}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
source tests/perf/config_7b.sh
mkdir -p "$work" "$out"
summary="$out/summary.txt"
touch "$summary"
failed=0
# step NAME COMMAND...: runs it with its output in OUT/NAME.log, and notes how it ended.
step() {
  local name="$1"
  shift
  case " ${STEPS:-$name} " in *" $name "*) ;; *) return 0 ;; esac
  local start=$SECONDS
  if "$@" > "$out/$name.log" 2>&1; then
    echo "ok     $name ($((SECONDS - start)) s)" | tee -a "$summary"
  else
    echo "FAILED $name ($((SECONDS - start)) s): $(tail -3 "$out/$name.log" | tr '\n' ' ')" | tee -a "$summary"
    failed=1
  fi
}

step configure cmake -G Ninja -B build-gpu -DCMAKE_BUILD_TYPE=Release -DLLAVA_PIPE_CUDA_ARCHS="$archs"
step build cmake --build build-gpu
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$summary" 2>&1
step gpu_tests build-gpu/tests/stages/stages_tests \
  --gtest_filter='FusedKernels.*:PrefillAttention.*:CausalAttention.*:VisionGraphs.*:DecodeStep.*:LayerStreaming.*:ShapesQuantized.*:QuantizedLinear.*:QuantGemm.*:Parity.*:Consistency.*:ShapesParity.*:QuantizedDecoder.*:WeightOffload.*:Generator.*:Sampler.*:Json*:Checkpoint.*'
step check_7b python3 tests/gpu/check_7b.py "$work" build-gpu/tests/llava_logits  # makes the checkpoint
step logprobs_7b python3 tests/gpu/logprobs_7b.py "$work" build-gpu

# JSON mode on the 7B: a bias towards '"' and '}' (the random model never closes a string
# by itself); the answer must parse as an object and end with the end-of-sequence token.
json_mode() {
  bench_config_7b "$work/json.yaml" "$work/llava-7b-random" json
  build-gpu/llava-pipe serve "$work/json.yaml" --http 127.0.0.1:18791 > "$work/json-serve.log" 2>&1 &
  local pid=$!
  python3 - <<'EOF'
import json, time, urllib.request
base = "http://127.0.0.1:18791"
def post(path, body):
    request = urllib.request.Request(base + path, json.dumps(body).encode(), {"content-type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=600).read())
for _ in range(600):
    try:
        if json.loads(urllib.request.urlopen(base + "/health", timeout=5).read())["status"] == "ok":
            break
    except Exception:
        pass
    time.sleep(1)
quote = post("/tokenize", {"prompt": 'a"', "add_special_tokens": False})["tokens"][-1]
close = post("/tokenize", {"prompt": "a}", "add_special_tokens": False})["tokens"][-1]
started = time.time()
answer = post("/v1/chat/completions", {
    "model": "m", "max_tokens": 64, "temperature": 0.8, "seed": 1, "n": 4,
    "response_format": {"type": "json_object"}, "logit_bias": {str(quote): 30, str(close): 20},
    "messages": [{"role": "user", "content": "Describe the picture as JSON."}]})
for choice in answer["choices"]:
    assert choice["finish_reason"] == "stop", choice
    assert isinstance(json.loads(choice["message"]["content"]), dict), choice
print(json.dumps({"choices": [c["message"]["content"] for c in answer["choices"]],
                  "usage": answer["usage"], "seconds": round(time.time() - started, 3)}))
# A schema (response_format json_schema): its properties in the order given, an enum, an
# integer, a bounded array; biased as above, and towards ',' and ']' so that numbers and
# arrays end.
comma = post("/tokenize", {"prompt": "a,", "add_special_tokens": False})["tokens"][-1]
bracket = post("/tokenize", {"prompt": "a]", "add_special_tokens": False})["tokens"][-1]
schema = {"type": "object", "properties": {
    "verdict": {"enum": ["yes", "no"]}, "count": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}},
    "required": ["verdict", "count", "tags"]}
started = time.time()
answer = post("/v1/chat/completions", {
    "model": "m", "max_tokens": 64, "temperature": 0.8, "seed": 1, "n": 4,
    "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    "logit_bias": {str(quote): 30, str(close): 20, str(comma): 15, str(bracket): 15},
    "messages": [{"role": "user", "content": "Answer as JSON."}]})
for choice in answer["choices"]:
    assert choice["finish_reason"] == "stop", choice
    value = json.loads(choice["message"]["content"])
    assert list(value)[:3] == ["verdict", "count", "tags"], choice
    assert value["verdict"] in ("yes", "no") and isinstance(value["count"], int), choice
    assert isinstance(value["tags"], list) and len(value["tags"]) <= 2, choice
print(json.dumps({"schema choices": [c["message"]["content"] for c in answer["choices"]],
                  "usage": answer["usage"], "seconds": round(time.time() - started, 3)}))
# Tools: "required" calls of two tools, n 4, each call held to its own function's schema.
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
          "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["C", "F"]}},
          "required": ["city", "unit"]}}},
         {"type": "function", "function": {"name": "count", "parameters": {"type": "object",
          "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["n"]}}}]
started = time.time()
answer = post("/v1/chat/completions", {
    "model": "m", "max_tokens": 96, "temperature": 0.8, "seed": 1, "n": 4, "tools": tools,
    "tool_choice": "required", "logit_bias": {str(quote): 30, str(close): 20, str(bracket): 25},
    "messages": [{"role": "user", "content": "Call a tool."}]})
for choice in answer["choices"]:
    assert choice["finish_reason"] == "tool_calls", choice
    for call in choice["message"]["tool_calls"]:
        arguments = json.loads(call["function"]["arguments"])
        if call["function"]["name"] == "get_weather":
            assert list(arguments) == ["city", "unit"] and arguments["unit"] in ("C", "F"), call
        else:
            assert call["function"]["name"] == "count" and 0 <= arguments["n"] <= 99, call
print(json.dumps({"tool calls": [c["message"]["tool_calls"] for c in answer["choices"]],
                  "usage": answer["usage"], "seconds": round(time.time() - started, 3)}))
EOF
  local status=$?
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return $status
}
step json_mode_7b json_mode

# JSON mode's cost in decoding: `bench` at temperature 0.7, without and with the mask, JSON mode's
# and a schema's (no
# --ignore-eos, which JSON mode refuses; the random model seldom ends by itself).
json_bench() {
  bench_config_7b "$work/bench.yaml" "$work/llava-7b-random" json-bench
  local label
  for label in plain json schema; do
    local flags=()
    [ "$label" = json ] && flags=(--response-format '{"type": "json_object"}')
    [ "$label" = schema ] && flags=(--response-format '{"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"answer": {"type": "string"}, "sure": {"type": "boolean"}}, "required": ["answer", "sure"]}}}')
    timeout 240 build-gpu/llava-pipe bench "$work/bench.yaml" --image tests/data/images/img01_320x240_RGB.jpg \
      --batches 1,8,32 --ttft-runs 3 --vision-batch 8 --new-tokens 64 --temperature 0.7 \
      --json "$out/bench-$label.json" "${flags[@]}" || return 1
    python3 -c "import json,sys; b=json.load(open(sys.argv[1])); d=b['decode']; print(sys.argv[2], 'failed', b['failed'], 'decode b1/b8/b32', *(round(d[k]['tokens_per_s'], 1) for k in ('batch1','batch8','batch32')))" "$out/bench-$label.json" "$label"
  done
}
step json_bench_7b json_bench
cat "$summary"
exit $failed
