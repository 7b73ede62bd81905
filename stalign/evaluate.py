r"""Evaluates a trained run: embeds a split once, runs the evaluators, zero-shot tasks, the report.

  python -m stalign.evaluate --workdir=runs/demo                 # config from runs/demo/config.json
  python -m stalign.evaluate --workdir=runs/demo --step=1000
  python -m stalign.evaluate --workdir=runs/demo --fsdd_dir=other_fsdd --report_name=other_fsdd

Evaluation only reads: every split it needs is built by the data stage
(`python -m stalign.main ... --stages=data`). `RUN/report.json` is the run's own
evaluation (its config, its FSDD folder); evaluating on another set (another
`--fsdd_dir`, or another `--config`) needs `--report_name=NAME` and writes
`RUN/NAME.json`, `RUN/NAME.md` and `NAME_*.png`, so no report overwrites another.

Sections of the report (schema: docs/report_schema.md):
  retrieval, geometry, probing   evaluators named in `eval.evaluators`, on `eval.split`;
  zero_shot.synthetic            held-out intents of the corpus's `zero_shot` split, classified by
                                 their text descriptions (runs when `data.source` is synthetic);
  zero_shot.fsdd                 spoken digits of real people classified by the digit words, per
                                 speaker; voices absent from the run's training data apart; with
                                 a CTC head, what it transcribes per speaker (`ctc`);
  real_speech                    the `real_{eval.split}` split (`data.real_sources`: speakers
                                 held out of training), retrieval and CTC per domain.

The student's embeddings are compared with the teacher's in the space the
student was trained to match (teacher minus the training mean when
`loss.centre_targets`), which is the space users query.
"""

import collections
import os

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from stalign import api
from stalign import cli
from stalign import config as config_lib
from stalign import data
from stalign import evaluators
from stalign import fs
from stalign import report
from stalign import restore
from stalign.data import grammar
from stalign.data import layout
from stalign.data import sources
from stalign.data import text as text_lib
from stalign.evaluators import split as split_lib
from stalign.evaluators import zero_shot


def embed_split(model: api.Model, split: str) -> evaluators.Embeddings:
  """Every record of `split`, in file order, with its transcript, labels and pooled layers."""
  return embed_records(model, split_lib.read_split(model.config.data_dir, split))


def embed_records(
  model: api.Model, records: list[dict], embedded: tuple[np.ndarray, np.ndarray] | None = None
) -> evaluators.Embeddings:
  """`embed_split` of records already read (`evaluators.split.read_split`), through the seam
  training uses too (`evaluators.split.embed`), with `model`'s predict functions; `embedded`:
  the records' (embeddings, pooled layers) where the caller has them already."""
  return split_lib.embed(
    [split_lib.as_batch(records)],
    (lambda batch: embedded)
    if embedded
    else (lambda batch: model.embed_features(batch["features"])),
    lambda texts: model.teacher.embed(texts),  # Loads the teacher only when records lack it.
    model.target_mean,
  )


def zero_shot_synthetic(model: api.Model) -> dict:
  """Held-out intents against their descriptions: among the held-out ones, and among all intents."""
  emb = embed_split(model, data.ZERO_SHOT_SPLIT)
  templates = model.config.eval.zero_shot_templates
  descriptions = grammar.intent_descriptions()
  intents = [d["intent"] for d in emb.labels]
  out = {}
  for name, names in (
    ("held_out", sorted(grammar.HELD_OUT_INTENTS)),
    ("all_intents", sorted(descriptions)),
  ):
    classes = zero_shot.class_embeddings(
      model.encode_text, [descriptions[n] for n in names], templates
    )
    out[name] = zero_shot.evaluate(
      emb.speech,
      np.array([names.index(i) for i in intents]),
      classes,
      names,
      groups=[d.get("voice", "") for d in emb.labels],
    )
  # The headline figure: the held-out intents among themselves.
  return {
    "accuracy": out["held_out"]["accuracy"],
    "chance": out["held_out"]["chance"],
    "utterances": out["held_out"]["utterances"],
    **out,
  }


def trained_speakers(config: ml_collections.ConfigDict) -> list[str] | None:
  """Speakers in the run's training data (the train split's summary); None if it predates them."""
  speakers = layout.read_summary(config.data_dir, "train").get("speakers")
  return None if speakers is None else sorted(speakers)


