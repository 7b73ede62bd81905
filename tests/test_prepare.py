import contextlib
import glob
import json
import os
from unittest import mock

from flax import nnx
import jax
import numpy as np
import pytest
import soundfile as sf

import stalign
from stalign import fs
from stalign import prepare
from stalign import train
from stalign.data import layout
from stalign.data import sources
from stalign.data import text
from stalign.data import tfrecords

import testdata
from testdata import fsdd_files
from testdata import tiny_config
from testdata import write_an4
from testdata import write_librispeech
from testdata import write_manifest
from testdata import write_tone


def test_prepared_split_summary_and_round_trip(prepared_config):
  summary = layout.read_summary(prepared_config.data_dir, "train")
  assert summary["read"] == 60 and summary["written"] + sum(summary["skipped"].values()) == 60
  # Evaluation decides which voices are unseen by these.
  assert summary["speakers"] == {"george": 20, "jackson": 40}
  records = list(tfrecords.iterate_records(layout.list_shards(prepared_config.data_dir, "train")))
  assert len(records) == summary["written"]
  r = records[0]
  assert r["text"] in sources.DIGIT_WORDS
  assert r["features"].shape[1] == prepared_config.features.num_mels
  # The teacher's embedding of each distinct transcript, stored once, beside the shards.
  texts, embeddings = layout.read_teacher_table(prepared_config.data_dir)
  assert set(texts) >= {r["text"] for r in records} and embeddings.shape == (len(texts), 384)
  assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-4)  # MiniLM normalises.
  assert len(set(r["id"] for r in records)) == len(records)


def test_bad_inputs_are_skipped_counted_and_named(tmp_path):
  good = fsdd_files("jackson", range(0, 1))[:3]
  silent = str(tmp_path / "silent.wav")
  sf.write(silent, np.zeros(8000, np.float32), 16000)
  garbage = str(tmp_path / "garbage.wav")
  open(garbage, "wb").write(b"not audio" * 100)
  manifest = write_manifest(str(tmp_path / "m.jsonl"), good)
  with open(manifest, "a") as f:
    f.write(json.dumps({"audio_filepath": silent, "text": "one"}) + "\n")
    f.write(json.dumps({"audio_filepath": garbage, "text": "two"}) + "\n")
    f.write(json.dumps({"audio_filepath": good[0], "text": "room 101"}) + "\n")
    f.write("{'audio_filepath': 'single quotes are not JSON'}\n")  # Line 7.
    f.write(json.dumps({"audio_filepath": good[1]}) + "\n")  # Line 8: no text.
    f.write(json.dumps({"text": "three"}) + "\n")  # Line 9: no audio.
    f.write(json.dumps({"audio_filepath": "gone.wav", "text": "four"}) + "\n")
    f.write("[1, 2]\n")  # Line 11: JSON, but not an object: the same reason, counted twice.
  config = tiny_config(str(tmp_path / "data"))
  config.data.manifests["train"] = manifest
  summary = prepare.write_split(sources.get("manifest")(config, "train"), config, "train", 2)
  assert summary["read"] == 11 and summary["written"] == 3
  assert summary["speakers"] == {"jackson": 3}  # Written records with a speaker label.
  # Each reason is counted, under its own name, with the input that first had it.
  assert summary["skipped"].pop("ManifestError: not a JSON object") == 2
  assert sum(summary["skipped"].values()) == 6 and set(summary["skipped"].values()) == {1}
  assert summary["skipped_example"] == {
    "AudioError: audio is silent (peak below 0.0001)": silent,
    "AudioError: cannot decode audio": garbage,
    "TranscriptError: characters outside the CTC alphabet ['0', '1'] in 'room 101'": good[0],
    "ManifestError: not a JSON object": "m.jsonl:7",
    "ManifestError: no 'text' string": "m.jsonl:8",
    "ManifestError: no 'audio_filepath' string": "m.jsonl:9",
    "AudioError: no such audio file": str(tmp_path / "gone.wav"),
  }
  assert not glob.glob(os.path.join(config.data_dir, "tfrecords", "*.tmp"))
  # A manifest that is not there stops the split before anything is written, naming the fix.
  config.data.manifests["train"] = str(tmp_path / "typo.jsonl")
  with pytest.raises(FileNotFoundError, match=r"typo\.jsonl does not exist.*data\.manifests"):
    prepare.write_split(sources.get("manifest")(config, "train"), config, "train", 2)


