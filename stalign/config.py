"""The config contract: parsing a config file's `arg`, and one check of every key's value.

Config files (configs/*.py) declare every key with a one-line comment; this
module checks the values once, before any work starts, so a typo in an enum
fails at the command line with the key and its allowed values rather than
training silently without a loss term. `stalign.main` and `stalign.load` call
`validate_config`.
"""

from collections.abc import Iterable
import math
import numbers

import ml_collections

from stalign import added_keys
from stalign import ctc_decode
from stalign import data
from stalign import evaluators
from stalign import fs
from stalign.data import sources
from stalign.data import text as text_lib

ZERO_SHOT_DATASETS = ("synthetic", "fsdd")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and what it may be."""


def upgrade(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (an unlocked copy) with each key of `ADDED_KEYS` it lacks, at its default."""
  config = ml_collections.ConfigDict(config.to_dict())
  for path, default in added_keys.ADDED_KEYS.items():
    *parents, name = path.split(".")
    node = config
    for parent in parents:
      if parent not in node:
        node[parent] = ml_collections.ConfigDict()
      node = node[parent]
    if name not in node:
      node[name] = default
  return config


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config file's `arg` ("tiny", "tiny,seed=3") against declared defaults.

  As big_vision's `parse_arg`: a bare name sets a boolean to True; `name=value`
  converts value to the default's type. Names that are not declared are an
  error, so `configs/demo.py:tyni` fails instead of silently giving the full size.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    name, has_value, value = item.partition("=")
    if name not in defaults:
      raise ConfigError(f"unknown config arg {name!r} in {arg!r}; known: {sorted(defaults)}")
    default = defaults[name]
    if not has_value:
      if not isinstance(default, bool):
        raise ConfigError(f"config arg {name!r} needs a value ({name}=...)")
      out[name] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"config arg {name}={value!r} is not a boolean")
      out[name] = value.lower() in ("true", "1")
    else:
      try:
        out[name] = type(default)(value)
      except ValueError:
        raise ConfigError(
          f"config arg {name}={value!r} is not {type(default).__name__} like its default "
          f"{default!r}"
        ) from None
  return out


def _one_of(key: str, value, allowed: Iterable) -> None:
  allowed = tuple(allowed)
  if value not in allowed:
    raise ConfigError(f"{key}={value!r} is not allowed; use one of {list(allowed)}")


def _all_of(key: str, values, allowed: Iterable) -> None:
  allowed = tuple(allowed)
  unknown = [v for v in values if v not in allowed]
  if unknown:
    raise ConfigError(f"{key} has unknown entries {unknown}; known: {list(allowed)}")


def _at_least(key: str, value, low) -> None:
  if not isinstance(value, numbers.Number) or value < low:
    raise ConfigError(f"{key}={value!r} must be a number >= {low}")


def _above(key: str, value, low) -> None:
  if not isinstance(value, numbers.Number) or value <= low:
    raise ConfigError(f"{key}={value!r} must be a number > {low}")


def _validate_ctc_decode(c: ml_collections.ConfigDict) -> None:
  """How transcripts are decoded (`ctc_decode`): the best path, or a beam under a word model."""
  m = c.model
  if not isinstance(m.ctc_lm, str):
    raise ConfigError(
      f"model.ctc_lm={m.ctc_lm!r} must be '', {ctc_decode.ENGLISH!r} or the path of an ARPA file"
    )
  _at_least("model.ctc_lm_weight", m.ctc_lm_weight, 0)
  if not isinstance(m.ctc_word_bonus, numbers.Number):
    raise ConfigError(f"model.ctc_word_bonus={m.ctc_word_bonus!r} must be a number")
  if not isinstance(m.ctc_beam_width, int) or m.ctc_beam_width < 1:
    raise ConfigError(f"model.ctc_beam_width={m.ctc_beam_width!r} must be an integer >= 1")
  if not m.ctc_lm:
    return
  if not c.loss.ctc_weight:
    raise ConfigError(
      "model.ctc_lm decodes the CTC head, which loss.ctc_weight=0 leaves untrained: set "
      "loss.ctc_weight > 0 or model.ctc_lm=''"
    )
  if c.features.ctc_targets != "chars":
    raise ConfigError(
      f"model.ctc_lm scores words, which features.ctc_targets={c.features.ctc_targets!r} does "
      "not spell: train with features.ctc_targets=chars or set model.ctc_lm=''"
    )
  if not fs.is_remote(m.ctc_lm):  # A bucket's file is looked for at the first decode.
    try:
      ctc_decode.check_word_model(m.ctc_lm)
    except ctc_decode.DecodeError as e:
      raise ConfigError(str(e)) from None