def held_out_speakers(config: ml_collections.ConfigDict, speakers: list[str]) -> tuple[list, str]:
  """(the speakers among `speakers` the run never trained on, where that was decided).

  Decided by the speakers of the training data, not by a list in the config,
  which can disagree with what was trained on (another --fsdd_dir, other
  train sources). Data folders written before the summaries listed speakers
  fall back to `eval.fsdd_held_out_speakers`, with a warning.
  """
  trained = trained_speakers(config)
  if trained is not None:
    return sorted(set(speakers) - set(trained)), "training_data"
  logging.warning(
    "the train split summary in %s lists no speakers (written by an older stalign): unseen "
    "voices are taken from eval.fsdd_held_out_speakers=%s; rebuild the data with `%s` into a new "
    "data_dir to decide them by the training data",
    config.data_dir,
    list(config.eval.fsdd_held_out_speakers),
    layout.PREPARE_COMMAND,
  )
  return list(config.eval.fsdd_held_out_speakers), "config"


def transcript_errors(
  transcripts: list[str], references: list[str], groups: list[str], most_common: int = 3
) -> dict:
  """Greedy CTC transcripts scored against what a perfect head would write, per group.

  Returns error_rate (edit distance over reference length, in characters of the
  transcript: IPA symbols for phoneme targets) and exact (share transcribed
  exactly), overall and per group, and per group and reference its
  `most_common` transcripts with their counts: what each voice is heard as.
  """

  def scores(rows: list[int]) -> dict:
    errors = sum(text_lib.edit_distance(transcripts[i], references[i]) for i in rows)
    length = sum(len(references[i]) for i in rows)
    exact = sum(transcripts[i] == references[i] for i in rows)
    return {"error_rate": errors / max(length, 1), "exact": exact / max(len(rows), 1)}

  by_group = collections.defaultdict(list)
  for i, g in enumerate(groups):
    by_group[str(g)].append(i)
  heard = {}
  for g, rows in sorted(by_group.items()):
    per_reference = collections.defaultdict(collections.Counter)
    for i in rows:
      per_reference[references[i]][transcripts[i]] += 1
    heard[g] = {
      ref: [[t, n] for t, n in counts.most_common(most_common)]
      for ref, counts in sorted(per_reference.items())
    }
  return {
    **scores(list(range(len(transcripts)))),
    "per_group": {g: scores(rows) for g, rows in sorted(by_group.items())},
    "most_common": heard,
  }


def zero_shot_fsdd(model: api.Model, fsdd_dir: str) -> dict:
  """Real spoken digits classified against the ten digit words; per speaker, unseen voices apart.

  With a trained CTC head, `ctc` adds what the head transcribes (`transcript_errors`):
  a voice whose digits land wrongly may be misheard, or heard and misplaced.
  """
  examples = list(sources.fsdd_examples(fsdd_dir))
  rate = model.config.features.sample_rate
  waves = [model.load_waveform(ex["audio_filepath"]) for ex in examples]
  ctc = bool(model.config.loss.ctc_weight)
  windows = [model.windows(wave) for wave in waves]
  if ctc and all(len(w) == 1 for w in windows):
    # Spoken digits fit one window each: one forward pass and one decode give both.
    speech, _, heard = model.embed_and_transcribe_features([w[0] for w in windows])
  else:  # `encode_speech`'s embedding of the windows already cut; the CER cuts its own.
    speech = model.embed_windows(windows)
    heard = model.transcribe(waves, sample_rate=rate) if ctc else None
  digits = np.array([ex["labels"]["digit"] for ex in examples])
  speakers = [ex["labels"]["speaker"] for ex in examples]
  templates = model.config.eval.zero_shot_templates
  classes = zero_shot.class_embeddings(model.encode_text, list(sources.DIGIT_WORDS), templates)
  out = zero_shot.evaluate(speech, digits, classes, list(sources.DIGIT_WORDS), groups=speakers)
  held_out, decided_by = held_out_speakers(model.config, sorted(set(speakers)))
  held = np.isin(speakers, held_out)
  correct = np.asarray(zero_shot.predict(speech, classes)) == digits
  out["held_out_speakers"] = held_out
  out["held_out_from"] = decided_by
  out["held_out_accuracy"] = float(correct[held].mean()) if held.any() else None
  out["seen_accuracy"] = float(correct[~held].mean()) if (~held).any() else None
  if ctc:
    kind = model.config.features.ctc_targets
    references = [text_lib.target_text(ex["text"], kind) for ex in examples]
    out["ctc"] = {"targets": kind, **transcript_errors(heard, references, speakers)}
  return out