def test_killed_write_leaves_no_finished_split(tmp_path):
  config = tiny_config(str(tmp_path / "data"))

  def dies():
    yield from sources.read_manifest(
      write_manifest(str(tmp_path / "m.jsonl"), fsdd_files("jackson", range(0, 1))[:2])
    )
    raise KeyboardInterrupt

  try:
    prepare.write_split(dies(), config, "train", 2)
  except KeyboardInterrupt:
    pass
  try:
    layout.list_shards(config.data_dir, "train")
    raise AssertionError("a killed split must not look finished")
  except FileNotFoundError as e:
    assert "stalign.main" in str(e)
  assert not glob.glob(os.path.join(config.data_dir, "tfrecords", "train-*.tfrecord"))


def test_phoneme_targets_are_stored_decoded_and_trained_through_a_phoneme_sized_ctc_head(
  tmp_path,
):
  """README's `features.ctc_targets=phonemes`, from the manifest to a trained CTC head."""
  config = tiny_config(str(tmp_path / "data"))
  config.features.ctc_targets = "phonemes"
  speakers = {"train": "jackson", "valid": "lucas", "test": "nicolas"}
  for split, speaker in speakers.items():
    config.data.manifests[split] = write_manifest(
      str(tmp_path / f"{split}.jsonl"), fsdd_files(speaker, range(0, 1))
    )
  summaries = prepare.prepare(config)
  assert {s["ctc_targets"] for s in summaries.values()} == {"phonemes"}
  records = list(tfrecords.iterate_records(layout.list_shards(config.data_dir, "train")))
  assert len(records) == 10
  phonemes = text.vocabulary("phonemes")
  for r in records:
    assert [phonemes[i - 1] for i in r["ctc_labels"]] == text.phonemize(r["text"]), r["text"]

  config.train.steps, config.train.warmup_steps, config.train.log_every = 3, 1, 1
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["steps"] == 3 and np.isfinite(summary["last"]["loss_ctc"])
  model = stalign.load(str(tmp_path / "run"), config=config)
  # The phoneme error rate of greedy decoding, recounted from the saved model's CTC head over the
  # valid records' stored phoneme labels: the training loop's figure must be that one.
  valid = list(tfrecords.iterate_records(layout.list_shards(config.data_dir, "valid")))
  _, _, log_probs = model._forward_batches([r["features"] for r in valid])
  ids = [np.argmax(lp, axis=-1) for lp in log_probs]
  errors = sum(
    text.edit_distance(text.collapse(i), list(r["ctc_labels"])) for i, r in zip(ids, valid)
  )
  cer = errors / sum(len(r["ctc_labels"]) for r in valid)
  assert summary["valid"]["valid_cer"] == pytest.approx(cer) and cer > 0
  student = nnx.merge(model.graphdef, model.params)
  vocab = len(text.PHONEMES) + 1  # + blank.
  assert vocab != text.vocab_size("chars")
  assert student.ctc_head.kernel.shape == (config.model.dim, config.model.ctc_upsample * vocab)


