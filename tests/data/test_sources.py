import contextlib
import json
import logging
import os
import shutil
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from stalign import data
from stalign import prepare
from stalign.data import layout
from stalign.data import sources
from stalign.data import tfrecords

from testdata import tiny_config
from testdata import write_an4
from testdata import write_librispeech


def _tone(seconds: float, rate: int, dtype=np.int16) -> np.ndarray:
  t = np.arange(int(seconds * rate)) / rate
  return (np.sin(2 * np.pi * 220 * t) * 8000).astype(dtype)


@contextlib.contextmanager
def _fake_tfds(examples: list[dict]):
  """Every `tfds` dataset holds `examples`; mock_data's builders look unprepared: say otherwise."""

  def as_dataset(self, split, **kwargs):
    del split, kwargs
    return tf.data.Dataset.from_generator(
      lambda: iter(examples), output_signature=self.info.features.get_tensor_spec()
    )

  with (
    tfds.testing.mock_data(as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_CODE),
    mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
  ):
    yield


def _config(tmp_path, name: str, **data):
  config = tiny_config(str(tmp_path / "data"))
  config.data.source = "tfds"
  config.data.tfds_name = name
  config.data.tfds_dir = str(tmp_path / "tfds")
  for key, value in data.items():
    config.data[key] = value
  return config


def test_librispeech_fields_and_int16_audio_become_float(tmp_path):
  speech = _tone(1.0, 16000)
  examples = [
    {
      "speech": speech,
      "text": "HE'S GONE",
      "speaker_id": 19,
      "chapter_id": 198,
      "id": "19-198-0001",
    }
  ]
  with _fake_tfds(examples):
    [ex] = sources.get("tfds")(_config(tmp_path, "librispeech"), "valid")
  assert ex["id"] == "librispeech/dev_clean/19-198-0001"
  assert ex["text"] == "HE'S GONE" and ex["sample_rate"] == 16000
  assert ex["labels"] == {"speaker": "19", "chapter": "198", "domain": "librispeech"}
  assert ex["waveform"].dtype == np.float32
  np.testing.assert_allclose(ex["waveform"], speech / 32768.0)


def test_spoken_digit_label_becomes_the_digit_word_and_speaker(tmp_path):
  examples = [
    {"audio": _tone(0.5, 8000, np.int64), "label": d, "audio/filename": f"{d}_theo_{d}.wav"}
    for d in (3, 7)
  ]
  with _fake_tfds(examples):
    got = list(sources.get("tfds")(_config(tmp_path, "spoken_digit"), "train"))
  assert [ex["text"] for ex in got] == ["three", "seven"]
  assert got[0]["labels"] == {"digit": 3, "speaker": "theo", "domain": "digits"}
  assert got[0]["id"] == "spoken_digit/train[:80%]/3_theo_3.wav" and got[0]["sample_rate"] == 8000


def test_speech_commands_words_and_left_out_silence_and_unknown(tmp_path, caplog):
  names = tfds.builder("speech_commands").info.features["label"].names
  labels = [names.index(w) for w in ("yes", "_silence_", "stop", "_unknown_", "_unknown_")]
  examples = [{"audio": _tone(1.0, 16000), "label": i} for i in labels]
  caplog.set_level(logging.INFO)
  with _fake_tfds(examples):
    got = list(sources.get("tfds")(_config(tmp_path, "speech_commands"), "test"))
  assert [ex["text"] for ex in got] == ["yes", "stop"]
  assert got[1]["labels"] == {"command": "stop", "domain": "commands"}
  assert "{'_silence_': 1, '_unknown_': 2}" in caplog.text