def subset(emb: evaluators.Embeddings, rows: np.ndarray) -> evaluators.Embeddings:
  """The utterances `rows` of `emb`, its gallery cut to their distinct transcripts."""
  used, index = np.unique(emb.text_index[rows], return_inverse=True)
  return evaluators.Embeddings(
    speech=emb.speech[rows],
    text=emb.text[used],
    text_index=index,
    texts=[emb.texts[i] for i in used],
    raw_text=emb.raw_text[used],
    labels=[emb.labels[i] for i in rows],
    ids=[emb.ids[i] for i in rows],
  )


def real_speech(model: api.Model, split: str) -> dict:
  """Real speech by speakers held out of training (`data.real_split`), per domain and all together.

  Per group: clips, distinct sentences and speakers; the retrieval evaluator over the group's
  distinct transcripts (`retrieval`, None for a group of one sentence); with a trained CTC head
  its character (or phoneme) error rate (`ctc`, as `transcript_errors`). `seen_in_training`
  lists the split's speakers that the train split holds: empty unless the folders disagree.
  """
  config = model.config
  records = split_lib.read_split(config.data_dir, split)
  heard = None
  if config.loss.ctc_weight:  # One forward pass and one decode give the embeddings and the CER.
    speech, layers, heard = model.embed_and_transcribe_features([r["features"] for r in records])
    emb = embed_records(model, records, (speech, layers))
  else:
    emb = embed_records(model, records)
  domains = np.array([str(label.get("domain", "")) for label in emb.labels])
  speakers = np.array([str(label.get("speaker", "")) for label in emb.labels])
  ctc = None
  if heard is not None:
    kind = config.features.ctc_targets
    references = [text_lib.target_text(r["text"], kind) for r in records]
    ctc = transcript_errors(heard, references, list(domains))

  def group(rows: np.ndarray, scores: dict | None) -> dict:
    sub = subset(emb, rows)
    out = {
      "clips": len(rows),
      "sentences": len(sub.texts),
      "speakers": len(set(speakers[rows])),
      "retrieval": evaluators.get("retrieval")(sub) if len(sub.texts) > 1 else None,
    }
    if scores is not None:
      out["ctc"] = {"error_rate": scores["error_rate"], "exact": scores["exact"]}
    return out

  trained = trained_speakers(config)
  out = {
    "split": split,
    "speakers": sorted(set(speakers)),
    "seen_in_training": None if trained is None else sorted(set(speakers) & set(trained)),
    "all": group(np.arange(len(records)), ctc),
    "domains": {
      d: group(np.flatnonzero(domains == d), ctc["per_group"][d] if ctc else None)
      for d in sorted(set(domains))
    },
  }
  if ctc is not None:
    out["ctc_targets"] = config.features.ctc_targets
  return out


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  step: int | None = None,
  fsdd_dir: str | None = None,
  evaluator_names: tuple[str, ...] | None = None,
  report_name: str = report.DEFAULT_NAME,
) -> dict:
  """Runs every evaluation of a run and writes RUN/{report_name}.json and .md and the plots.

  With several processes, each must call this: the checkpoint restore is a
  collective (orbax's barriers), while everything after it runs on the
  process's own devices (`api.Model` uses the local mesh), so every process
  computes the same results and only process 0 writes them.
  """
  model = api.load(workdir, step=step, config=config)
  config = model.config
  split = config.eval.split
  emb = embed_split(model, split)
  results = {"split": split, "utterances": len(emb.speech), "step": model.step}
  for name in evaluator_names or config.eval.evaluators:
    logging.info("running evaluator %s", name)
    results[name] = evaluators.get(name)(emb)
  datasets = config.eval.zero_shot
  results["zero_shot"] = {}
  if "synthetic" in datasets and config.data.source == "synthetic":
    logging.info("zero-shot: synthetic held-out intents")
    results["zero_shot"]["synthetic"] = zero_shot_synthetic(model)
  fsdd_dir = fsdd_dir or (config.data.fsdd_dir if "fsdd" in datasets else None)
  if fsdd_dir and fs.isdir(os.path.join(fsdd_dir, "recordings")):
    logging.info("zero-shot: FSDD digits in %s", fsdd_dir)
    results["zero_shot"]["fsdd"] = zero_shot_fsdd(model, fsdd_dir)
  elif fsdd_dir:
    # A section the config asked for is never dropped silently: the report says why it is absent.
    reason = f"no recordings/ folder under {fs.abspath(fsdd_dir)} (data.fsdd_dir or --fsdd_dir)"
    logging.warning("zero-shot FSDD skipped: %s", reason)
    results["skipped"] = {"zero_shot.fsdd": reason}
  real = data.real_split(split)
  built = config.data.real_sources and fs.exists(layout.summary_path(config.data_dir, real))
  if built and layout.read_summary(config.data_dir, real)["written"]:
    logging.info("real speech of unseen speakers: %s", real)
    results["real_speech"] = real_speech(model, real)
  elif config.data.real_sources:
    reason = (
      f"the {real} split in {config.data_dir} holds no clips (data.real_held_out)"
      if built
      else f"no {real} split in {config.data_dir}; build it with `{layout.PREPARE_COMMAND}`"
    )
    logging.warning("real speech skipped: %s", reason)
    results.setdefault("skipped", {})["real_speech"] = reason
  if jax.process_index() == 0:
    report.write(workdir, results, emb, report_name)
  return results


