"""Our speech encoder against what users would pick instead: transcribe, then embed the transcript.

On the held-out real speakers of the run's config (`data.real_held_out`, valid and
test: LibriSpeech read speech and AN4 spelled letters and digits, voices never
trained on), and on the first `DIGIT_TAKES` takes of each digit by its unseen FSDD
voices (`eval.fsdd_held_out_speakers`: isolated spoken digits), side by side on the
same clips:

  cascade   faster-whisper (Whisper base, the same weights stalign's Whisper front end
            uses, via `whisper_weights.ct2_model_dir`; CTranslate2 on the CPU,
            cpu_threads=2, greedy `beam_size=1`, `language="en"`, no VAD, every clip
            padded to Whisper's 30 s window as `transcribe` does) at int8 and at float32,
            then sentence-transformers all-MiniLM-L6-v2 (the teacher's own weights) on
            the joined transcripts; in a separate torch interpreter.
  ours      `stalign.load(STALIGN_RUN)` (default runs/demo): `embed_speech(paths)`.

For each: speech->text recall@1 and @10 (`evaluators.retrieval`) against the distinct
transcripts of the clips (normalised as `prepare` stores them), per domain and over all
(LibriSpeech and AN4); zero-shot accuracy on the digits (`evaluators.zero_shot`, the
config's prompts, in each side's own text space); and audio seconds per wall second
of turning audio files into embeddings (decoding, features or transcription, the
encoder(s)). Embedding the gallery of transcripts is
left out on both sides, as are loading the models and one untimed warm-up pass. The
candidates alternate in rounds (one round = one domain's clips; every other round in
reversed order, `_common.abba`), so they see the same machine load; the load other
processes put on the machine during the rounds is recorded. The cascade's word error
rate (text normalised as `stalign.data.text.normalize`, numerals left as Whisper writes
them) comes with it.

Enable the cascade with an interpreter that has torch, sentence-transformers and
faster-whisper (one torch interpreter serves this and teacher_throughput):

  python3 -m venv /tmp/cascadevenv
  /tmp/cascadevenv/bin/pip install torch==2.13.0 sentence-transformers faster-whisper
  STALIGN_TORCH_PYTHON=/tmp/cascadevenv/bin/python .venv/bin/python -m bench.run cascade
"""

import collections
import glob
import json
import os
import tempfile
import time
from typing import Any

import ml_collections
import numpy as np
import soundfile

from bench import _common
from bench.teacher_throughput import TORCH_PYTHON_ENV
from configs import demo
import stalign
from stalign import data
from stalign.data import sources
from stalign.data import text as text_lib
from stalign.evaluators import retrieval
from stalign.evaluators import zero_shot
from stalign.models import hf_loader
from stalign.models import whisper_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHISPER = "base"  # Packaged weights (`whisper_weights.PACKAGED`), the ones stalign uses.
COMPUTE_TYPES = ("int8", "float32")
CPU_THREADS = 2  # CTranslate2's and torch's threads.
SPLITS = ("valid", "test")
DOMAINS = ("librispeech", "an4")  # Sentences and utterances: retrieval; "all" is these.
DIGITS = "fsdd"  # Isolated spoken digits: zero-shot classification.
DIGIT_TAKES = 10  # Takes of each digit by each unseen FSDD voice (of 50): 100 clips a voice.
# The test speakers of configs/demo.py, for a config saved before `data.real_held_out`.
FALLBACK_HELD_OUT = (
  "librispeech/1737",
  "librispeech/2136",
  "an4/fclc",
  "an4/fejs",
  "an4/mbmg",
  "an4/mcel",
)
DEFAULT_LIBRISPEECH_DIR = data.real_data_dir("librispeech_mini")
DEFAULT_AN4_MANIFEST = os.path.join(data.real_data_dir("an4"), "manifest.jsonl")
ENABLE_CASCADE = (
  "python3 -m venv /tmp/cascadevenv && /tmp/cascadevenv/bin/pip install torch==2.13.0 "
  f"sentence-transformers faster-whisper, then set {TORCH_PYTHON_ENV}=/tmp/cascadevenv/bin/python"
)
TIMED = (
  "audio seconds per wall second of turning audio files into embeddings (ours: "
  "embed_speech; cascade: faster-whisper transcribe + sentence-transformers encode of the "
  "transcripts); embedding the gallery of transcripts is excluded for both, as are model "
  "loading and one untimed warm-up pass per domain"
)
_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_cascade_reference.py")


