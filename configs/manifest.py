r"""Your own speech: train on NeMo-style manifests and nothing else.

  python -m stalign.main --config=configs/manifest.py --workdir=runs/mine \
    --config.data.manifests.train=train.jsonl --config.data.manifests.valid=valid.jsonl \
    --config.data.manifests.test=test.jsonl

A manifest has one JSON object per line, as NeMo's: `audio_filepath` (absolute, or relative to the
manifest), `text` (the transcript), optionally `duration` and `speaker`. Audio of any sample rate
and channel count is read and resampled; lines that cannot be used are skipped, counted and named
in the split's summary. Keep the speakers of the three manifests apart, or the test split measures
voices the student has heard.

Built on configs/whisper.py (every key is declared in configs/demo.py); what differs, and why:
- Only the manifests: no synthetic corpus, no FSDD, LibriSpeech or AN4 (`data.train_extra`,
  `data.real_sources`), so nothing outside your files is read.
- No zero-shot sections (they need the synthetic corpus's held-out intents or FSDD) and no
  probes (they need the synthetic corpus's labels): the report is retrieval and geometry.
- No channel augmentation (configs/whisper.py: the Whisper front end has none). Add SpecAugment
  with `--config.train.spec_augment.time_masks=2` if your data is small.
- `data_dir` is `data/manifest`: point it elsewhere per dataset, since a data folder is built
  once (`--config.data_dir=data/mine`).
- 2,000 steps instead of the demo's 1,000: set `train.steps` to your data's size (an epoch is
  the train manifest's lines / `input.batch_size` steps).
"""

import ml_collections

from configs import whisper


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = whisper.get_config(arg)
  tiny = c.corpus.num_train < 1000
  c.data_dir = "data/tiny_manifest" if tiny else "data/manifest"
  c.data.source = "manifest"
  c.data.train_extra = ()
  c.data.real_sources = ()
  c.corpus.wordnet_sentences = 0
  c.eval.zero_shot = ()
  c.eval.evaluators = ("retrieval", "geometry")
  c.train.steps = 30 if tiny else 2_000
  return c
