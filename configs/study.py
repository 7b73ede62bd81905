r"""The regime study: regimes (a)-(d) x two loss families x seeds, every cell on one step budget.

  python -m stalign.study --config=configs/study.py --workdir=runs/study
  python -m stalign.study --config=configs/study.py:quick --workdir=/tmp/study   # tiny, minutes

What a run is. The top-level keys are the demo recipe (configs/demo.py; `:tiny` for `quick`),
so the study follows the recipe as it changes. `study.regimes.<regime>` holds what that
regime's own config file changes in the recipe, found here by comparing the two (`changes`),
and `study.pretrain` what configs/asr_pretrain.py changes:

  a_distill        configs/distill.py             cosine + contrastive, no CTC, from scratch
  b_asr_distill    configs/distill_from_asr.py    as (a), encoder from the ASR pretraining run
  c_multitask      configs/demo.py                as (a) + CTC, from scratch (the recipe itself)
  d_asr_multitask  configs/multitask_from_asr.py  as (c), encoder from the ASR pretraining run

`study.families.<family>` then changes the loss: `ours` is the recipe's loss as it stands
(cosine to centred teacher targets + in-batch InfoNCE), `paper` is the paper's plain distance to
the raw teacher embedding (`loss.distill`, no centring, no contrastive term; CTC as the regime
says). A regime whose config warm-starts (`init_from`) starts from the study's own pretraining
run of the same seed, `WORKDIR/asr_pretrain/seed<k>`, shared by (b) and (d) of both families.
At paper scale, REGIME_CONFIGS would name configs/tpu_*.py instead (with `:from_asr` for (b)
and (d)); nothing else here is local.

Budget, matched: every cell gets `train.steps` = T optimizer updates of `input.batch_size`
utterances in total. (a) and (c) train T steps from scratch; the pretraining run takes
`study.pretrain_steps` = P of them, and (b) and (d) train the remaining T - P. Per seed that is
one pretraining run of P steps, four runs of T ((a), (c), two families) and four of T - P.

Why T = 300 and P = 100 (2-core CPU, no accelerator; the recipe's 0.2 s per step, ~10 s per
bucket shape to compile (`compile_s` in RUN/train_history.json), 15-50 s to evaluate):
  steps:       3 seeds x (4 x 300 + 4 x 200 + 100) = 6,300 steps x 0.2 s              = 21 min
  compiling:   the first seed's 9 runs each compile their train step (the loss and the
               schedule's length are compiled in) for 7 bucket shapes, ~70 s a run;
               seeds 1 and 2 load those from the persistent cache (the seed is not
               compiled in: seed-1 and seed-2 runs take their first step in 2-3 s)
               9 x 70 s + 18 x 3 s                                                    = 11 min
  evaluation:  24 runs, ~50 s each for seed 0 (first compiles), 15 s for seeds 1-2   = 11 min
  curves:      valid retrieval every 50 steps, 3 x (4 x 6 + 4 x 4) = 120 x ~2.5 s     =  5 min
  total                                                                               ~ 48 min
plus a few minutes to build data/demo if it is missing. Measured (2026-11-26, data built): recipe
at `21a338f` (2 blocks x 2,700 steps, CTC weight 1.0), 39 min 53 s for the 27 runs, with another
training job beside it for the first 16 minutes; at `12f0f8e` (weight decay 0.1), 50 min 49 s with
short test runs beside it, while the report's CTC transcripts still took a padded batch per clip
(about 20 s more per evaluation of (c) and (d); since batched, about 1 s); at `2fe4aae`
(2026-11-27, DC offset removed), 44 min 26 s with nothing else running. Seed-1 and seed-2 runs
trained in 0.5-1.4 min. At this budget the recipe's
own cell reaches test R@1 0.14 (the demo's 2,700 steps: 0.89); docs/analysis.md has the
tables. T is a ninth of the demo's 2,700 steps: the study compares regimes at
a budget a 2-core CPU affords, not at convergence, and the ASR pretraining is short (P = T / 3);
`--config.study.pretrain_steps` moves the split. Each further 100 steps of T cost
3 x 8 x 100 x 0.2 s = 8 min.

`quick` runs every stage of the same grid at tiny size (2 seeds, 8 steps, one padded length) in
minutes; the test suite runs it. Every key below is declared once, with a comment;
`stalign.study_plan.validate_study` checks the study keys and `stalign.study_plan.plan` builds (and
`stalign.config.validate_config`s) every run's config before any work.
"""

