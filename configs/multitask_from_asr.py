r"""Regime (d): multitask distillation + CTC, initialised from the ASR-pretrained encoder.

  python -m stalign.main --config=configs/asr_pretrain.py --workdir=runs/asr_pretrain
  python -m stalign.main --config=configs/multitask_from_asr.py --workdir=runs/multitask_from_asr

Regime (c), multitask from scratch, is configs/demo.py itself.
"""

import ml_collections

from configs import demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = demo.get_config(arg)
  c.init_from = "runs/asr_pretrain"
  c.init_skip = ("pool_",)
  return c
