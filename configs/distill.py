r"""Regime (a): distillation only (cosine to centred targets + in-batch contrastive), from scratch.

python -m stalign.main --config=configs/distill.py --workdir=runs/distill
"""

import ml_collections

from configs import demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = demo.get_config(arg)
  c.loss.ctc_weight = 0.0
  return c
