#!/usr/bin/env bash
# Offline check of the Kubernetes manifests in launch/k8s (no cluster needed): they render
# (`kubectl kustomize`) and kubectl recognises each object's kind (`kubectl label --local`), they
# hold what launch/k8s/README.md promises (probes on /health, a GPU a worker, the workers'
# Secret without the coordinator's secret key, a grace period longer than the drain), and
# the ConfigMap's config passes `llava-pipe check --workers` with as many workers a stage
# as its StatefulSet has replicas (the tiny model, keys made here and CPUs standing in for
# the model, the Secrets and the GPUs). Last line: "N passed, N failed".
#   bash tests/cluster/k8s_check.sh [BUILD_DIR]    (kubectl: Debian's kubernetes-client)
# `kubectl apply --dry-run=client` is not used: without a cluster it cannot map the kinds.
# Field names and types are not schema-checked (no offline schema checker in Debian).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build=$(realpath -m "${1:-${BUILD_DIR:-$root/build}}")
cd "$root" || exit 1

passed=0
failed=0
say() { echo "k8s_check: $*"; }
check() {  # NAME COMMAND...
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    say "ok   $name"
  else
    failed=$((failed + 1))
    say "FAIL $name"
  fi
}
tmp=$(mktemp -d /tmp/llava-k8s-check.XXXXXX)
finish() {
  rm -rf "$tmp"
  echo "$passed passed, $failed failed"
  [ $failed -eq 0 ]
}
trap finish EXIT

if ! command -v kubectl >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    say "installing kubernetes-client"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kubernetes-client ||
      { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kubernetes-client; }; } >/dev/null
  fi
  command -v kubectl >/dev/null || { say "FAIL no kubectl (apt-get install kubernetes-client)"; failed=1; exit 1; }
fi

# ---- render and decode ----------------------------------------------------------------
rendered=$tmp/rendered.yaml
check "the manifests render (kubectl kustomize launch/k8s)" \
  sh -c "kubectl kustomize launch/k8s >'$rendered' 2>'$tmp/kustomize.err'"
[ -s "$tmp/kustomize.err" ] && cat "$tmp/kustomize.err"
kubectl label --local -f "$rendered" checked=yes -o name 2>&1 | sed 's/-[a-z0-9]\{10\}$//' | sort >"$tmp/objects"
cat >"$tmp/objects.expected" <<EOF
configmap/llava-pipe-config
deployment.apps/llava-pipe-coordinator
service/llava-pipe-coordinator
service/llava-pipe-language
service/llava-pipe-vision
statefulset.apps/llava-pipe-language
statefulset.apps/llava-pipe-vision
EOF
check "kubectl recognises the expected objects: $(tr '\n' ' ' <"$tmp/objects.expected")" \
  diff "$tmp/objects" "$tmp/objects.expected"

# One file per object, named KIND-NAME (kustomize writes `kind:` and `metadata.name` at
# fixed indentation).
awk -v dir="$tmp" '
  /^---$/ { n++; next }
  { print > (dir "/doc-" n+0) }
' "$rendered"
for doc in "$tmp"/doc-*; do
  kind=$(sed -n 's/^kind: //p' "$doc")
  name=$(awk '/^metadata:/ { m = 1; next } m && /^  name: / { print $2; exit }' "$doc")
  mv "$doc" "$tmp/$kind-${name%-*}"
  [ "$kind" = ConfigMap ] || mv "$tmp/$kind-${name%-*}" "$tmp/$kind-$name"
done
coordinator=$tmp/Deployment-llava-pipe-coordinator
service=$tmp/Service-llava-pipe-coordinator
config_map=$tmp/ConfigMap-llava-pipe-config

