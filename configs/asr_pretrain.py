r"""Regime (b), first half: ASR pretraining with CTC only.

  python -m stalign.main --config=configs/asr_pretrain.py --workdir=runs/asr_pretrain

The retrieval report of this run is at chance by construction (no embedding
loss); its encoder initialises configs/distill_from_asr.py and multitask_from_asr.py.
"""

import ml_collections

from configs import demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = demo.get_config(arg)
  c.loss.distill = "none"
  c.loss.contrastive_weight = 0.0
  c.loss.bank_weight = 0.0
  c.loss.ctc_weight = 1.0
  return c
