"""Tests of the synthetic corpus: grammar, labels, determinism, resuming."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import ml_collections
import numpy as np
import pytest
import soundfile as sf

from configs import demo
from stalign import data
from stalign.data import corpus
from stalign.data import grammar
from stalign.data import sources

SPLITS = data.SPLITS + (data.ZERO_SHOT_SPLIT,)


def _config(seed: int = 0, **sizes) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(
    dict(
      seed=seed,
      num_train=30,
      num_valid=5,
      num_test=5,
      num_zero_shot=5,
      workers=2,
      rate=(150, 230),
      pitch=(30, 70),
      chunk_size=8,
      voices=demo.get_config().corpus.voices,
      augment=dict(speed=(0.9, 1.1), noise_snr_db=(15.0, 40.0), noise_prob=0.5),
    )
  )
  c.update(sizes)
  return c


def _manifest(out_dir: str, split: str) -> list[dict]:
  return list(sources.read_manifest(os.path.join(out_dir, f"{split}.jsonl")))


def _files(out_dir: str) -> dict[str, bytes]:
  """Every manifest and wav, by path relative to `out_dir`."""
  out = {}
  for root, _, names in os.walk(out_dir):
    for name in names:
      if name.endswith((".wav", ".jsonl")):
        path = os.path.join(root, name)
        with open(path, "rb") as f:
          out[os.path.relpath(path, out_dir)] = f.read()
  return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp("corpus"))
  return out_dir, corpus.build_corpus(_config(), out_dir)


@pytest.fixture(scope="module")
def plan():
  """A larger plan (text and labels only, no audio) for grammar statistics."""
  return corpus.plan_corpus(_config(num_train=3000, num_valid=300, num_test=300, num_zero_shot=300))


def test_same_seed_same_bytes_other_seed_differs(built, tmp_path):
  out_dir, _ = built
  corpus.build_corpus(_config(workers=1, chunk_size=8), str(tmp_path / "same"))
  assert _files(str(tmp_path / "same")) == _files(out_dir)
  other = corpus.plan_corpus(_config(seed=1))
  assert [u.text for u in other["train"]] != [m["text"] for m in _manifest(out_dir, "train")]


def test_resumes_an_interrupted_build(built, tmp_path):
  out_dir, _ = built
  resumed = str(tmp_path / "resumed")
  shutil.copytree(out_dir, resumed)
  # An interrupted build: no summary or manifests yet, and wavs missing both
  # from a chunk's middle and from whole chunks.
  for name in ["summary.json"] + [f"{s}.jsonl" for s in SPLITS]:
    os.remove(os.path.join(resumed, name))
  for index in (3, 16, 17, 29):
    os.remove(os.path.join(resumed, "audio", "train", f"train-{index:06d}.wav"))
  summary = corpus.build_corpus(_config(), resumed)
  assert summary["rendered_utterances"] == 8 + 8 + 6  # Chunks 0, 2 and 3.
  assert _files(resumed) == _files(out_dir)


def test_rendering_never_forks_a_process_that_runs_jax(tmp_path, monkeypatch):
  """The render pool lives in a child interpreter: JAX's fork warning (deadlock risk) is not hit."""
  import jax  # pylint: disable=g-import-not-at-top

  jax.numpy.ones(2).block_until_ready()  # This process's JAX runtime and its threads are up.
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    corpus.build_corpus(
      _config(num_train=8, num_valid=1, num_test=1, num_zero_shot=1), str(tmp_path / "a")
    )
  assert not [w for w in caught if "fork" in str(w.message)]
  # A child that fails names the folder and says that a rerun resumes.
  monkeypatch.setattr(corpus.sys, "executable", shutil.which("false"))
  with pytest.raises(RuntimeError, match=r"into .*b failed \(exit 1.*rerun the same command"):
    corpus.build_corpus(
      _config(num_train=8, num_valid=1, num_test=1, num_zero_shot=1), str(tmp_path / "b")
    )