# --------------------------------------------------------------------- the clips


def _repo_path(path: str) -> str:
  return path if os.path.isabs(path) else os.path.normpath(os.path.join(REPO, path))


def held_out_speakers(
  config: ml_collections.ConfigDict, splits: tuple[str, ...]
) -> tuple[tuple[str, ...], str]:
  """("source/speaker", ...) of `splits` in `data.real_held_out`, and where they came from."""
  held = config.data.get("real_held_out")
  names = tuple(s for split in splits for s in (held.get(split, ()) if held else ()))
  if names:
    return names, f"config.data.real_held_out ({', '.join(splits)})"
  return FALLBACK_HELD_OUT, "fallback: configs/demo.py's test speakers (no data.real_held_out)"


def _librispeech_examples(root: str) -> list[dict]:
  if hasattr(sources, "librispeech_examples"):
    return list(sources.librispeech_examples(root))
  examples = []  # The same examples, for a tree without the source.
  for path in sorted(glob.glob(os.path.join(root, "*", "*", "*", "*.trans.txt"))):
    folder = os.path.dirname(path)
    speaker, chapter = folder.split(os.sep)[-2:]
    with open(path) as f:
      for line in f:
        if line.strip():
          utterance, _, text = line.strip().partition(" ")
          examples.append(
            {
              "id": f"librispeech/{utterance}",
              "audio_filepath": os.path.join(folder, f"{utterance}.flac"),
              "text": text,
              "labels": {"speaker": f"librispeech/{speaker}", "domain": "librispeech"},
            }
          )
  return examples


def _an4_examples(manifest: str) -> list[dict]:
  if hasattr(sources, "an4_examples"):
    return list(sources.an4_examples(manifest))
  examples = []  # The same examples, for a tree without the source.
  with open(manifest) as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        examples.append(
          {
            "id": "an4/" + os.path.splitext(os.path.basename(row["audio_filepath"]))[0],
            "audio_filepath": os.path.join(os.path.dirname(manifest), row["audio_filepath"]),
            "text": row["text"],
            "labels": {"speaker": f"an4/{row['speaker']}", "domain": "an4"},
          }
        )
  return examples


def held_out_clips(
  config: ml_collections.ConfigDict, speakers: tuple[str, ...], max_clips: int | None = None
) -> dict[str, list[dict]]:
  """Per domain: {id, path, text (normalised), speaker, seconds} of `speakers`' clips, by id.

  Read in place from the folders the config names (`data.librispeech_dir`,
  `data.an4_manifest`, `data.fsdd_dir`); `max_clips` keeps the first ones of each domain.
  The digits (`DIGITS`) are those of the config's unseen FSDD voices, when it classifies them.
  """
  listings = {
    "librispeech": lambda: _librispeech_examples(
      _repo_path(config.data.get("librispeech_dir", DEFAULT_LIBRISPEECH_DIR))
    ),
    "an4": lambda: _an4_examples(_repo_path(config.data.get("an4_manifest", DEFAULT_AN4_MANIFEST))),
  }
  out = {}
  for domain in DOMAINS:
    if not any(s.startswith(f"{domain}/") for s in speakers):
      continue
    examples = sorted(
      (ex for ex in listings[domain]() if ex["labels"]["speaker"] in speakers),
      key=lambda ex: ex["id"],
    )[:max_clips]
    out[domain] = [_clip(ex) for ex in examples]
  voices = tuple(config.eval.fsdd_held_out_speakers) if "fsdd" in config.eval.zero_shot else ()
  if voices:
    examples = sorted(
      (
        ex
        for ex in sources.fsdd_examples(_repo_path(config.data.fsdd_dir), voices)
        if int(ex["id"].rsplit("_", 1)[1]) < DIGIT_TAKES
      ),
      key=lambda ex: ex["id"],
    )[:max_clips]
    out[DIGITS] = [_clip(ex) for ex in examples]
  return out