def _validate_whisper(c: ml_collections.ConfigDict) -> None:
  """The Whisper front end's fixed settings, and the layers it and the student take."""
  from stalign.models import frontend  # Imported here: reading weights needs the models.
  from stalign.models import whisper
  from stalign.models import whisper_weights

  _one_of("features.frontend", c.features.frontend, frontend.FRONTENDS)
  _at_least("model.whisper_tuned_layers", c.model.whisper_tuned_layers, 0)
  _at_least("model.teacher_layers", c.model.teacher_layers, 0)
  _above("train.pretrained_lr_factor", c.train.pretrained_lr_factor, 0)
  if c.features.frontend != "whisper":
    if c.model.whisper_tuned_layers:
      raise ConfigError("model.whisper_tuned_layers needs --config.features.frontend=whisper")
    return
  fixed = {"sample_rate": whisper.SAMPLE_RATE, "win_ms": 25.0, "hop_ms": 10.0}
  for key, value in fixed.items():
    if c.features[key] != value:
      raise ConfigError(f"features.frontend='whisper' needs features.{key}={value} (Whisper's)")
  if c.features.max_seconds > 30:
    raise ConfigError("features.frontend='whisper' reads at most 30 s; set features.max_seconds")
  if not 0 <= c.features.whisper_min_seconds <= 30:
    raise ConfigError(
      f"features.whisper_min_seconds={c.features.whisper_min_seconds} must be in [0, 30] "
      "(Whisper's window is 30 s)"
    )
  try:
    _, dims = whisper_weights.load(c.features.whisper_weights)
  except whisper_weights.WeightsError as e:
    raise ConfigError(f"features.whisper_weights: {e}") from e
  if c.features.num_mels != dims.num_mels:
    raise ConfigError(
      f"features.num_mels={c.features.num_mels}, but Whisper {c.features.whisper_weights} reads "
      f"{dims.num_mels} mel bands"
    )
  used = c.features.whisper_layers + c.model.whisper_tuned_layers
  if c.features.whisper_layers < 0 or used > dims.layers:
    raise ConfigError(
      f"features.whisper_layers={c.features.whisper_layers} frozen + model.whisper_tuned_layers="
      f"{c.model.whisper_tuned_layers} tuned exceed Whisper {c.features.whisper_weights}'s "
      f"{dims.layers} layers"
    )
  t = c.train
  if t.channel_augment.warp or t.channel_augment.eq_db or t.channel_augment.lowpass_prob:
    raise ConfigError(
      "train.channel_augment acts on log-mel bands, not on Whisper encoder frames; set "
      "train.channel_augment.warp=0, eq_db=0 and lowpass_prob=0 with features.frontend='whisper'"
    )
  if t.spec_augment.freq_masks:
    raise ConfigError(
      "train.spec_augment.freq_masks would mask Whisper encoder channels, not mel bands: set 0"
    )