import importlib

import ml_collections

from configs import demo
from stalign import config as config_lib

# regime -> the config file (configs/<name>.py) that defines it, and the pretraining one.
REGIME_CONFIGS = {
  "a_distill": "distill",
  "b_asr_distill": "distill_from_asr",
  "c_multitask": "demo",
  "d_asr_multitask": "multitask_from_asr",
}
PRETRAIN_CONFIG = "asr_pretrain"


def changes(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> dict:
  """The keys whose value `config` sets differently from `base`, nested as in the config."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      inner = changes(value, base[key])
      if inner:
        out[key] = inner
    elif value != base[key]:
      out[key] = value
  return out


def _changes_of(
  name: str, arg: str | None, recipe: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
  module = importlib.import_module(f"configs.{name}")
  return ml_collections.ConfigDict(changes(module.get_config(arg), recipe))


def budget(c: ml_collections.ConfigDict, quick: bool) -> ml_collections.ConfigDict:
  """A recipe on a study's budget: every cell's updates, its checkpoints and curves, and seeds.

  Shared by every study config (configs/study_whisper.py too), so their grids compare alike.
  """
  # Total optimizer updates of every cell, pretraining included (T in the docstring).
  c.train.steps = 8 if quick else 300
  # Checkpoint (+ valid loss and CER) this often: a killed run resumes from the last one.
  c.train.checkpoint_every = 4 if quick else 100
  if quick:
    c.train.warmup_steps = 2  # The tiny recipe's 5 would outlast a 4-step fine-tuning run.
  # Valid-split retrieval this often, for the R@1-against-step curves; it divides
  # study.pretrain_steps and train.steps so that every regime is measured at the same steps.
  c.eval.every_steps = 4 if quick else 50
  c.eval.during_training = ("retrieval",)  # The curves need retrieval only.
  c.study = ml_collections.ConfigDict()
  c.study.seeds = 2 if quick else 3  # Runs per cell, with seeds `seed`, `seed` + 1, ...
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # `tiny` is the name every config's small variant also answers to (tests/test_config.py).
  args = config_lib.parse_arg(arg, quick=False, tiny=False)
  quick = args.quick or args.tiny
  run_arg = "tiny" if quick else None
  recipe = demo.get_config(run_arg)
  c = budget(demo.get_config(run_arg), quick)  # The recipe, on the study's budget.
  if quick:
    # One padded length (the longest): one compiled step per loss and schedule, so the quick
    # grid's time goes to running every stage rather than to compiling bucket shapes.
    c.input.bucket_boundaries = ()
  c.study.pretrain_steps = 4 if quick else 100  # P: ASR pretraining steps of (b) and (d).
  c.study.baseline = "a_distill"  # The regime the others are compared with, seed by seed.
  # What each regime's config file (REGIME_CONFIGS) and configs/asr_pretrain.py change in the
  # recipe: loss weights and warm start; the warm start's source is replaced by the study's own.
  c.study.regimes = ml_collections.ConfigDict(
    {name: _changes_of(module, run_arg, recipe) for name, module in REGIME_CONFIGS.items()}
  )
  c.study.pretrain = _changes_of(PRETRAIN_CONFIG, run_arg, recipe)
  # Loss families: changes to `loss` on top of each regime.
  c.study.families = ml_collections.ConfigDict()
  c.study.families.ours = ml_collections.ConfigDict()  # The recipe's loss, unchanged.
  # The paper's: plain distance ("cosine" or "mse") to the raw teacher embedding.
  c.study.families.paper = ml_collections.ConfigDict(
    dict(distill="cosine", centre_targets=False, contrastive_weight=0.0)
  )
  return c
