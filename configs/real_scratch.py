r"""The pretrained encoder's control: configs/whisper.py's data and losses, log-mel from scratch.

  python -m stalign.main --config=configs/real_scratch.py --workdir=runs/real_scratch

The same utterances (synthetic speech and the real speakers, the same held-out ones), the same
losses, head (the teacher's last 2 layers) and updates as configs/whisper.py, but the student
reads 80-band log-mel and learns from scratch: configs/demo.py's Conformer (2 blocks of width
144, with its channel augmentation) over 80 ms frames, where configs/whisper.py's reads a frozen
pretrained Whisper encoder's frames. The difference between the two is what Whisper's
pretraining on 680,000 hours of transcribed speech gives at matched data and updates: the
paper's ASR-pretraining regime with a real ASR encoder (configs/study_whisper.py runs both, with
and without CTC, over seeds).
"""

import ml_collections

from configs import demo
from configs import whisper


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = whisper.get_config(arg)
  scratch = demo.get_config(arg)
  tiny = c.corpus.num_train < 1000
  c.data_dir = "data/tiny_real_logmel" if tiny else "data/real_logmel"
  c.features.frontend = "logmel"
  # The demo's student and its channel augmentation, read from configs/demo.py so the two agree.
  for key in ("subsample", "ctc_upsample", "dim", "depth", "ff_mult"):
    c.model[key] = scratch.model[key]
  c.train.channel_augment = scratch.train.channel_augment
  # The demo's buckets (FSDD digits to synthetic commands) and two more for read sentences (up
  # to 13 s of 10 ms frames).
  c.input.bucket_boundaries = tuple(scratch.input.bucket_boundaries) + (() if tiny else (900, 1300))
  return c