def test_split_mapping_from_the_config_overrides_the_default(tmp_path):
  seen = []

  def as_dataset(self, split, **kwargs):
    del self, kwargs
    seen.append(str(split))
    return tf.data.Dataset.from_tensors({"audio": _tone(1.0, 16000), "label": np.int64(0)})

  config = _config(tmp_path, "speech_commands", tfds_splits={"train": "train[:10%]"})
  with (
    tfds.testing.mock_data(as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_CODE),
    mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
  ):
    list(sources.get("tfds")(config, "train"))
    list(sources.get("tfds")(config, "valid"))
  assert seen == ["train[:10%]", "validation"]
  with pytest.raises(ValueError, match="tfds_splits.zero_shot"):
    next(sources.get("tfds")(config, "zero_shot"))


def test_missing_dataset_says_how_to_build_it_and_downloads_nothing(tmp_path):
  config = _config(tmp_path, "spoken_digit")
  with pytest.raises(FileNotFoundError, match=r"tfds build spoken_digit --data_dir=.*tfds"):
    next(sources.get("tfds")(config, "train"))
  assert not (tmp_path / "tfds").exists()


def test_unknown_dataset_names_the_supported_ones(tmp_path):
  with pytest.raises(ValueError, match="speech_commands"):
    next(sources.get("tfds")(_config(tmp_path, "mnist"), "train"))


def test_tfds_examples_are_written_resampled_with_bad_ones_counted(tmp_path):
  """The writer's `waveform` path: 8 kHz int audio in, 16 kHz log-mel out, bad clips skipped."""
  examples = [
    {"audio": _tone(0.5, 8000, np.int64), "label": 4, "audio/filename": "4_theo_0.wav"},
    {"audio": np.zeros(4000, np.int64), "label": 5, "audio/filename": "5_theo_0.wav"},
  ]
  config = _config(tmp_path, "spoken_digit")
  with _fake_tfds(examples):
    summary = prepare.write_split(sources.get("tfds")(config, "train"), config, "train", 1)
  assert summary["written"] == 1
  assert summary["skipped_example"] == {
    "AudioError: audio is silent (peak below 0.0001)": "spoken_digit/train[:80%]/5_theo_0.wav"
  }
  [record] = tfrecords.iterate_records(layout.list_shards(config.data_dir, "train"))
  assert record["text"] == "four" and record["labels"]["speaker"] == "theo"
  assert record["duration"] == pytest.approx(0.5, abs=1e-3)


def test_demo_trains_on_three_fsdd_voices_and_never_on_nicolas():
  """The README's promise: the demo mixes george, jackson and lucas into training; nicolas stays
  unseen, so his digits measure a new voice."""
  from configs import demo

  from testdata import real_speech_dir

  c = demo.get_config()
  c.data.fsdd_dir = real_speech_dir("fsdd")
  assert c.data.train_extra == ("fsdd",) and "nicolas" in c.eval.fsdd_held_out_speakers
  speakers = [ex["labels"]["speaker"] for ex in sources.get("fsdd")(c, "train")]
  assert set(speakers) == {"george", "jackson", "lucas"} and len(speakers) == 1500


def _real_config(tmp_path, librispeech_dir="", an4_manifest="", valid=(), test=()):
  config = tiny_config(str(tmp_path / "data"))
  config.data.librispeech_dir, config.data.an4_manifest = librispeech_dir, an4_manifest
  config.data.real_held_out.valid, config.data.real_held_out.test = valid, test
  return config


