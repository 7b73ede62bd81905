"""The regime study's grid: which runs it trains, each one's config, and the study keys' checks.

configs/study.py describes the grid (regimes x loss families x seeds, every
cell on one step budget); `plan` turns it into the runs, in the order they are
trained, each with its full run config (the recipe, then its regime's and its
family's changes), built and checked before anything trains. What a run is
and why the budget is what it is: configs/study.py's docstring.
"""

from collections.abc import Mapping
import dataclasses
import os

import ml_collections

from stalign import config as config_lib

PRETRAIN = "asr_pretrain"  # Folder of the shared pretraining runs.
# Sections that decide which utterances a run reads: the recipe's, the same for every run.
UTTERANCE_KEYS = ("corpus", "data")
# What a regime may change of its data: another front end of the same utterances (configs/
# study_whisper.py: log-mel against Whisper's frames), in a data folder of its own.
FRONT_END_KEYS = ("data_dir", "features")


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of the grid: where it lives, its full config, and how it is evaluated."""

  name: str  # "a_distill-ours/seed0", "asr_pretrain/seed0"
  workdir: str
  config: ml_collections.ConfigDict
  regime: str  # "" for pretraining.
  family: str  # "" for pretraining.
  seed: int
  offset: int  # Update steps before this run's first (pretraining): where its curve starts.

  @property
  def evaluated(self) -> bool:
    return bool(self.regime)


def cell_name(regime: str, family: str) -> str:
  return f"{regime}-{family}"


def seeds(config: ml_collections.ConfigDict) -> list[int]:
  return [config.seed + i for i in range(config.study.seeds)]


def validate_study(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks the `study` keys against the recipe; returns `config` or raises ConfigError."""
  s = config.study
  if s.seeds < 1:
    raise config_lib.ConfigError(f"study.seeds={s.seeds} must be >= 1")
  if _warm_starts(config) and not 0 < s.pretrain_steps < config.train.steps:
    raise config_lib.ConfigError(
      f"study.pretrain_steps={s.pretrain_steps} must be in 1..train.steps-1 "
      f"({config.train.steps - 1}): it is part of every cell's train.steps"
    )
  if not _warm_starts(config) and s.pretrain_steps:
    raise config_lib.ConfigError(
      f"study.pretrain_steps={s.pretrain_steps}, but no regime warm-starts (init_from): set it "
      "to 0, or every cell's budget would count pretraining that never runs"
    )
  if config.train.warmup_steps >= config.train.steps - s.pretrain_steps:
    raise config_lib.ConfigError(
      f"train.warmup_steps={config.train.warmup_steps} outlasts the fine-tuning of (b) and (d) "
      f"(train.steps - study.pretrain_steps = {config.train.steps - s.pretrain_steps})"
    )
  if s.baseline not in s.regimes:
    raise config_lib.ConfigError(
      f"study.baseline={s.baseline!r} is not a regime; use one of {sorted(s.regimes)}"
    )
  if not s.families:
    raise config_lib.ConfigError("study.families is empty: name at least one loss family")
  if not config.eval.every_steps or "retrieval" not in config.eval.during_training:
    raise config_lib.ConfigError(
      "the curves need eval.every_steps > 0 and 'retrieval' in eval.during_training"
    )
  for where, changes in [("study.pretrain", s.pretrain)] + [
    (f"study.regimes.{name}", c) for name, c in s.regimes.items()
  ]:
    shared = sorted(set(changes) & set(UTTERANCE_KEYS))
    if shared:
      raise config_lib.ConfigError(
        f"{where} changes {shared}: every run of a study reads the same utterances, so these "
        "settings are the recipe's (top-level keys)"
      )
    if "features" in changes and "data_dir" not in changes:
      raise config_lib.ConfigError(
        f"{where} changes features but not data_dir: a front end of its own needs a data "
        "folder of its own (features are stored in it)"
      )
    if where == "study.pretrain" and set(changes) & set(FRONT_END_KEYS):
      raise config_lib.ConfigError(
        f"{where} changes {sorted(set(changes) & set(FRONT_END_KEYS))}: the pretraining run "
        "reads the recipe's data folder"
      )
  return config


def _warm_starts(config: ml_collections.ConfigDict) -> bool:
  return any(r.get("init_from") for r in config.study.regimes.values())


def data_configs(runs: list[Run]) -> list[ml_collections.ConfigDict]:
  """One run config per data folder the runs read, in the runs' order: what to build first."""
  folders = {}
  for run in runs:
    folders.setdefault(run.config.data_dir, run.config)
  return list(folders.values())


def _apply(node: ml_collections.ConfigDict, changes: ml_collections.ConfigDict, where: str) -> None:
  """Sets each key of the nested `changes` in `node`; a key `node` lacks is an error."""
  for key, value in changes.items():
    if key not in node:
      raise config_lib.ConfigError(f"{where}.{key} is not a key of the run config")
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      _apply(node[key], value, f"{where}.{key}")
    else:
      node[key] = value


def recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run config every run starts from: the study config without its `study` keys."""
  c = ml_collections.ConfigDict(config.to_dict())
  del c["study"]
  return c


def plan(config: ml_collections.ConfigDict, workdir: str) -> list[Run]:
  """Every run of the study, in order: per seed its pretraining run, then one run per cell.

  Seed-major, so that a study stopped half-way already holds whole seeds to compare. Each
  run's config is built and `stalign.config.validate_config`d here, before anything trains. The
  pretraining runs exist only when a regime warm-starts.
  """
  s = config.study
  total, pretrain_steps = config.train.steps, s.pretrain_steps
  warm = _warm_starts(config)
  runs = []
  for seed in seeds(config):
    pretrain_dir = os.path.join(workdir, PRETRAIN, f"seed{seed}")
    if warm:
      c = recipe(config)
      _apply(c, s.pretrain, "study.pretrain")
      c.seed, c.train.steps = seed, pretrain_steps
      c.eval.every_steps = 0  # Retrieval is at chance without an embedding loss: no curve.
      runs.append(Run(f"{PRETRAIN}/seed{seed}", pretrain_dir, c, "", "", seed, 0))
    for regime in sorted(s.regimes):
      for family in sorted(s.families):
        c = recipe(config)
        _apply(c, s.regimes[regime], f"study.regimes.{regime}")
        _apply(c.loss, s.families[family], f"study.families.{family}")
        c.seed = seed
        offset = 0
        if c.init_from:  # The regime warm-starts: from this seed's pretraining run.
          c.init_from, c.train.steps, offset = pretrain_dir, total - pretrain_steps, pretrain_steps
        cell = cell_name(regime, family)
        run_dir = os.path.join(workdir, cell, f"seed{seed}")
        runs.append(Run(f"{cell}/seed{seed}", run_dir, c, regime, family, seed, offset))
  for run in runs:
    try:
      config_lib.validate_config(run.config)
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f"{run.name}: {e}") from e
  return runs