def test_speed_copies_of_real_clips_are_written_beside_the_clip(tmp_path):
  """`data.train_extra_speeds`: each train_extra clip, then a copy per factor; a data folder
  built with other factors is refused, not silently reused."""
  fsdd_dir = tmp_path / "fsdd"
  (fsdd_dir / "recordings").mkdir(parents=True)
  for path in fsdd_files("lucas", range(0, 1))[:2]:
    os.symlink(path, fsdd_dir / "recordings" / os.path.basename(path))
  config = tiny_config(str(tmp_path / "data"))
  for split in ("train", "valid", "test"):
    config.data.manifests[split] = write_manifest(
      str(tmp_path / f"{split}.jsonl"), fsdd_files("jackson", range(0, 1))[:1]
    )
  config.data.fsdd_dir = str(fsdd_dir)
  config.data.train_extra = ("fsdd",)
  config.data.train_extra_speeds = (0.9, 1.1)
  summary = prepare.write_splits(config)["train"]
  assert summary["written"] == 1 + 2 * 3 and summary["speakers"] == {"jackson": 1, "lucas": 6}
  shards = layout.list_shards(config.data_dir, "train")
  records = {r["id"]: r for r in tfrecords.iterate_records(shards)}
  clip = next(i for i in records if i.startswith("fsdd/lucas/") and "@" not in i)
  slow, fast = records[clip + "@speed0.9"], records[clip + "@speed1.1"]
  assert slow["text"] == fast["text"] == records[clip]["text"]
  # 0.9x speed is longer than the clip, 1.1x shorter, by about those factors.
  frames = [r["features"].shape[0] for r in (slow, records[clip], fast)]
  assert abs(frames[1] / frames[0] - 0.9) < 0.03 and abs(frames[2] / frames[1] - 1 / 1.1) < 0.03

  config.data.train_extra_speeds = ()
  built = r"built with data.train_extra_speeds=\(0.9, 1.1\).*new folder"
  with pytest.raises(ValueError, match=built):
    prepare.write_splits(config)
  # Recordings added to training (or taken out) need a new folder too: the written train split
  # would otherwise be reused without them.
  config.data.train_extra_speeds = (0.9, 1.1)
  config.data.train_extra = ("fsdd", "manifest")
  added = r"built with data.train_extra=\('fsdd',\) but the config asks for \('fsdd', 'manifest'\)"
  with pytest.raises(ValueError, match=added):
    prepare.write_splits(config)
  config.data.train_extra, config.data.source = ("fsdd",), "fsdd"
  with pytest.raises(ValueError, match=r"built with data.source='manifest' but.*'fsdd'"):
    prepare.write_splits(config)
  # README "Your own voice": a manifest of one's own clips joins FSDD's in a new folder.
  config.data_dir, config.data.train_extra = str(tmp_path / "own_voice"), ("manifest",)
  summary = prepare.write_splits(config)["train"]
  assert summary["speakers"] == {"jackson": 3, "lucas": 2}
  assert summary["train_extra"] == ["manifest"]


def test_every_stage_refuses_a_data_folder_built_with_other_features(prepared_config, tmp_path):
  """Stored log-mels of another width would fail deep inside the jitted step; the data stage and
  `--stages=train` alone both name the setting and the fix instead."""
  config = prepared_config.copy_and_resolve_references()
  config.features.num_mels = 40
  refused = r"was built with features.num_mels=80 but the config asks for 40.*new folder"
  with pytest.raises(ValueError, match=refused):
    prepare.write_splits(config)
  with pytest.raises(ValueError, match=refused):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  # Settings of the Whisper front end do not touch log-mel frames: a log-mel folder stays usable.
  config = prepared_config.copy_and_resolve_references()
  config.features.whisper_min_seconds, config.features.whisper_layers = 1.0, 2
  layout.check_built_with(config, "train", layout.read_summary(config.data_dir, "train"))
  # A folder of an older layout (teacher embeddings inside the records) is refused by name.
  older = r"data format 1, written by an older stalign.*delete .*tfrecords and rerun"
  with pytest.raises(ValueError, match=older):
    layout.check_built_with(prepared_config, "train", {"split": "train"})


def _real_speech_config(tmp_path):
  """Tiny config of FSDD manifests, with generated LibriSpeech and AN4 folders trained on and
  their held-out speakers evaluated (`data.real_sources`)."""
  config = tiny_config(str(tmp_path / "data"))
  for split in ("train", "valid", "test"):
    config.data.manifests[split] = write_manifest(
      str(tmp_path / f"{split}.jsonl"), fsdd_files("jackson", range(0, 1))[:2]
    )
  config.data.librispeech_dir = write_librispeech(
    str(tmp_path / "libri"),
    {"32-1": ["A B"], "163-2": ["C D"], "1088-3": ["E F", "G"], "1737-4": ["H I"]},
  )
  config.data.an4_manifest = write_an4(
    str(tmp_path / "an4"), {"fash": ["yes"], "mblb": ["no"], "mcel": ["stop", "go"]}
  )
  config.data.real_sources = config.data.train_extra = ("librispeech", "an4")
  config.data.real_held_out.valid = ("librispeech/163", "an4/mblb")
  config.data.real_held_out.test = ("librispeech/1088", "an4/mcel")
  return config