def validate_mesh(config: ml_collections.ConfigDict, devices: int) -> None:
  """ConfigError unless `config.mesh` lays out exactly `devices` devices.

  Separate from `validate_config`: a saved run is loaded on machines with any device
  count, and only the commands that build the mesh know theirs.
  """
  sizes = {axis: config.mesh[axis] for axis in ("data", "fsdp", "model")}
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if devices % fixed or (-1 not in sizes.values() and fixed != devices):
    raise ConfigError(
      f"mesh {sizes} does not lay out the {devices} devices; set --config.mesh.data, "
      f"--config.mesh.fsdp and --config.mesh.model to sizes whose product is {devices} "
      "(one of them may be -1: the remaining devices)"
    )


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every enum and range of `config`; returns it, or raises ConfigError naming the key."""
  c = config
  _one_of("data.source", c.data.source, sources.SOURCES.names())
  _all_of("data.train_extra", c.data.train_extra, sources.SOURCES.names())
  for speed in c.data.train_extra_speeds:
    if not isinstance(speed, numbers.Number) or not 0.5 <= speed <= 2.0 or speed == 1.0:
      raise ConfigError(
        f"data.train_extra_speeds entries must be speed factors in [0.5, 2] other than 1 "
        f"(the clip itself is always kept), got {tuple(c.data.train_extra_speeds)}"
      )
  extra = set(c.data.train_extra)
  if not set(c.data.narrowband_copies) <= extra:
    raise ConfigError(
      f"data.narrowband_copies={tuple(c.data.narrowband_copies)} names sources not in "
      f"data.train_extra={tuple(c.data.train_extra)}: only their clips are copied; add them there"
    )
  _above("data.num_shards", c.data.num_shards, 0)
  _all_of("data.real_sources", c.data.real_sources, data.REAL_SOURCES)
  held = c.data.real_held_out
  unprefixed = [s for s in (*held.valid, *held.test) if s.split("/")[0] not in data.REAL_SOURCES]
  if unprefixed:
    raise ConfigError(
      f"data.real_held_out names speakers {unprefixed}; name each as its source labels it, "
      f"SOURCE/SPEAKER with SOURCE one of {list(data.REAL_SOURCES)} (e.g. 'librispeech/1088')"
    )
  both = sorted(set(held.valid) & set(held.test))
  if both:
    raise ConfigError(
      f"data.real_held_out lists {both} in both valid and test; a speaker is held out in one"
    )
  if c.data.source in data.REAL_SOURCES:
    for split in ("valid", "test"):
      if not any(s.startswith(c.data.source + "/") for s in held[split]):
        raise ConfigError(
          f"data.source={c.data.source!r} takes its {split} split from "
          f"data.real_held_out.{split}, which names none of its speakers"
        )
  if c.data.real_sources and c.eval.split not in ("valid", "test"):
    raise ConfigError(
      f"data.real_sources is set but eval.split={c.eval.split!r}: real speech by unseen "
      "speakers is evaluated beside the valid or test split"
    )
  if c.data.source == "manifest":
    missing = [s for s in ("train", "valid", "test") if not c.data.manifests.get(s)]
    if missing:
      raise ConfigError(
        "data.source='manifest' needs a manifest per split; set "
        + " ".join(f"--config.data.manifests.{s}=PATH" for s in missing)
      )
  for key in (
    "num_train",
    "num_valid",
    "num_test",
    "num_zero_shot",
    "chunk_size",
    "workers",
    "wordnet_sentences",
  ):
    _at_least(f"corpus.{key}", c.corpus[key], 1 if key == "chunk_size" else 0)
  if not c.corpus.voices:
    raise ConfigError("corpus.voices is empty; name at least one espeak-ng voice, e.g. 'en-us'")

  _one_of("features.ctc_targets", c.features.ctc_targets, ("chars", "phonemes"))
  text_lib.vocabulary(c.features.ctc_targets)
  for key in ("sample_rate", "num_mels", "win_ms", "hop_ms", "max_seconds"):
    _above(f"features.{key}", c.features[key], 0)
  _validate_whisper(c)

  _above("input.batch_size", c.input.batch_size, 0)
  if list(c.input.bucket_boundaries) != sorted(set(c.input.bucket_boundaries)) or any(
    b <= 0 for b in c.input.bucket_boundaries
  ):
    raise ConfigError(
      f"input.bucket_boundaries={tuple(c.input.bucket_boundaries)} must be "
      "distinct positive frame counts in increasing order"
    )

  for key in ("subsample", "dim", "depth", "heads", "conv_kernel", "ff_mult", "ctc_upsample"):
    _above(f"model.{key}", c.model[key], 0)
  if c.model.dim % c.model.heads:
    raise ConfigError(f"model.dim={c.model.dim} is not divisible by model.heads={c.model.heads}")
  if not -c.model.depth <= c.model.ctc_layer < c.model.depth:
    raise ConfigError(
      f"model.ctc_layer={c.model.ctc_layer} is outside the {c.model.depth} blocks "
      f"(use {-c.model.depth}..{c.model.depth - 1}; -1 = last)"
    )
  if not 0 <= c.model.dropout < 1:
    raise ConfigError(f"model.dropout={c.model.dropout} must be in [0, 1)")
  _one_of("model.pooling", c.model.pooling, ("mean", "attention"))
  for key in ("scan_blocks", "remat"):
    _one_of(f"model.{key}", c.model[key], (False, True))

  _at_least("model.transcript_weight", c.model.transcript_weight, 0)
  if c.model.transcript_weight and not c.loss.ctc_weight:
    raise ConfigError(
      "model.transcript_weight embeds the CTC head's transcripts, which loss.ctc_weight=0 leaves "
      "untrained: set loss.ctc_weight > 0 or model.transcript_weight=0"
    )

  _validate_ctc_decode(c)

  _one_of("loss.distill", c.loss.distill, ("cosine", "mse", "none"))
  for key in ("distill_weight", "contrastive_weight", "bank_weight", "ctc_weight"):
    _at_least(f"loss.{key}", c.loss[key], 0)
  _above("loss.temperature", c.loss.temperature, 0)
  if c.loss.distill == "none" and not c.loss.contrastive_weight and not c.loss.ctc_weight:
    raise ConfigError(
      "no loss term is on: set loss.distill, loss.contrastive_weight or loss.ctc_weight"
    )

  t = c.train
  _above("train.steps", t.steps, 0)
  _above("train.lr", t.lr, 0)
  _at_least("train.warmup_steps", t.warmup_steps, 0)
  _one_of("train.schedule", t.schedule, ("cosine", "linear"))
  _one_of("train.compute_dtype", t.compute_dtype, ("float32", "bfloat16"))
  for key in (
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "max_nonfinite_steps",
    "grad_accumulation",
  ):
    _above(f"train.{key}", t[key], 0)
  for key, value in t.spec_augment.items():
    _at_least(f"train.spec_augment.{key}", value, 0)
  channel = t.channel_augment
  _at_least("train.channel_augment.eq_db", channel.eq_db, 0)
  if not 0 <= channel.warp < 0.5:
    raise ConfigError(f"train.channel_augment.warp must be in [0, 0.5), got {channel.warp}")
  if not 0 <= channel.lowpass_prob <= 1:
    raise ConfigError(
      f"train.channel_augment.lowpass_prob must be in [0, 1], got {channel.lowpass_prob}"
    )
  low, high = channel.lowpass_hz
  if not 0 < low <= high <= c.features.sample_rate / 2:
    raise ConfigError(
      f"train.channel_augment.lowpass_hz must be 0 < low <= high <= sample_rate / 2, got "
      f"{channel.lowpass_hz}"
    )
  if c.init_skip and not c.init_from:
    raise ConfigError("init_skip is set but init_from is empty: name the run to warm-start from")

  for axis in ("data", "fsdp", "model"):
    if c.mesh[axis] != -1:
      _above(f"mesh.{axis}", c.mesh[axis], 0)
  if [c.mesh[axis] for axis in ("data", "fsdp", "model")].count(-1) > 1:
    raise ConfigError(f"mesh {dict(c.mesh)} has more than one axis of -1 (= the remaining devices)")

  _all_of("eval.evaluators", c.eval.evaluators, evaluators.EVALUATORS.names())
  _all_of("eval.during_training", c.eval.during_training, evaluators.EVALUATORS.names())
  _all_of("eval.zero_shot", c.eval.zero_shot, ZERO_SHOT_DATASETS)
  _above("eval.batch_size", c.eval.batch_size, 0)
  _at_least("eval.every_steps", c.eval.every_steps, 0)
  if not c.eval.zero_shot_templates or any("{}" not in t for t in c.eval.zero_shot_templates):
    raise ConfigError(
      "eval.zero_shot_templates must be non-empty and each hold '{}' for the class name"
    )
  return config
