r"""Regime (b): distillation initialised from the ASR-pretrained encoder.

  python -m stalign.main --config=configs/asr_pretrain.py --workdir=runs/asr_pretrain
  python -m stalign.main --config=configs/distill_from_asr.py --workdir=runs/distill_from_asr

The encoder (front end, Conformer blocks, CTC head) comes from the ASR run;
the utterance head (`pool_*`) starts fresh, as the log lists.
"""

import ml_collections

from configs import distill


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = distill.get_config(arg)
  c.init_from = "runs/asr_pretrain"
  c.init_skip = ("pool_",)
  return c