def _clip(example: dict) -> dict:
  return {
    "id": example["id"],
    "path": example["audio_filepath"],
    "text": text_lib.normalize(example["text"]),
    "speaker": example["labels"]["speaker"],
    "seconds": soundfile.info(example["audio_filepath"]).duration,
  }


# ----------------------------------------------------------------------- figures


def word_errors(hypothesis: str, reference: str) -> tuple[int, int]:
  """(word edits, reference words) after `text.normalize`: the parts of a word error rate."""
  hyp, ref = text_lib.normalize(hypothesis).split(), text_lib.normalize(reference).split()
  row = list(range(len(hyp) + 1))
  for i, r in enumerate(ref, 1):
    prev, row[0] = row[0], i
    for j, h in enumerate(hyp, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
  return row[-1], len(ref)


def speech_to_text(
  queries: np.ndarray, clips: list[dict], gallery: dict[str, np.ndarray]
) -> dict[str, Any]:
  """Recall@k etc. of each clip's embedding against the distinct transcripts of `clips`."""
  texts = sorted({c["text"] for c in clips})
  index = {t: i for i, t in enumerate(texts)}
  ids = np.array([index[c["text"]] for c in clips])
  gallery_emb = np.stack([gallery[t] for t in texts])
  out = retrieval.summarize(retrieval.ranks(queries, ids, gallery_emb, np.arange(len(texts))))
  out["gallery"] = len(texts)
  return out


def _retrieval_domains(clips: dict[str, list]) -> list[str]:
  """The domains of `clips` measured by retrieval, which "all" figures pool (not `DIGITS`)."""
  return [d for d in DOMAINS if d in clips]


def _per_domain(fn, clips: dict[str, list[dict]], emb: dict[str, np.ndarray]) -> dict[str, Any]:
  """`fn(queries, clips)` for each retrieval domain and for all of them together."""
  domains = _retrieval_domains(clips)
  out = {d: fn(emb[d], clips[d]) for d in domains}
  if len(domains) > 1:
    out["all"] = fn(
      np.concatenate([emb[d] for d in domains]), [c for d in domains for c in clips[d]]
    )
  return out


def zero_shot_digits(
  queries: np.ndarray, clips: list[dict], embed_text, templates: tuple[str, ...]
) -> dict[str, Any]:
  """Accuracy of each clip's embedding against the ten digit words' prompts (`zero_shot`)."""
  classes = zero_shot.class_embeddings(embed_text, list(sources.DIGIT_WORDS), templates)
  truth = np.array([sources.DIGIT_WORDS.index(c["text"]) for c in clips])
  predicted = np.asarray(zero_shot.predict(queries, classes))
  voices = sorted({c["speaker"] for c in clips})
  speaker = np.array([c["speaker"] for c in clips])
  return {
    "accuracy": float(np.mean(predicted == truth)),
    "clips": len(clips),
    "per_voice": {
      v: float(np.mean(predicted[speaker == v] == truth[speaker == v])) for v in voices
    },
  }


def _throughput(clips: dict[str, list[dict]], seconds: dict[str, list[float]]) -> dict[str, Any]:
  audio = {d: sum(c["seconds"] for c in clips[d]) for d in clips}
  wall = {d: _common.median(seconds[d]) for d in clips}
  out = {d: audio[d] / wall[d] for d in clips}
  domains = _retrieval_domains(clips)
  out["all"] = sum(audio[d] for d in domains) / sum(wall[d] for d in domains)
  return out


# -------------------------------------------------------------------- machine load


def _busy_cpu_seconds() -> float:
  """CPU-seconds every core of the machine has spent busy since boot (/proc/stat)."""
  with open("/proc/stat") as f:
    fields = [int(x) for x in f.readline().split()[1:]]
  idle = fields[3] + fields[4]  # idle, iowait
  return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds(pid: int) -> float:
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, float]:
  """CPU-seconds of every process now running (those that end meanwhile are skipped)."""
  out = {}
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        out[int(name)] = _process_cpu_seconds(int(name))
      except (OSError, IndexError, ValueError):
        pass
  return out


def _command(pid: int, width: int = 100) -> str:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:width]
  except OSError:
    return "(ended)"


