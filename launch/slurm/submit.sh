#!/usr/bin/env bash
# Submits launch/slurm.sbatch with the allocation that CONFIG's plan needs: one task per
# worker (`llava-pipe check CONFIG --workers`), and one GPU per task when every worker is
# on a GPU. For a plan that mixes CPU and GPU workers it asks for --gpus=N in all: make
# sure the nodes' GPUs sit where the tasks are (the job says so at once if they do not).
#   launch/slurm/submit.sh [SBATCH OPTIONS...] CONFIG run --requests IN.jsonl --output OUT.jsonl
#   launch/slurm/submit.sh --nodes=2 --time=4:00:00 configs/cluster.yaml serve --http 0.0.0.0:8000
# SBATCH OPTIONS in their --name=value form. Run it from the repository root (the job runs
# there); LLAVA_PIPE_BIN and the rest of the job's environment as for launch/slurm.sbatch.
set -euo pipefail
sbatch_options=()
while [ $# -gt 0 ] && [[ $1 == -* ]]; do sbatch_options+=("$1") && shift; done
if [ $# -lt 2 ]; then
  echo "usage: $0 [SBATCH OPTIONS...] CONFIG run|serve [ARGUMENTS...]" >&2
  exit 2
fi
config=$1
bin=${LLAVA_PIPE_BIN:-$PWD/build}
plan=$("$bin/llava-pipe" check "$config" --workers) || {
  echo "submit.sh: $config: no runnable plan (\`$bin/llava-pipe check $config\` says why)" >&2
  exit 2
}
workers=$(grep -c . <<<"$plan")
gpu_workers=$(grep -c $'\tcuda' <<<"$plan" || true)
allocation=(--ntasks="$workers")
if [ "$gpu_workers" -eq "$workers" ]; then
  allocation+=(--gpus-per-task=1)
elif [ "$gpu_workers" -gt 0 ]; then
  allocation+=(--gpus="$gpu_workers")
fi
echo "submit.sh: $workers workers ($gpu_workers on GPUs): sbatch ${allocation[*]} ${sbatch_options[*]}" >&2
exec sbatch "${allocation[@]}" "${sbatch_options[@]}" launch/slurm.sbatch "$@"