def _report_name(flag_value: str | None, other_set: list[str]) -> str:
  """--report_name, checked; required (not "report") when `other_set` lists flags."""
  name = flag_value or report.DEFAULT_NAME
  try:
    report.check_name(name)
  except ValueError as e:
    raise app.UsageError(f"--report_name: {e}") from e
  if name == report.DEFAULT_NAME and other_set:
    raise app.UsageError(
      f"this evaluates another set than the run's own ({'; '.join(other_set)}): pass "
      f"--report_name=NAME (writes NAME.json) so that {report.DEFAULT_NAME}.json, the run's own "
      "evaluation, is kept"
    )
  return name


def main(argv):
  cli.check_no_arguments(argv)
  f = flags.FLAGS
  own = restore.config_from_workdir(f.workdir)
  other_set = ["--config"] if f.config else []
  if f.fsdd_dir and os.path.realpath(f.fsdd_dir) != os.path.realpath(own.data.fsdd_dir):
    other_set.append(f"--fsdd_dir={f.fsdd_dir} (the run's is {own.data.fsdd_dir})")
  name = _report_name(f.report_name, other_set)
  config = config_lib.validate_config(f.config or own)
  results = evaluate(
    config, f.workdir, f.step, f.fsdd_dir, tuple(f.evaluators or ()) or None, report_name=name
  )
  print(report.headline(results))
  fsdd = results["zero_shot"].get("fsdd")
  if fsdd:
    print("\nFSDD zero-shot digit accuracy per speaker:")
    for speaker, g in fsdd["per_group"].items():
      tag = " (held out)" if speaker in fsdd["held_out_speakers"] else ""
      ctc = fsdd.get("ctc", {}).get("per_group", {}).get(speaker)
      heard = "" if ctc is None else f"; CTC error rate {ctc['error_rate']:.3f}"
      print(f"  {speaker:10s} {g['accuracy']:.3f}  ({g['utterances']} clips{heard}){tag}")
  print(f"\nreport: {os.path.join(f.workdir, name + '.md')}")


if __name__ == "__main__":
  # Defined here, not at import: stalign.main imports this module and owns --config/--workdir.
  flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/ and config.json.")
  config_flags.DEFINE_config_file(
    "config", None, "Config file; default: the run's own WORKDIR/config.json.", lock_config=True
  )
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate; default the latest.")
  flags.DEFINE_string(
    "fsdd_dir",
    None,
    "Folder in Free Spoken Digit layout (recordings/{digit}_{speaker}_{take}.wav) for "
    "zero-shot digit classification; default the config's data.fsdd_dir when it exists.",
  )
  flags.DEFINE_list(
    "evaluators",
    None,
    "Evaluators to run on eval.split (retrieval, geometry, probing); default the "
    "config's eval.evaluators.",
  )
  flags.DEFINE_string(
    "report_name",
    None,
    "Writes NAME.json, NAME.md and NAME_*.png instead of report.*; needed when --fsdd_dir or "
    "--config evaluate another set, so the run's own report.json is kept.",
  )
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