class _Load:
  """What other processes put on the machine while the rounds ran, in busy cores."""

  def __init__(self, pids: list[int]):
    self.pids = pids
    self.loadavg_before = os.getloadavg()
    self.start = (time.perf_counter(), _busy_cpu_seconds(), _processes())

  def result(self) -> dict[str, Any]:
    wall = time.perf_counter() - self.start[0]
    machine = _busy_cpu_seconds() - self.start[1]
    before, after = self.start[2], _processes()
    used = {p: s - before.get(p, 0.0) for p, s in after.items()}  # New ones: all of theirs.
    ours = sum(used.get(p, 0.0) for p in self.pids)
    others = sorted(
      ((s, p) for p, s in used.items() if p not in self.pids and s / wall >= 0.05), reverse=True
    )
    return {
      "cores": len(os.sched_getaffinity(0)),
      "loadavg_before": [round(x, 2) for x in self.loadavg_before],
      "loadavg_after": [round(x, 2) for x in os.getloadavg()],
      "rounds_wall_s": round(wall, 1),
      "benchmark_cores_busy": round(ours / wall, 2),
      "other_processes_cores_busy": round(max(machine - ours, 0.0) / wall, 2),
      "busiest_other_processes": [
        {"cores_busy": round(s / wall, 2), "command": _command(p)} for s, p in others[:5]
      ],
    }


# ------------------------------------------------------------------ the two sides


class _Cascade:
  """The transcribe-then-embed server (`_cascade_reference.py`) in the torch interpreter."""

  def __init__(self, python: str, compute_types: tuple[str, ...], tmp: str):
    self.tmp = tmp
    args = [
      whisper_weights.ct2_model_dir(WHISPER),
      hf_loader.default_teacher_path(),
      str(CPU_THREADS),
      ",".join(compute_types),
    ]
    self._server = _common.TorchServer(python, _SERVER, args, CPU_THREADS, "the cascade server")
    self.pid = self._server.pid
    self.versions = json.loads(self._server.read())

  def _ask(self, request: dict) -> tuple[dict, np.ndarray]:
    request["out"] = os.path.join(self.tmp, "cascade.npy")
    reply = json.loads(self._server.ask(json.dumps(request)))
    return reply, np.load(request["out"])

  def embed(self, texts: list[str]) -> np.ndarray:
    return self._ask({"op": "embed", "texts": texts})[1]

  def __call__(self, compute_type: str, paths: list[str]) -> tuple[float, np.ndarray, dict]:
    reply, emb = self._ask({"op": "cascade", "compute_type": compute_type, "paths": paths})
    return reply["transcribe_s"] + reply["embed_s"], emb, reply

  def close(self) -> None:
    self._server.close()


def _ours(model):
  def call(paths: list[str]) -> tuple[float, np.ndarray, dict]:
    start = time.perf_counter()
    emb = model.encode_speech(paths)  # numpy: the work is done when it returns.
    return time.perf_counter() - start, emb, {}

  return call


