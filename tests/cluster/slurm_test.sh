#!/usr/bin/env bash
# A real two-node Slurm cluster on this one machine runs the real launch/slurm.sbatch
# (configs/slurm-cpu.yaml: the tiny model on CPUs, vision on n1, language on n1 and n2,
# CURVE on): every request of a batch answered exactly once, also when a language
# worker is killed mid-batch (its step comes back); TERM drains; a plain scancel ends the
# job before KillWait; failed lines show in the exit code; too small an allocation is
# refused at once. Prints the run time against a local `llava-pipe run` and the time a killed
# step took to come back. Last line: "N passed, N failed".
#   bash tests/cluster/slurm_test.sh [BUILD_DIR]     (root: installs slurmctld slurmd
#                                                     slurm-client munge procps if missing)
# LLAVA_PIPE_SKIP_SLURM=1 skips it (and says so); LLAVA_PIPE_KEEP_TEST_DIR=1 keeps its folder.
# Each slurmd runs in its own UTS namespace (hostname n1 / n2) on its own port; n1 and n2
# resolve through a line added to /etc/hosts while the test runs. Everything it starts is
# stopped at the end, also on failure.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build=$(realpath -m "${1:-${BUILD_DIR:-$root/build}}")
cd "$root" || exit 1

passed=0
failed=0
say() { echo "slurm_test: $*"; }
check() {  # NAME COMMAND...: one check, passed when COMMAND succeeds
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
give_up() {  # the cluster or a job could not even start: one failure, and stop
  say "FAIL $*"
  failed=$((failed + 1))
  exit 1
}

if [ "${LLAVA_PIPE_SKIP_SLURM:-}" = 1 ]; then
  say "skipped: LLAVA_PIPE_SKIP_SLURM=1"
  echo "0 passed, 0 failed (Slurm cluster test skipped by LLAVA_PIPE_SKIP_SLURM=1)"
  exit 0
fi

# ---- cleanup: everything this test started, also on failure ---------------------------
tmp=""
hosts_tag=""
cleanup() {
  local rc=$?
  if [ -n "$tmp" ] && [ -f "$tmp/slurm.conf" ]; then
    export SLURM_CONF=$tmp/slurm.conf
    for job in $(squeue -h -o %i 2>/dev/null); do scancel "$job" 2>/dev/null; done
    for _ in $(seq 1 60); do
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
    for pid_file in "$tmp"/slurmd-n1.pid "$tmp"/slurmd-n2.pid "$tmp"/slurmctld.pid "$tmp"/munge/pid; do
      [ -f "$pid_file" ] && kill "$(cat "$pid_file")" 2>/dev/null
    done
    # Anything left that runs from this test's folder (a job's worker, a local run).
    for pid in $(pgrep -f -- "$tmp/" 2>/dev/null); do [ "$pid" != $$ ] && kill -9 "$pid" 2>/dev/null; done
  fi
  if [ -n "$hosts_tag" ]; then
    grep -v -- "$hosts_tag" /etc/hosts >"$tmp/hosts.without" && cat "$tmp/hosts.without" >/etc/hosts
  fi
  if [ -n "$tmp" ]; then
    if [ "${LLAVA_PIPE_KEEP_TEST_DIR:-}" = 1 ]; then say "kept $tmp"; else rm -rf "$tmp"; fi
  fi
  [ $rc -ne 0 ] && [ $failed -eq 0 ] && failed=1
  echo "$passed passed, $failed failed"
  [ $failed -eq 0 ]
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---- what the test needs --------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || give_up "needs root (Slurm daemons, /etc/hosts); LLAVA_PIPE_SKIP_SLURM=1 skips this test"
for program in llava-pipe llava-stage; do
  [ -x "$build/$program" ] || give_up "no $build/$program: build first (or give BUILD_DIR)"
done
missing=()
for p in slurmctld slurmd slurm-client munge procps; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" ||
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }; } \
    >/dev/null || give_up "apt-get install ${missing[*]}"