def test_narrowband_copies_of_real_clips_join_training_only(tmp_path):
  """`data.narrowband_copies`: each train clip of the named sources, then its 8 kHz-band copy
  (same text, same length); held-out speakers' clips get none; the setting names the folder."""
  config = _real_speech_config(tmp_path)
  config.data.narrowband_copies = ("an4",)
  summaries = prepare.write_splits(config)
  assert summaries["train"]["speakers"]["an4/fash"] == 2
  assert summaries["train"]["speakers"]["librispeech/32"] == 1
  assert summaries["real_test"]["speakers"] == {"an4/mcel": 2, "librispeech/1088": 2}
  records = {
    r["id"]: r for r in tfrecords.iterate_records(layout.list_shards(config.data_dir, "train"))
  }
  clip, copy = records["an4/an000-fash-b"], records["an4/an000-fash-b@8khz"]
  assert copy["text"] == clip["text"] and copy["features"].shape == clip["features"].shape
  config.data.narrowband_copies = ()
  with pytest.raises(ValueError, match=r"built with data.narrowband_copies=\('an4',\).*new folder"):
    prepare.write_splits(config)
  # A folder whose summary predates the setting was built without copies, and stays usable.
  summary = layout.read_summary(config.data_dir, "train")
  del summary["narrowband_copies"]
  layout.check_built_with(config, "train", summary)


def test_real_sources_train_on_some_speakers_and_evaluate_the_held_out_ones(tmp_path):
  """Held-out speakers of the real sources make real_test (and real_valid when eval.split is
  valid) and never the train split; a folder built with other held-out speakers is refused."""
  config = _real_speech_config(tmp_path)
  assert layout.splits(config) == ("train", "valid", "test", "real_test")
  summaries = prepare.write_splits(config)
  assert summaries["train"]["speakers"] == {
    "an4/fash": 1,
    "jackson": 2,
    "librispeech/1737": 1,
    "librispeech/32": 1,
  }
  assert summaries["real_test"]["speakers"] == {"an4/mcel": 2, "librispeech/1088": 2}
  assert summaries["test"]["speakers"] == {"jackson": 2}  # The main split is the source's own.
  records = tfrecords.iterate_records(layout.list_shards(config.data_dir, "real_test"))
  assert sorted(r["id"] for r in records) == [
    "an4/an200-mcel-b",
    "an4/an201-mcel-b",
    "librispeech/1088-3-0000",
    "librispeech/1088-3-0001",
  ]
  assert summaries["real_test"]["real_sources"] == ["librispeech", "an4"]
  # Evaluating on the valid split adds real_valid to the same folder; the rest is reused.
  config.eval.split = "valid"
  assert layout.splits(config) == ("train", "valid", "test", "real_valid")
  summaries = prepare.write_splits(config)
  assert summaries["real_valid"]["speakers"] == {"an4/mblb": 1, "librispeech/163": 1}

  # Other held-out speakers change the train split and the real ones: the folder is refused.
  config.eval.split = "test"
  config.data.real_held_out.test = ("librispeech/1088", "an4/fash")
  with pytest.raises(ValueError, match=r"built with data.real_held_out=\{'valid'.*new folder"):
    prepare.write_splits(config)
  # So are other real sources, or another folder of one.
  config.data.real_held_out.test = ("librispeech/1088", "an4/mcel")
  config.data.real_sources = ("librispeech",)
  with pytest.raises(ValueError, match=r"data.real_sources=\('librispeech', 'an4'\) but"):
    prepare.write_splits(config)
  config.data.real_sources = ("librispeech", "an4")
  manifest, config.data.an4_manifest = config.data.an4_manifest, str(tmp_path / "other.jsonl")
  with pytest.raises(ValueError, match=r"built with data.an4_manifest="):
    prepare.write_splits(config)
  # real_test holds the test speakers alone: other valid speakers change the train split, not it.
  config.data.an4_manifest, config.data.real_held_out.valid = manifest, ("librispeech/163",)
  layout.check_built_with(config, "real_test", layout.read_summary(config.data_dir, "real_test"))
  with pytest.raises(ValueError, match=r"data.real_held_out=\{'valid'"):
    layout.check_built_with(config, "train", layout.read_summary(config.data_dir, "train"))