def _rows(
  candidates: dict[str, Any], clips: dict[str, list[dict]], repeats: int, pids: list[int]
) -> tuple[dict, dict]:
  """Each candidate on each domain's paths: one untimed warm-up, then `repeats` ABBA rounds."""
  paths = {d: [c["path"] for c in clips[d]] for d in clips}
  seconds = {name: collections.defaultdict(list) for name in candidates}
  emb = {name: {} for name in candidates}
  replies = {name: {} for name in candidates}
  warmup = {}
  for name, fn in candidates.items():
    # Ours compiles its batches' shapes on every path; the cascade needs one clip to settle.
    start = time.perf_counter()
    for d in clips:
      fn(paths[d] if name == "ours" else paths[d][:1])
    warmup[name] = time.perf_counter() - start
  rounds = [d for _ in range(repeats) for d in clips]
  names = list(candidates)
  load = _Load(pids)
  for i, name in enumerate(_common.abba(names, len(rounds))):
    d = rounds[i // len(names)]
    s, emb[name][d], replies[name][d] = candidates[name](paths[d])
    seconds[name][d].append(s)
  out = {
    name: {
      "warmup_s": warmup[name],
      "seconds": dict(seconds[name]),
      "audio_seconds_per_s": _throughput(clips, seconds[name]),
    }
    for name in names
  }
  for name in names:
    if name != "ours":
      out[name]["transcripts"] = {d: replies[name][d]["transcripts"] for d in clips}
      out[name]["transcribe_s"] = {d: replies[name][d]["transcribe_s"] for d in clips}
      out[name]["embed_transcripts_s"] = {d: replies[name][d]["embed_s"] for d in clips}
  return out, {"embeddings": emb, "load": load.result()}


def _wer(clips: dict[str, list[dict]], transcripts: dict[str, list[str]]) -> dict[str, Any]:
  counts = {
    d: np.sum([word_errors(h, c["text"]) for h, c in zip(transcripts[d], clips[d])], axis=0)
    for d in clips
  }
  out = {d: float(e / n) for d, (e, n) in counts.items()}
  edits, words = np.sum([counts[d] for d in _retrieval_domains(counts)], axis=0)
  out["all"] = float(edits / words)
  return out


# --------------------------------------------------------------------------- run


def run(
  run_dir: str | None = None,
  max_clips: int | None = None,
  splits: tuple[str, ...] = SPLITS,
  compute_types: tuple[str, ...] = COMPUTE_TYPES,
  repeats: int = 1,
) -> dict[str, Any]:
  """Speech->text R@1/R@10 and audio s/s of the cascade (per compute type) and of our model,
  per domain and overall, on the same held-out clips; and our figures over the cascade's."""
  run_dir = run_dir or os.environ.get("STALIGN_RUN", os.path.join(REPO, "runs", "demo"))
  python = os.environ.get(TORCH_PYTHON_ENV)
  has_run = os.path.exists(os.path.join(run_dir, "config.json"))
  skipped = {}
  if not has_run:
    skipped["ours"] = f"no trained run in {run_dir}; run `make demo` or set STALIGN_RUN"
  if not python:
    skipped["cascade"] = f"{TORCH_PYTHON_ENV} is not set; to enable it: {ENABLE_CASCADE}"
  if len(skipped) == 2:
    return {"skipped": "; ".join(skipped.values())}
  model = stalign.load(run_dir) if has_run else None
  config = model.config if model else demo.get_config()
  speakers, speakers_from = held_out_speakers(config, splits)
  clips = held_out_clips(config, speakers, max_clips)
  texts = sorted({c["text"] for d in clips for c in clips[d]})
  templates = tuple(config.eval.zero_shot_templates)
  prompts = [t.format(w) for w in sources.DIGIT_WORDS for t in templates] if DIGITS in clips else []
  out = {
    "run": run_dir if has_run else None,
    "step": model.step if model else None,
    "speakers": list(speakers),
    "speakers_from": speakers_from,
    "clips": {d: len(clips[d]) for d in clips},
    "audio_seconds": {d: sum(c["seconds"] for c in clips[d]) for d in clips},
    "gallery": {
      "all": len({c["text"] for d in _retrieval_domains(clips) for c in clips[d]}),
      **{d: len({c["text"] for c in clips[d]}) for d in clips},
    },
    "digit_prompts": list(templates) if prompts else None,
    "timed": TIMED,
    "threads": {
      "cascade": f"CTranslate2 cpu_threads={CPU_THREADS}, torch {CPU_THREADS}",
      "ours": "XLA's CPU client, one thread per core",
    },
    "whisper": {
      "weights": f"packaged Whisper {WHISPER} (whisper_weights.ct2_model_dir)",
      "transcribe": "beam_size=1, language='en', no VAD, defaults otherwise",
    },
    "repeats": repeats,
    "rows": {name: {"skipped": why} for name, why in skipped.items()},
    "ratios": [],
  }
  candidates, galleries, pids = {}, {}, [os.getpid()]
  with tempfile.TemporaryDirectory() as tmp:
    cascade = _Cascade(python, compute_types, tmp) if python else None
    try:
      if model:
        candidates["ours"] = _ours(model)
        galleries["ours"] = dict(zip(texts + prompts, model.encode_text(texts + prompts)))
        galleries["ours_teacher_space"] = dict(zip(texts, model.encode_text(texts, "teacher")))
      if cascade:
        out["cascade_versions"] = cascade.versions
        pids.append(cascade.pid)
        st_gallery = dict(zip(texts + prompts, cascade.embed(texts + prompts)))
        for ct in compute_types:
          candidates[f"cascade_{ct}"] = lambda paths, ct=ct: cascade(ct, paths)
          galleries[f"cascade_{ct}"] = st_gallery
      rows, measured = _rows(candidates, clips, repeats, pids)
    finally:
      if cascade:
        cascade.close()
  out["load"] = measured["load"]
  for name, row in rows.items():
    emb = measured["embeddings"][name]
    row["speech_to_text"] = _per_domain(
      lambda q, c, g=galleries[name]: speech_to_text(q, c, g), clips, emb
    )
    if DIGITS in clips:
      row["zero_shot_digits"] = zero_shot_digits(
        emb[DIGITS],
        clips[DIGITS],
        lambda t, g=galleries[name]: np.stack([g[x] for x in t]),
        templates,
      )
    if name == "ours":
      teacher_emb = {d: model.to_teacher_space(e) for d, e in emb.items()}
      row["speech_to_text_teacher_space"] = _per_domain(
        lambda q, c: speech_to_text(q, c, galleries["ours_teacher_space"]), clips, teacher_emb
      )
    else:
      row["word_error_rate"] = _wer(clips, row["transcripts"])
      row["transcripts"] = {
        d: [{"id": c["id"], "reference": c["text"], "whisper": h} for c, h in zip(clips[d], ts)]
        for d, ts in row["transcripts"].items()
      }
    out["rows"][name] = row
  out["ratios"] = _ratios(out["rows"], compute_types)
  return out


def _overall(row: dict, key: str) -> float:
  figures = row[key]
  return figures["all"] if "all" in figures else next(iter(figures.values()))


def _ratios(rows: dict, compute_types: tuple[str, ...]) -> list[dict]:
  if "skipped" in rows["ours"]:
    return []
  ours = rows["ours"]
  r1 = _overall(ours, "speech_to_text")["recall_at_1"]
  out = []
  for ct in compute_types:
    name = f"cascade_{ct}"
    if "skipped" in rows.get(name, {"skipped": True}):
      continue
    theirs = rows[name]
    theirs_r1 = _overall(theirs, "speech_to_text")["recall_at_1"]
    if theirs_r1 > 0 and r1 > 0:
      out.append(
        _common.ratio(
          f"speech->text R@1 / Whisper {WHISPER} {ct} + MiniLM",
          r1 / theirs_r1,
          ("ours R@1", r1),
          (f"cascade {ct} R@1", theirs_r1),
          f"the cascade's word error rate {_overall(theirs, 'word_error_rate'):.3f} "
          "(its numerals and spellings count as errors); ours has no words to get wrong, "
          "only the distillation's miss",
        )
      )
  name = f"cascade_{compute_types[0]}"
  if "zero_shot_digits" in ours and "skipped" not in rows.get(name, {"skipped": True}):
    mine, theirs = ours["zero_shot_digits"], rows[name]["zero_shot_digits"]
    out.append(
      _common.ratio(
        f"zero-shot digits, unseen FSDD voices / Whisper {WHISPER} {compute_types[0]} + MiniLM",
        mine["accuracy"] / max(theirs["accuracy"], 1e-9),
        ("ours accuracy", mine["accuracy"]),
        (f"cascade {compute_types[0]} accuracy", theirs["accuracy"]),
        "a short word alone in Whisper's 30 s window is often written as nothing or as a "
        "greeting; ours learned other voices' isolated digits (FSDD's three)",
      )
    )
  if "skipped" not in rows.get(name, {"skipped": True}):
    mine = _overall(ours, "audio_seconds_per_s")
    theirs = _overall(rows[name], "audio_seconds_per_s")
    out.append(
      _common.ratio(
        f"audio s/s / Whisper {WHISPER} {compute_types[0]} + MiniLM",
        mine / theirs,
        ("ours audio s/s", mine),
        (f"cascade {compute_types[0]} audio s/s", theirs),
        "Whisper pads every clip to 30 s and decodes token by token; ours runs one encoder "
        "pass over the clip's own length (batched)",
      )
    )
  return out
