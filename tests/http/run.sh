#!/usr/bin/env bash
# The HTTP server's end-to-end tests: starts `llava-pipe serve --http` twice on 127.0.0.1
# (configs/tiny-random.yaml as it is, and the same model with an API key, a queue of 1 and a 64 KiB
# body cap for the 401 / 429 / 413 cases), runs the `openai` client suite (node --test),
# then a `curl -N` SSE smoke test, and stops both servers whatever happens.
#   bash tests/http/run.sh [BUILD_DIR]     (default: build; needs llava-pipe and llava-stage)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
build="$(cd "${1:-build}" && pwd)"
[ -x "$build/llava-pipe" ] && [ -x "$build/llava-stage" ] || {
  echo "tests/http/run.sh: $build needs llava-pipe and llava-stage" >&2; exit 2; }
if [ ! -d tests/http/node_modules/openai ]; then
  (cd tests/http && npm ci --no-audit --no-fund --loglevel=error)
fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

key="test-key-$$"
sed -e "s|checkpoint: ../tests/data/tiny-llava.*|checkpoint: $root/tests/data/tiny-llava|" \
    -e "s|llava-pipe-demo-{pid}|llava-pipe-http-limits-{pid}|" \
    -e "s|^coordinator:|coordinator:\n  queue_capacity: 1|" configs/tiny-random.yaml > "$work/limits.yaml"
# The key comes from the environment (LLAVA_PIPE_API_KEY); the body cap from the server:
# section where the config parser shared with the workers knows it, else the default cap.
max_body=$((64 << 20))
printf 'server:\n  max_body_bytes: 64KiB\n' > "$work/server.yaml"
cat "$work/limits.yaml" "$work/server.yaml" > "$work/probe.yaml"
if "$build/llava-pipe" check "$work/probe.yaml" >/dev/null 2>&1; then
  cp "$work/probe.yaml" "$work/limits.yaml"
  max_body=65536
fi

# Starts a server on a free port, in this shell (so that cleanup knows its pid: a command
# substitution would run it in a subshell, and the server would outlive the tests).
start() {
  LLAVA_PIPE_API_KEY="${3:-}" "$build/llava-pipe" serve "$1" --http 127.0.0.1:0 >"$2" 2>&1 &
  pids+=($!)
}
# Prints the URL of the server `pid` once it listens (its log says the port).
url_of() {
  local config="$1" log="$2" pid="$3"
  for _ in $(seq 600); do
    if url="$(grep -o 'http://127.0.0.1:[0-9]*' "$log")"; then echo "$url"; return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "tests/http/run.sh: the server for $config did not start:" >&2
  cat "$log" >&2
  return 1
}
start configs/tiny-random.yaml "$work/demo.log"
url="$(url_of configs/tiny-random.yaml "$work/demo.log" "${pids[0]}")"
start "$work/limits.yaml" "$work/limits.log" "$key"
limits_url="$(url_of "$work/limits.yaml" "$work/limits.log" "${pids[1]}")"
echo "servers: $url (demo), $limits_url (limits)"

status=0
(cd tests/http && LLAVA_HTTP_URL="$url" LLAVA_HTTP_LIMITS_URL="$limits_url" LLAVA_HTTP_KEY="$key" \
  LLAVA_HTTP_MAX_BODY="$max_body" \
  node --test --test-concurrency=1 openai_client.test.mjs) || status=1

# SSE smoke test with curl -N: events arrive as data: lines and the stream ends with [DONE].
sse="$(curl -sS -N --max-time 60 "$url/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"tiny-llava","max_tokens":6,"stream":true,"messages":[{"role":"user","content":"Hi"}]}')"
if [ "$(printf '%s\n' "$sse" | grep -c '^data: {"choices"')" -lt 2 ] ||
   [ "$(printf '%s\n' "$sse" | grep -v '^$' | tail -1)" != "data: [DONE]" ]; then
  echo "curl -N SSE smoke test: FAILED; got:" >&2
  printf '%s\n' "$sse" >&2
  status=1
else
  echo "curl -N SSE smoke test: ok ($(printf '%s\n' "$sse" | grep -c '^data: ') events)"
fi
if [ "$status" -ne 0 ]; then
  echo "--- server logs" >&2
  cat "$work/demo.log" "$work/limits.log" >&2
fi
exit "$status"
