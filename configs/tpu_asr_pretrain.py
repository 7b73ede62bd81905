r"""Regime (b), first half, at paper scale: CTC-only ASR pretraining on LibriSpeech 960 h.

  launch/tpu_vm.sh stalign-v4 us-central2-b v4-32 configs/tpu_asr_pretrain.py \
      gs://BUCKET/runs/tpu_asr_pretrain --config.data_dir=gs://BUCKET/data/librispeech
  python -m stalign.main --config=configs/tpu_asr_pretrain.py:runlocal \
      --workdir=/tmp/tpu_asr_runlocal --config.data.tfds_dir=PATH

Data, model, mesh and schedule are configs/tpu_multitask.py's (its docstring
says how they were sized), so the two runs share one data_dir; the losses are
configs/asr_pretrain.py's (`ctc_only`). The retrieval report of this run is at
chance by construction (no embedding loss); its encoder initialises
`configs/tpu_distill.py:from_asr`.
"""

import ml_collections

from configs import asr_pretrain
from configs import tpu_multitask


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return asr_pretrain.ctc_only(tpu_multitask.get_config(arg))
