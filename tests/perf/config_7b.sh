# Sourced by the 7B scripts (tests/perf/*_7b.sh, tests/gpu/session_check.sh): the config
# they bench and serve the random LLaVA-1.5-7B shape with, float16, both stages sharing
# cuda:0, batches of 32, answers of 64 tokens; and the prefill scripts' two measurements.
#   bench_config_7b FILE CHECKPOINT NAME [EXTRA]   (EXTRA: more coordinator keys, ", key: value")
#   prefill_7b WORK LABEL [VAR=VALUE...]           llava_logits' float16 prefill, one line
#   ncu_prefill_7b WORK LABEL [VAR=VALUE...]       ncu's per-kernel sums of a 641-token forward
bench_config_7b() {
  cat > "$1" <<YAML
mode: concurrent
share_devices: true
model: {checkpoint: $2, dtype: float16}
stages:
  vision: {devices: [cuda:0], memory_limit: 10GiB, batch_size: 32}
  language: {devices: [cuda:0], memory_limit: 40GiB, batch_size: 32, max_context: 1024}
coordinator: {endpoint: 'ipc://@llava-$3-{pid}', heartbeat_interval: 500ms, liveness: 20, embedding_memory: 4GiB${4:-}}
generation: {max_new_tokens: 64}
YAML
}

# llava_logits' float16 prefill of WORK's random 7B (WORK/llava-7b-random) on
# WORK/quant-inputs.safetensors (tests/gpu/quantized_7b.py writes it), with those environment
# variables: its log in WORK/prefill-LABEL.txt and one line of its figures. Needs build-gpu.
prefill_7b() {
  local work=$1 label=$2
  shift 2
  env "$@" build-gpu/tests/llava_logits "$work/llava-7b-random" cuda:0 float16 \
    "$work/quant-inputs.safetensors" "$work/prefill-out.safetensors" none > "$work/prefill-$label.txt" 2>&1
  echo "$label rc=$? $(tail -1 "$work/prefill-$label.txt" | python3 -c 'import json, sys
d = json.loads(sys.stdin.read())
print("language prefill", d.get("language_prefill_tokens_per_s"), "with vision", d.get("prefill_tokens_per_s"),
      "decode b1", d.get("decode_tokens_per_s_batch1"))' 2>&1)"
}

# ncu's per-kernel sums of the language model's forward over a 641-token prompt
# (decode_profile), with those environment variables; the CSV in WORK/ncu-prefill-LABEL.csv.
ncu_prefill_7b() {
  local work=$1 label=$2
  shift 2
  env "$@" LLAVA_PIPE_PROFILE=prefill \
    ncu --profile-from-start off --metrics gpu__time_duration.sum --csv build-gpu/tests/decode_profile cuda:0 641 \
    "$work/llava-7b-random" none > "$work/ncu-prefill-$label.csv" 2> "$work/ncu-prefill-$label.err"
  echo "== $label: the language model's forward over 641 tokens"
  python3 tests/perf/ncu_summary.py "$work/ncu-prefill-$label.csv" | head -12
}