def test_complete_build_is_reused_and_other_configs_refused(built):
  out_dir, summary = built
  assert corpus.build_corpus(_config(workers=1), out_dir) == summary
  with pytest.raises(ValueError, match="another config"):
    corpus.build_corpus(_config(seed=1), out_dir)


def test_summary_counts(built):
  out_dir, summary = built
  assert summary["counts"] == {"train": 30, "valid": 5, "test": 5, "zero_shot": 5}
  seconds = sum(
    sf.info(m["audio_filepath"]).frames / 16_000 for s in SPLITS for m in _manifest(out_dir, s)
  )
  assert summary["hours"]["total"] == pytest.approx(seconds / 3600)
  assert summary["distinct_sentences"] == 45
  assert summary["real_time_factor"] > 1
  with open(os.path.join(out_dir, "summary.json")) as f:
    assert json.load(f) == summary


def test_wavs_are_16k_mono_and_match_manifest(built):
  out_dir, _ = built
  for split in SPLITS:
    for entry in _manifest(out_dir, split):
      info = sf.info(entry["audio_filepath"])
      assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
      assert 0.5 < info.frames / 16_000 < 8


def test_speed_changes_duration(tmp_path):
  """The speed label must be applied: same text and voice, faster = shorter."""
  base = corpus.plan_corpus(_config(num_train=1))["train"][0]
  durations = []
  for speed in (0.9, 1.1):
    labels = dict(base.labels, speed=speed, noise_snr_db=None)
    durations.append(len(corpus._render(corpus.Utterance("train", 0, base.text, labels), seed=0)))
  assert durations[0] / durations[1] == pytest.approx(1.1 / 0.9, rel=0.01)


def test_splits_are_disjoint_and_zero_shot_is_held_out(plan):
  texts = {s: {u.text for u in plan[s]} for s in SPLITS}
  for i, a in enumerate(SPLITS):
    assert len(texts[a]) == len(plan[a])
    for b in SPLITS[i + 1 :]:
      assert not texts[a] & texts[b]
  seen = {u.labels["intent"] for s in ("train", "valid", "test") for u in plan[s]}
  zero_shot = {u.labels["intent"] for u in plan["zero_shot"]}
  assert zero_shot == set(grammar.HELD_OUT_INTENTS)
  assert not zero_shot & seen
  assert len(zero_shot) >= 6
  assert {u.labels["domain"] for u in plan["zero_shot"]} == {"command"}


def test_zero_shot_uses_only_words_heard_in_train(plan):
  train_words = {w for u in plan["train"] for w in u.text.split()}
  for split in ("valid", "test", "zero_shot"):
    words = {w for u in plan[split] for w in u.text.split()}
    assert words <= train_words, (split, words - train_words)


def test_lexicon_is_small_and_frequent(plan):
  counts = {}
  for u in plan["train"]:
    for w in u.text.split():
      counts[w] = counts.get(w, 0) + 1
  assert 200 <= len(counts) <= 400
  # 3,000 sentences here; the demo's 10,000 give more than three times this.
  assert np.median(list(counts.values())) >= 40


def _first_index(words, vocabulary):
  return next(i for i, w in enumerate(words) if w in vocabulary)


def test_statement_labels_match_text(plan):
  verbs = {
    form: i for forms in grammar.VERBS for i, form in enumerate(forms)
  }  # 0 base, 1 third, 2 past.
  people = [p for t in grammar.TOPICS.values() for p in t.people]
  people += list(grammar.RELATIVES)
  number = {sg: "singular" for sg, _ in people}
  number.update({pl: "plural" for _, pl in people})
  number.update(grammar.PRONOUNS)
  statements = [u for u in plan["train"] if u.labels["domain"] == "statement"]
  assert len(statements) > 500
  for u in statements:
    words, labels = u.text.split(), u.labels
    topic = grammar.TOPICS[labels["topic"]]
    v = _first_index(words, verbs)
    future = words[v - 1] == "will"
    assert future == (labels["tense"] == "future"), u
    subject = words[v - 2] if future else words[v - 1]
    assert number[subject] == labels["subject_number"], u
    expected = {"past": 2, "future": 0, "present": int(labels["subject_number"] == "singular")}
    assert verbs[words[v]] == expected[labels["tense"]], u
    things = {form: n for pair in topic.things for form, n in zip(pair, ("singular", "plural"))}
    obj = _first_index(words[v + 1 :], things)
    assert things[words[v + 1 + obj]] == labels["object_number"], u
    if labels["location"] != "none":
      assert labels["location"] in words, u


