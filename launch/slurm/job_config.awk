# A job's copy of a llava-pipe config (launch/slurm.sbatch): the user's file with
# coordinator.endpoint and coordinator.curve replaced by the job's own, and a relative
# model.checkpoint made absolute (the copy lives in the job's folder, not beside the original).
#   awk -v config_dir=DIR -v endpoint=tcp://0.0.0.0:PORT \
#       -v server_key=FILE -v worker_key=FILE -f job_config.awk CONFIG > JOB.yaml
# Only the two top-level blocks `model:` and `coordinator:` are touched; they must be
# written as indented blocks (not `{...}` on one line). Exits 2 with the reason otherwise.

function fail(message) {
  printf "%s:%d: %s\n", FILENAME, FNR, message > "/dev/stderr"
  failed = 1
  exit 2
}

function indent_of(line) {
  match(line, /^ */)
  return RLENGTH
}

# What the coordinator block gets from the job, at the block's own indentation.
function print_job_keys(pad) {
  printf "%sendpoint: %s\n", pad, endpoint
  printf "%scurve: {server_key: \"%s\", worker_key: \"%s\"}\n", pad, server_key, worker_key
}

BEGIN {
  if (endpoint == "" || server_key == "" || worker_key == "" || config_dir == "") {
    print "job_config.awk: needs -v config_dir=, endpoint=, server_key= and worker_key=" > "/dev/stderr"
    failed = 1
    exit 2
  }
  block = ""           # the top-level block we are in
  skip_deeper = -1     # dropping a replaced key's nested lines deeper than this indentation
  pending_keys = 0     # coordinator: seen, job keys not yet written
}

{
  line = $0
  blank = line ~ /^[ \t]*(#.*)?$/
  indent = indent_of(line)

  if (skip_deeper >= 0) {
    if (blank || indent > skip_deeper) next
    skip_deeper = -1
  }

  if (!blank && indent == 0) {
    if (pending_keys) { print_job_keys("  "); pending_keys = 0 }
    block = line
    sub(/:.*/, "", block)
    if (block == "coordinator" || block == "model") {
      rest = line
      sub(/^[^:]*:[ \t]*/, "", rest)
      if (rest !~ /^(#.*)?$/) fail(block ": write it as an indented block (one key a line) for launch/slurm.sbatch")
      if (block == "coordinator") { seen_coordinator = 1; pending_keys = 1 }
    }
    print line
    next
  }

  if (block == "coordinator" && !blank) {
    if (pending_keys) {
      print_job_keys(substr(line, 1, indent))
      pending_keys = 0
      child_indent = indent
    }
    if (indent == child_indent && line ~ /^ *(endpoint|curve)[ \t]*:/) {
      skip_deeper = indent
      next
    }
  }

  if (block == "model" && line ~ /^ +checkpoint[ \t]*:/) {
    value = line
    sub(/^ *checkpoint[ \t]*:[ \t]*/, "", value)
    sub(/[ \t]+#.*$/, "", value)
    sub(/[ \t]+$/, "", value)
    if (value ~ /^".*"$/ || value ~ /^'.*'$/) value = substr(value, 2, length(value) - 2)
    if (value !~ /^\//) {
      printf "%scheckpoint: \"%s/%s\"\n", substr(line, 1, indent), config_dir, value
      next
    }
  }
  print line
}

END {
  if (failed) exit 2
  if (pending_keys) print_job_keys("  ")
  if (!seen_coordinator) {
    print "coordinator:"
    print_job_keys("  ")
  }
}