def test_librispeech_source_reads_every_subset_below_the_folder_and_holds_speakers_out(tmp_path):
  root = str(tmp_path / "libri")
  write_librispeech(root, {"32-21625": ["A", "B C"], "1088-134315": ["HE SAID SO"]})
  write_librispeech(root, {"163-122947": ["D"]}, subset="train-clean-5")
  # A subset one level deeper, as the LibriSpeech archives extract; other .trans.txt files (not
  # SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt) are not transcripts of this layout.
  write_librispeech(os.path.join(root, "LibriSpeech"), {"1737-148": ["E F"]}, subset="dev-clean")
  open(os.path.join(root, "notes.trans.txt"), "w").write("x-y-0000 NOT A CLIP\n")
  config = _real_config(
    tmp_path, librispeech_dir=root, valid=("librispeech/1088",), test=("librispeech/1737", "an4/x")
  )
  train = list(sources.get("librispeech")(config, "train"))
  assert [ex["id"] for ex in train] == [
    "librispeech/163-122947-0000",
    "librispeech/32-21625-0000",
    "librispeech/32-21625-0001",
  ]  # Sorted by id.
  first = train[1]
  assert first["text"] == "A" and os.path.isfile(first["audio_filepath"])
  assert first["audio_filepath"].endswith("train-clean-5/32/21625/32-21625-0000.flac")
  assert first["labels"] == {
    "speaker": "librispeech/32",
    "chapter": "21625",
    "domain": "librispeech",
  }
  [valid] = sources.get("librispeech")(config, "valid")
  assert valid["id"] == "librispeech/1088-134315-0000" and valid["text"] == "HE SAID SO"
  [test] = sources.get("librispeech")(config, "test")
  assert test["labels"]["speaker"] == "librispeech/1737" and "dev-clean" in test["audio_filepath"]
  with pytest.raises(ValueError, match="not 'zero_shot'"):
    next(sources.get("librispeech")(config, "zero_shot"))


def test_an4_source_prefixes_speakers_and_holds_them_out_per_split(tmp_path):
  manifest = write_an4(
    str(tmp_path / "an4"), {"fash": ["yes", "go"], "mblb": ["stop"], "mcel": ["one two"]}
  )
  config = _real_config(tmp_path, an4_manifest=manifest, valid=("an4/fash",), test=("an4/mcel",))
  got = {split: list(sources.get("an4")(config, split)) for split in ("train", "valid", "test")}
  assert [ex["text"] for ex in got["valid"]] == ["yes", "go"]
  [train], [test] = got["train"], got["test"]
  assert train == {
    "id": "an4/an100-mblb-b",
    "audio_filepath": str(tmp_path / "an4" / "wav" / "mblb" / "an100-mblb-b.flac"),
    "text": "stop",
    "labels": {"speaker": "an4/mblb", "domain": "an4"},
  }
  assert test["labels"]["speaker"] == "an4/mcel"


def test_a_manifest_row_speaker_becomes_its_label_unless_labels_name_one(tmp_path):
  path = tmp_path / "m.jsonl"
  rows = [
    {"audio_filepath": "a.wav", "text": "one", "speaker": 7},
    {"audio_filepath": "b.wav", "text": "two", "speaker": "x", "labels": {"speaker": "y"}},
    {"audio_filepath": "c.wav", "text": "three"},
  ]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  labels = [ex["labels"] for ex in sources.read_manifest(str(path))]
  assert labels == [{"speaker": "7"}, {"speaker": "y"}, {}]


def test_missing_real_folders_are_one_line_naming_the_key_and_the_layout(tmp_path):
  config = _real_config(
    tmp_path, librispeech_dir=str(tmp_path / "nowhere"), an4_manifest=str(tmp_path / "m.jsonl")
  )
  with pytest.raises(FileNotFoundError) as e:
    next(sources.get("librispeech")(config, "train"))
  [line] = str(e.value).splitlines()
  assert str(tmp_path / "nowhere") in line and "--config.data.librispeech_dir" in line
  assert "SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt" in line
  with pytest.raises(FileNotFoundError) as e:
    next(sources.get("an4")(config, "train"))
  [line] = str(e.value).splitlines()
  assert str(tmp_path / "m.jsonl") in line and "--config.data.an4_manifest" in line
  assert "'speaker'" in line
  (tmp_path / "m.jsonl").write_text(json.dumps({"audio_filepath": "a.flac", "text": "a"}) + "\n")
  with pytest.raises(ValueError, match=r"m.jsonl: row m.jsonl:1 has no 'speaker'"):
    next(sources.get("an4")(config, "train"))


