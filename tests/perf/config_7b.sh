# Sourced by the 7B scripts (tests/perf/*_7b.sh, tests/gpu/session_check.sh): the config
# they bench and serve the random LLaVA-1.5-7B shape with, float16, both stages sharing
# cuda:0, batches of 32, answers of 64 tokens.
#   bench_config_7b FILE CHECKPOINT NAME [EXTRA]   (EXTRA: more coordinator keys, ", key: value")
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