def _tone_config(tmp_path, name: str, clips: int = 12):
  """Tiny config of generated tones (no real speech needed), 4 shards per split."""
  config = tiny_config(str(tmp_path / name))
  config.data.num_shards = 4
  for split in ("train", "valid", "test"):
    manifest = tmp_path / f"{split}.jsonl"  # Shared: a record's id names its manifest.
    with open(manifest, "w") as f:
      for i in range(clips):
        path = write_tone(str(tmp_path / "tones" / f"{split}{i}.wav"), i)
        f.write(json.dumps({"audio_filepath": path, "text": sources.DIGIT_WORDS[i % 10]}) + "\n")
    config.data.manifests[split] = str(manifest)
  return config


@contextlib.contextmanager
def _counting_commits():
  """Every file the data stage commits, in order: `fs.staged`, which shards and `fs.atomic_write`
  both go through, makes a file appear only when its block succeeds."""
  committed, staged = [], fs.staged

  @contextlib.contextmanager
  def counted(path):
    with staged(path) as local:
      yield local
    committed.append(os.path.relpath(path, os.path.dirname(os.path.dirname(path))))

  with mock.patch.object(fs, "staged", counted):
    yield committed


def _files(data_dir) -> dict[str, bytes]:
  root = os.path.join(data_dir, "tfrecords")
  return {name: open(os.path.join(root, name), "rb").read() for name in sorted(os.listdir(root))}


def test_a_killed_data_stage_resumes_shard_by_shard_writing_no_file_twice(tmp_path):
  """Killed inside its third shard, the stage keeps the two finished ones; the rerun writes only
  the rest, and in all no file is committed twice; the result is the uninterrupted build's."""
  whole = _tone_config(tmp_path, "whole")
  with _counting_commits() as committed:
    prepare.write_splits(whole)
  assert len(committed) == len(set(committed)), committed
  want = _files(whole.data_dir)
  assert not [name for name in want if ".tmp" in name]

  config = _tone_config(tmp_path, "killed")
  featurize, seen = prepare._featurize, []

  def dies_in_third_shard(examples, *args):
    for record in featurize(examples, *args):
      seen.append(record["id"])
      if len(seen) == 7:  # Shards of 3: the third is under way.
        raise KeyboardInterrupt
      yield record

  with (
    _counting_commits() as first,
    mock.patch.object(prepare, "_featurize", dies_in_third_shard),
    pytest.raises(KeyboardInterrupt),
  ):
    prepare.write_splits(config)
  assert sorted(os.path.basename(p) for p in first) == [
    f"train-0000{i}-of-00004.{ext}" for i in range(2) for ext in ("json", "tfrecord")
  ]
  with _counting_commits() as second:
    prepare.write_splits(config)
  assert not set(first) & set(second) and len(second) == len(set(second))
  assert sorted(first + second) == sorted(committed)
  got = _files(config.data_dir)
  assert sorted(got) == sorted(want)
  for name in want:  # Markers and summaries hold no paths or times: byte for byte.
    assert got[name] == want[name], name


def test_processes_write_disjoint_shards_that_make_the_one_process_build(tmp_path, monkeypatch):
  """Two processes (threads with patched process indices and barrier) each write their shards
  (i mod 2), process 0 then the index and summary: the files are the one-process build's.

  The real thing, two jax.distributed processes on a GCS emulator, is in tests/test_gcs.py."""
  one = _tone_config(tmp_path, "one")
  prepare.write_splits(one)
  two = _tone_config(tmp_path, "two")
  written, write_shard = {0: [], 1: []}, tfrecords.write_shard
  monkeypatch.setattr(
    tfrecords,
    "write_shard",
    lambda path, records: (
      written[jax.process_index()].append(os.path.basename(path)) or write_shard(path, records)
    ),
  )
  testdata.as_processes(monkeypatch, lambda index: prepare.write_splits(two))
  for index in (0, 1):
    assert {int(name.split("-")[1]) % 2 for name in written[index]} == {index}
  assert len(written[0]) == len(written[1]) == 3 * 4 / 2
  want, got = _files(one.data_dir), _files(two.data_dir)
  assert sorted(got) == sorted(want)
  for name in want:
    assert got[name] == want[name], name
