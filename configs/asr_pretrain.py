r"""Regime (b), first half: ASR pretraining with CTC only.

  python -m stalign.main --config=configs/asr_pretrain.py --workdir=runs/asr_pretrain

The retrieval report of this run is at chance by construction (no embedding
loss); its encoder initialises configs/distill_from_asr.py and multitask_from_asr.py.
"""

import ml_collections

from configs import demo


def ctc_only(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`c` with CTC its only loss, every embedding term off.

  The paper-scale run (configs/tpu_asr_pretrain.py) is this same regime on
  another base, so a loss term added to the recipe is turned off here once.
  """
  c.loss.distill = "none"
  c.loss.contrastive_weight = 0.0
  c.loss.bank_weight = 0.0
  c.loss.ctc_weight = 1.0
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return ctc_only(demo.get_config(arg))