def test_command_labels_match_text(plan):
  commands = [u for s in SPLITS for u in plan[s] if u.labels["domain"] == "command"]
  assert len(commands) > 1000
  for u in commands:
    labels = u.labels
    assert labels["intent"] == f"{labels['action']}_{labels['object']}"
    device = grammar._DEVICES[labels["object"]]
    assert any(n in u.text for n in device.nouns), u
    if labels["location"] != "none":
      assert labels["location"] in u.text, u
    cues = {
      "activate": {"on"},
      "deactivate": {"off", "don't"},
      "increase": {"up", device.up},
      "decrease": {"down", device.down},
      "open": {"open"},
      "close": {"close", "shut", "closed"},
      "lock": {"lock", "locked"},
      "unlock": {"unlock", "unlocked"},
      "set": {"set", "put", "change", "start", "need"},
      "cancel": {"cancel", "don't"},
    }[labels["action"]]
    assert cues & set(u.text.split()), u


def test_question_labels_match_text(plan):
  questions = [u for u in plan["train"] if u.labels["domain"] == "question"]
  assert len(questions) > 200
  auxiliaries = {
    "past": {"did", "was", "rained", "snowed", "left"},
    "present": {"is", "does", "leaves"},
    "future": {"will"},
  }
  for u in questions:
    words = set(u.text.split())
    tense = u.labels["tense"]
    assert words & auxiliaries[tense], u
    for other in set(auxiliaries) - {tense}:
      assert not words & auxiliaries[other], u
    assert u.labels["location"] in words


def test_every_utterance_has_all_labels(plan):
  keys = {
    "domain",
    "topic",
    "intent",
    "action",
    "object",
    "location",
    "tense",
    "subject_number",
    "object_number",
    "length_bucket",
    "voice",
    "rate",
    "rate_bucket",
    "pitch",
    "pitch_bucket",
    "noise_snr_db",
    "speed",
  }
  for u in plan["train"]:
    assert keys <= u.labels.keys()
    n = len(u.text.split())
    assert u.labels["length_bucket"] == (0 if n <= 4 else 1 if n <= 7 else 2 if n <= 10 else 3)
    assert 150 <= u.labels["rate"] <= 230
    assert 0.9 <= u.labels["speed"] <= 1.1
    assert (u.labels["noise_snr_db"] is None) == (u.labels["noise_type"] == "none")


def test_intent_descriptions_cover_every_intent():
  descriptions = grammar.intent_descriptions()
  assert set(descriptions) == set(grammar.all_intents())
  assert len(set(descriptions.values())) == len(descriptions)
  assert set(grammar.HELD_OUT_INTENTS) < set(descriptions)


def test_training_sentences_do_not_depend_on_other_splits():
  """The bench takes the first training sentences from the grammar alone."""
  alone = grammar.plan_sentences(0, {"train": 10})
  assert [text for text, _ in alone["train"]] == [
    u.text for u in corpus.plan_corpus(_config())["train"][:10]
  ]
  assert not alone["zero_shot"]


def test_grammar_loads_without_the_renderer():
  code = (
    "import sys; import stalign.data.grammar; "
    "print(sorted(m for m in ('soundfile', 'soxr', 'multiprocessing', "
    "'stalign.data.espeak', 'stalign.data.corpus') if m in sys.modules))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], check=True, capture_output=True, text=True
  ).stdout
  assert out.strip() == "[]"