fi

tmp=$(mktemp -d /tmp/llava-slurm-test.XXXXXX)
chmod 755 "$tmp"
seconds_since() { awk -v start="$1" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - start }'; }
free_port() {  # the first port from $1 nobody listens on
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}

# ---- the cluster: munge, slurmctld, slurmd n1 and n2 ----------------------------------
mkdir -m 711 "$tmp/munge"
dd if=/dev/urandom of="$tmp/munge/munge.key" bs=128 count=1 status=none && chmod 400 "$tmp/munge/munge.key"
munged --force --key-file="$tmp/munge/munge.key" --socket="$tmp/munge/socket" --pid-file="$tmp/munge/pid" \
  --log-file="$tmp/munge/log" --seed-file="$tmp/munge/seed" || give_up "munged did not start ($tmp/munge/log)"

for n in n1 n2; do getent hosts "$n" >/dev/null || need_hosts=1; done
if [ -n "${need_hosts:-}" ]; then
  hosts_tag="llava-pipe slurm test $$"
  echo "127.0.0.1 n1 n2 # $hosts_tag" >>/etc/hosts
fi
ctld_port=$(free_port 26817)
n1_port=$(free_port $((ctld_port + 1)))
n2_port=$(free_port $((n1_port + 1)))
cat >"$tmp/slurm.conf" <<EOF
ClusterName=llavapipetest
SlurmctldHost=$(hostname)(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$tmp/munge/socket
CredType=cred/munge
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool-%n
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd-%n.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait=30
MinJobAge=600
NodeName=n1 NodeAddr=n1 Port=$n1_port CPUs=2 State=UNKNOWN
NodeName=n2 NodeAddr=n2 Port=$n2_port CPUs=2 State=UNKNOWN
PartitionName=test Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$tmp/slurm.conf
mkdir -p "$tmp/state" "$tmp/jobs"
slurmctld -f "$SLURM_CONF" || give_up "slurmctld did not start ($tmp/slurmctld.log)"
for n in n1 n2; do
  unshare --uts sh -c "hostname $n && exec slurmd -f '$SLURM_CONF'" || give_up "slurmd $n did not start ($tmp/slurmd-$n.log)"
done
for _ in $(seq 1 60); do
  [ "$(sinfo -h -o %T -n n1,n2 | sort -u)" = idle ] && break
  sleep 0.5
done
[ "$(sinfo -h -o %T -n n1,n2 | sort -u)" = idle ] || give_up "nodes n1, n2 not idle after 30 s: $(sinfo)"
say "cluster up: slurmctld :$ctld_port, slurmd n1 :$n1_port, n2 :$n2_port"

# ---- the batch, and the same config run locally for reference and timing -------------
requests=$tmp/requests.jsonl
images=(tests/data/images/img00_64x48_RGB.png tests/data/images/img01_320x240_RGB.jpg
  tests/data/images/img02_240x320_RGB.jpg tests/data/images/img03_336x336_RGB.png
  tests/data/images/img04_224x224_RGB.jpg)
for i in $(seq 1 300); do
  printf '{"id": %d, "image": "%s", "prompt": "Picture %d: what is in it?", "max_new_tokens": 64}\n' \
    "$i" "$root/${images[$((i % 5))]}" "$i"
done >"$requests"
count=300

# The local run: the same config with the coordinator starting the workers itself (no
# `launch: external`), over tcp:// with CURVE like the job.
"$build/llava-pipe" keygen "$tmp/local-coordinator" >/dev/null && "$build/llava-pipe" keygen "$tmp/local-workers" >/dev/null
sed '/launch: external/d' configs/slurm-cpu.yaml |
  awk -v config_dir="$root/configs" -v endpoint="tcp://127.0.0.1:$(free_port 27555)" \
    -v server_key="$tmp/local-coordinator.key_secret" -v worker_key="$tmp/local-workers.key_secret" \
    -f launch/slurm/job_config.awk >"$tmp/local.yaml" || give_up "cannot make the local config"
start=$(date +%s.%N)
"$build/llava-pipe" run "$tmp/local.yaml" --requests "$requests" --output "$tmp/local.jsonl" 2>"$tmp/local.log"
local_rc=$?
local_seconds=$(seconds_since "$start")
[ $local_rc -eq 0 ] || give_up "the local run exited $local_rc ($tmp/local.log: $(tail -n 3 "$tmp/local.log"))"

# "ID TEXT" a line, sorted: what must match between runs.
answers() { sed -n 's/.*"id":\([0-9]*\),.*"ok":true,.*"text":\(.*\),"timings_ms".*/\1 \2/p' "$1" | sort -n; }
answered_once() {  # OUT: every id 1..count exactly once, each ok
  local ids
  ids=$(grep -o '"id":[0-9]*' "$1" | cut -d: -f2 | sort -n | tr '\n' ' ')
  [ "$ids" = "$(seq 1 $count | tr '\n' ' ')" ] && [ "$(grep -c '"ok":true' "$1")" -eq $count ]
}
same_answers() {
  [ "$(answers "$1" | wc -l)" -eq $count ] && diff -q <(answers "$1") <(answers "$tmp/local.jsonl") >/dev/null
}
# Requests answered so far, from the coordinator's progress lines ("60/300 done, ...") in
# the job's output (the output file appears whole at the end).
answered_so_far() { grep -o "^[0-9]*/$count done" "$1" 2>/dev/null | tail -n 1 | cut -d/ -f1; }
wait_for_progress() {  # JOB-OUTPUT: until a tenth of the batch is answered (at most 60 s)
  for _ in $(seq 1 600); do
    [ "$(answered_so_far "$1")" -ge $((count / 10)) ] 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# ---- jobs ------------------------------------------------------------------------------
# submit NAME OUTPUT SBATCH-OPTIONS... CONFIG ARGUMENTS...: through launch/slurm/submit.sh
# (the task count from the plan); prints the job id.
submit() {
  local name=$1 out=$2
  shift 2
  LLAVA_PIPE_BIN=$build LLAVA_PIPE_JOB_DIR=$tmp/jobs/$name launch/slurm/submit.sh --parsable \
    --chdir="$root" --job-name="$name" --output="$out" "$@" 2>>"$tmp/submit.log"
}
job_state() { scontrol show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
job_exit() { scontrol show job "$1" 2>/dev/null | grep -o ' ExitCode=[0-9]*:[0-9]*' | cut -d= -f2; }
wait_job() {  # JOB SECONDS: until it has ended (polls the controller)
  local deadline=$(($(date +%s) + $2)) state
  while [ "$(date +%s)" -lt "$deadline" ]; do
    state=$(job_state "$1")
    case "$state" in PENDING | RUNNING | CONFIGURING | COMPLETING | SUSPENDED | "") sleep 0.2 ;; *) return 0 ;; esac
  done
  say "job $1 still $(job_state "$1") after $2 s"
  return 1
}
nothing_left() { ! pgrep -f -- "$tmp/jobs/$1/" >/dev/null; }  # JOB-NAME: no process of it
workers_stopped_cleanly() {  # JOB-OUTPUT: no worker killed or stopped with an error
  ! grep -E "task 0: (Killed|Terminated)|stopped with exit code|did not stop" "$1" >/dev/null
}

# 1. The plain batch across both nodes.
start=$(date +%s.%N)
job=$(submit plain "$tmp/plain.out" --nodes=2 \
  configs/slurm-cpu.yaml run --requests "$requests" --output "$tmp/plain.jsonl" --verbose) ||
  give_up "sbatch refused the job"
wait_job "$job" 120
slurm_seconds=$(seconds_since "$start")
check "the job's exit code is the run's (0)" [ "$(job_exit "$job")" = 0:0 ]
check "vision on n1, the language replicas on n1 and n2" \
  grep -q "workers: vision-0 on n1, language-0 on n1, language-1 on n2" "$tmp/plain.out"
check "every request answered exactly once, each ok" answered_once "$tmp/plain.jsonl"
check "the answers are the local run's, token for token" same_answers "$tmp/plain.jsonl"
check "the workers stopped cleanly at the end (TERM, exit 0)" workers_stopped_cleanly "$tmp/plain.out"
check "no process of the job is left" nothing_left plain

# 2. A language worker's process killed (-9) mid-batch: its step comes back.
job=$(submit fault "$tmp/fault.out" --nodes=2 \
  configs/slurm-cpu.yaml run --requests "$requests" --output "$tmp/fault.jsonl" --verbose) ||
  give_up "sbatch refused the job"
# The worker itself, not the srun that started it (same arguments).
worker_pattern="^[^ ]*llava-stage --config $tmp/jobs/fault/workers.yaml --stage language --replica 1 "
wait_for_progress "$tmp/fault.out"
victim=$(pgrep -f -- "$worker_pattern" | head -n 1)
answered_at_kill=$(answered_so_far "$tmp/fault.out")
comeback=""
if [ -n "$victim" ]; then
  killed_at=$(date +%s.%N)
  kill -9 "$victim"
  for _ in $(seq 1 300); do  # until the coordinator registers a new language-1 (at most 30 s)
    if grep "language-1 registered" "$tmp/fault.out" | grep -v "pid $victim " | grep -q .; then
      comeback=$(seconds_since "$killed_at")
      break
    fi
    sleep 0.1
  done
fi
wait_job "$job" 120
killed_mid_batch() { [ -n "$victim" ] && [ "${answered_at_kill:-0}" -lt $count ]; }
check "a language worker was killed mid-batch (${answered_at_kill:-0} of $count answered)" killed_mid_batch
check "its step came back and registered again" [ -n "$comeback" ]
check "the script said it started the step again" grep -q "language-1 on n2: step ended with exit code" "$tmp/fault.out"
check "the job's exit code is 0 after the kill" [ "$(job_exit "$job")" = 0:0 ]
check "every request answered exactly once after the kill" answered_once "$tmp/fault.jsonl"
check "the answers after the kill are the local run's" same_answers "$tmp/fault.jsonl"
check "no process of the job is left after the kill" nothing_left fault

# 3. TERM to the batch script mid-batch (what the time limit sends): the coordinator
#    drains, each request still gets one line, the workers stop cleanly.
job=$(submit drain "$tmp/drain.out" --nodes=2 \
  configs/slurm-cpu.yaml run --requests "$requests" --output "$tmp/drain.jsonl" --verbose) ||
  give_up "sbatch refused the job"
wait_for_progress "$tmp/drain.out"
scancel --batch --signal=TERM "$job"
wait_job "$job" 60
lines_once() { [ "$(grep -o '"id":[0-9]*' "$1" | sort -u | wc -l)" -eq $count ] && [ "$(wc -l <"$1")" -eq $count ]; }
check "after TERM every request has exactly one line" lines_once "$tmp/drain.jsonl"
check "after TERM the job's exit code says the run was cut short" [ "$(job_exit "$job")" != 0:0 ]
check "after TERM the workers stopped cleanly" workers_stopped_cleanly "$tmp/drain.out"
check "no process of the job is left after TERM" nothing_left drain

# 4. A plain scancel mid-batch (TERM to every process, SIGKILL after KillWait = 30 s):
#    the job ends well before the kill and leaves no process of its own behind.
job=$(submit cancel "$tmp/cancel.out" --nodes=2 \
  configs/slurm-cpu.yaml run --requests "$requests" --output "$tmp/cancel.jsonl" --verbose) ||
  give_up "sbatch refused the job"
wait_for_progress "$tmp/cancel.out"
cancelled_at=$(date +%s.%N)
scancel "$job"
wait_job "$job" 60
cancel_seconds=$(seconds_since "$cancelled_at")
check "a plain scancel ends the job in ${cancel_seconds} s, before KillWait (30 s)" \
  awk -v s="$cancel_seconds" 'BEGIN { exit !(s < 25) }'
check "after scancel no process of the job is left" nothing_left cancel

# 5. Lines that fail make the job fail: exit code 3.
head -n 4 "$requests" >"$tmp/some-bad.jsonl"
echo '{"id": 5, "image": "no-such-image.png", "prompt": "Hi"}' >>"$tmp/some-bad.jsonl"
job=$(submit some-bad "$tmp/some-bad.out" --nodes=2 \
  configs/slurm-cpu.yaml run --requests "$tmp/some-bad.jsonl" --output "$tmp/some-bad-out.jsonl") ||
  give_up "sbatch refused the job"
wait_job "$job" 60
check "a batch with a failed line ends the job with exit code 3" [ "$(job_exit "$job")" = 3:0 ]

# 6. Too small an allocation is refused at once with the count to ask for (not pending).
job=$(submit too-small "$tmp/too-small.out" --nodes=1 --ntasks=1 \
  configs/slurm-cpu.yaml run --requests "$requests" --output "$tmp/too-small.jsonl") ||
  give_up "sbatch refused the job"
wait_job "$job" 30
refused_with_count() { [ "$(job_exit "$1")" = 2:0 ] && grep -q -- "--ntasks=3" "$tmp/too-small.out"; }
check "an allocation too small for the plan ends with exit code 2 and says --ntasks=3" refused_with_count "$job"

coordinator_seconds=$(sed -n 's/.*coordinator ended with exit code 0 after \([0-9.]*\) s.*/\1/p' "$tmp/plain.out")
# 7. A long-running job: `serve --http` on the first node answers /health; TERM ends it
#    cleanly (exit 0).
http_port=$(free_port 28000)
job=$(submit serve "$tmp/serve.out" --nodes=2 configs/slurm-cpu.yaml serve --http "0.0.0.0:$http_port") ||
  give_up "sbatch refused the job"
http_get() {  # PATH: the answer to GET PATH on n1 (bash's /dev/tcp: no curl needed)
  (exec 3<>"/dev/tcp/n1/$http_port" && printf 'GET %s HTTP/1.0\r\nHost: n1\r\n\r\n' "$1" >&3 && cat <&3) 2>/dev/null
}
serving() {  # /health says ok and /metrics counts the three workers up (at most 30 s)
  for _ in $(seq 1 300); do
    http_get /health | grep -q '"status":"ok"' &&
      [ "$(http_get /metrics | grep -c '^llava_worker_up{.*} 1')" -eq 3 ] && return 0
    sleep 0.1
  done
  return 1
}
check "serve --http in a job answers /health on n1, its three workers up (/metrics)" serving
scancel --batch --signal=TERM "$job"
wait_job "$job" 60
check "TERM ends the serve job with exit code 0" [ "$(job_exit "$job")" = 0:0 ]
check "and its workers stopped cleanly" workers_stopped_cleanly "$tmp/serve.out"
check "no process of the serve job is left" nothing_left serve

registered_seconds=$(sed -n 's/^\[ *\([0-9.]*\) s\] [a-z]*-[0-9]* registered.*/\1/p' "$tmp/plain.out" | sort -n | tail -n 1)
say "figures ($count requests, 64 new tokens each): local llava-pipe run $local_seconds s;" \
  "as a Slurm job on two nodes ${coordinator_seconds:-?} s in the coordinator (the last worker step" \
  "registered after ${registered_seconds:-?} s), $slurm_seconds s from submit to end; a killed" \
  "language step back and registered in ${comeback:-(never)} s"