@pytest.mark.slow
def test_the_shared_real_speech_folders_hold_the_demo_held_out_speakers():
  """The demo's LibriSpeech and AN4 folders: every clip and speaker read, and the held-out
  speakers of configs/demo.py are theirs, so the real_* splits are not silently empty."""
  from configs import demo

  from testdata import real_speech_dir

  c = demo.get_config()
  c.data.librispeech_dir = real_speech_dir("librispeech_mini")
  c.data.an4_manifest = os.path.join(real_speech_dir("an4"), "manifest.jsonl")
  held = set(c.data.real_held_out.valid) | set(c.data.real_held_out.test)
  for name, clips, speakers in (("librispeech", 656, 20), ("an4", 948, 74)):
    examples = {split: list(sources.get(name)(c, split)) for split in ("train", "valid", "test")}
    every = [ex for split in examples.values() for ex in split]
    assert len(every) == clips and len({ex["id"] for ex in every}) == clips
    found = {ex["labels"]["speaker"] for ex in every}
    assert len(found) == speakers and {s for s in held if s.startswith(name)} <= found
    for split in ("valid", "test"):
      assert {ex["labels"]["speaker"] for ex in examples[split]} == {
        s for s in c.data.real_held_out[split] if s.startswith(name + "/")
      }
    assert not {ex["labels"]["speaker"] for ex in examples["train"]} & held
    assert all(os.path.isfile(ex["audio_filepath"]) for ex in every)


def test_a_missing_real_speech_set_is_named_with_where_to_get_it(tmp_path, monkeypatch):
  from configs import whisper

  monkeypatch.setenv(data.DATA_ROOT_ENV, str(tmp_path))
  config = whisper.get_config()
  (tmp_path / "an4").mkdir()
  (tmp_path / "an4" / "manifest.jsonl").write_text("")
  (tmp_path / "librispeech_mini").mkdir()
  with pytest.raises(FileNotFoundError) as refused:
    sources.check_real_speech(config)
  message = str(refused.value)
  assert "\n" not in message
  for part in (
    str(tmp_path / "fsdd"),
    "Free Spoken Digit",
    "github.com/Jakobovski",
    "spoken_digit",
    "$STALIGN_DATA",
    "--config.data.fsdd_dir",
  ):
    assert part in message, part
  (tmp_path / "fsdd" / "recordings").mkdir(parents=True)
  sources.check_real_speech(config)  # Every set the data stage reads is there.
  config.data.train_extra = ()
  config.data.real_sources = ()
  shutil.rmtree(tmp_path / "fsdd")
  sources.check_real_speech(config)  # Synthetic speech only: no real set is read.


@pytest.mark.parametrize("spec", ["train_clean100+train_clean360+train_other500", "dev_clean[2:]"])
def test_tfds_shards_are_contiguous_ranges_that_make_the_split_once(tmp_path, spec):
  """The data stage reads a TFDS split shard by shard (each process its own): the shards' examples,
  in shard order, are the split's, each once, under the same ids, also across `+` and slices."""
  from test_tpu_configs import write_librispeech

  write_librispeech(str(tmp_path / "tfds"))
  config = _config(tmp_path, "librispeech")
  config.data.tfds_splits.train = spec
  ids = lambda examples: [ex["id"] for ex in examples]
  whole = ids(sources.get("tfds")(config, "train"))
  shards = [ids(sources.get("tfds")(config, "train", shard=(i, 4))) for i in range(4)]
  assert sum(shards, []) == whole and len(set(whole)) == len(whole) > 3
  assert max(map(len, shards)) - min(map(len, shards)) <= 1
  # More shards than examples: the extra shards are empty, not an error.
  many = [ids(sources.get("tfds")(config, "train", shard=(i, 40))) for i in range(40)]
  assert sum(many, []) == whole