has() { grep -q -- "$2" "$1" 2>/dev/null; }
lacks() { ! grep -q -- "$2" "$1" 2>/dev/null; }
# Each probe asks /health on the port named probes, which is 8001, where serve --probes
# listens (its own threads: not behind the API's connections).
probes_on_health() {
  [ "$(grep -A4 -E '^ +(readiness|liveness)Probe:' "$coordinator" | grep -c 'path: /health')" -eq 2 ] &&
    [ "$(grep -A4 -E '^ +(readiness|liveness)Probe:' "$coordinator" | grep -c 'port: probes')" -eq 2 ] &&
    grep -B1 -E '^ +name: probes$' "$coordinator" | grep -q 'containerPort: 8001' &&
    grep -A1 -e '- --probes' "$coordinator" | grep -q '0.0.0.0:8001'
}
check "the coordinator serves HTTP on 8000 (serve --http)" has "$coordinator" "--http"
check "its readiness and liveness probes ask /health on serve --probes' port 8001" probes_on_health
check "its Service has the HTTP port 8000 and the workers' port 5555" \
  sh -c "grep -q 'port: 8000' '$service' && grep -q 'port: 5555' '$service'"
check "it mounts the coordinator's key Secret" has "$coordinator" "secretName: llava-pipe-coordinator-keys"
seconds_of() { sed -n "s/.*$1: *\([0-9]*\)s\b.*/\1/p" "$2" | head -n 1; }
drain=$(seconds_of drain_timeout "$config_map")
grace=$(sed -n 's/.*terminationGracePeriodSeconds: *\([0-9]*\).*/\1/p' "$coordinator")
check "its grace period (${grace:-?} s) is longer than the drain (${drain:-?} s)" \
  [ "${grace:-0}" -gt "${drain:-999999}" ]

for stage in vision language; do
  set_file=$tmp/StatefulSet-llava-pipe-$stage
  check "$stage: a StatefulSet whose pods take the stage and their ordinal as replica" \
    sh -c "grep -q -- '- $stage' '$set_file' && grep -q \"apps.kubernetes.io/pod-index\" '$set_file'"
  check "$stage: one GPU a pod (nvidia.com/gpu)" has "$set_file" "nvidia.com/gpu: 1"
  check "$stage: its pods mount the workers' Secret with only the coordinator's public key" \
    sh -c "grep -q 'secretName: llava-pipe-worker-keys' '$set_file' && grep -q 'key: coordinator.key$' '$set_file' \
      && ! grep -q 'coordinator.key_secret' '$set_file'"
done

# ---- the ConfigMap's config: valid, and as many workers a stage as pods ---------------
if [ -x "$build/llava-pipe" ]; then
  "$build/llava-pipe" keygen "$tmp/coordinator" >/dev/null && "$build/llava-pipe" keygen "$tmp/workers" >/dev/null
  sed -e "s|checkpoint: .*|checkpoint: $root/tests/data/tiny-llava|" -e 's/cuda:[0-9]*/cpu/g' \
    -e "s|/etc/llava-pipe/keys/coordinator|$tmp/coordinator.key_secret|" \
    -e "s|/etc/llava-pipe/keys/workers|$tmp/workers.key_secret|" launch/k8s/config.yaml >"$tmp/config.yaml"
  check "the config passes llava-pipe check --workers (tiny model, CPUs)" \
    sh -c "'$build/llava-pipe' check '$tmp/config.yaml' --workers >'$tmp/workers' 2>'$tmp/check.err' || { cat '$tmp/check.err'; false; }"
  for stage in vision language; do
    wanted=$(grep -c "^$stage	" "$tmp/workers")
    pods=$(sed -n 's/^  replicas: *\([0-9]*\).*/\1/p' "$tmp/StatefulSet-llava-pipe-$stage")
    check "$stage: the StatefulSet's replicas ($pods) are the config's workers ($wanted)" [ "$pods" = "$wanted" ]
  done
else
  say "FAIL no $build/llava-pipe to check the config with (build first, or give BUILD_DIR)"
  failed=$((failed + 1))
fi
