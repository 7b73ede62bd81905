r"""Regime (a), or (b) with `:from_asr`, at paper scale: distillation on LibriSpeech 960 h.

Cosine to centred teacher targets + in-batch InfoNCE, no CTC. From scratch (a):

  launch/tpu_vm.sh stalign-v4 us-central2-b v4-32 configs/tpu_distill.py \
      gs://BUCKET/runs/tpu_distill --config.data_dir=gs://BUCKET/data/librispeech

or from the encoder of configs/tpu_asr_pretrain.py (b2: `pool_*` start fresh):

  launch/tpu_vm.sh stalign-v4 us-central2-b v4-32 configs/tpu_distill.py:from_asr \
      gs://BUCKET/runs/tpu_distill_from_asr --config.data_dir=gs://BUCKET/data/librispeech \
      --config.init_from=gs://BUCKET/runs/tpu_asr_pretrain

`:runlocal` (`:runlocal,from_asr`) shrinks every size as configs/tpu_multitask.py's does.
Data, model, mesh and schedule are tpu_multitask's, so the runs share one data_dir.
"""

import ml_collections

from configs import tpu_multitask
from stalign import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, runlocal=False, tiny=False, seed=0, from_asr=False)
  c = tpu_multitask.get_config(f"runlocal={args.runlocal or args.tiny},seed={args.seed}")
  c.loss.ctc_weight = 0.0
  if args.from_asr:
    c.init_from = "runs/tpu_asr_pretrain"  # Usually overridden with the gs:// workdir.
    c.init_skip = ("pool_",)
  return c
