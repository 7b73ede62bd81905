import numpy as np

from stalign import input_pipeline
from stalign.data import layout
from stalign.evaluators import split

from testdata import with_buckets


def _first_frames(batch):
  """A predict function that depends on each row's own features alone, padded or not."""
  speech = np.stack([np.asarray(f)[0] for f in batch["features"]])
  return speech, speech[None] * 2


def test_embed_keeps_real_rows_in_file_order_and_centres_the_records_teacher_embeddings():
  """Two batches as a bucketing reader gives them: out of order, the last with a padding row."""
  teacher = np.arange(8, dtype=np.float32).reshape(4, 2)
  batches = [
    {
      "features": [np.full((3, 2), 2.0), np.full((3, 2), 0.0)],
      "text": [b"b", b"a"],
      "id": [b"u2", b"u0"],
      "labels": [b'{"digit": 2}', b'{"digit": 0}'],
      "teacher": teacher[[2, 0]],
      "position": np.array([2, 0]),
    },
    {
      "features": [np.full((3, 2), 1.0), np.full((3, 2), 9.0)],
      "text": [b"b", 0],
      "id": [b"u1", 0],
      "labels": [b'{"digit": 1}', 0],
      "teacher": teacher[[1, 3]],
      "position": np.array([1, 0]),
      "valid": np.array([True, False]),
    },
  ]

  def no_teacher(texts):
    raise AssertionError(f"the records carry their teacher embeddings; asked for {texts}")

  mean = np.array([1.0, -1.0], np.float32)
  emb = split.embed(batches, _first_frames, no_teacher, mean)
  np.testing.assert_array_equal(emb.speech, [[0, 0], [1, 1], [2, 2]])
  np.testing.assert_array_equal(emb.layers, [[[0, 0], [2, 2], [4, 4]]])
  assert emb.ids == ["u0", "u1", "u2"]
  assert emb.labels == [{"digit": 0}, {"digit": 1}, {"digit": 2}]
  assert emb.texts == ["a", "b"]
  np.testing.assert_array_equal(emb.text_index, [0, 1, 1])
  np.testing.assert_array_equal(emb.raw_text, teacher[[0, 1]])  # Each text's first utterance's.
  np.testing.assert_array_equal(emb.text, teacher[[0, 1]] - mean)


def test_embed_asks_the_teacher_once_for_the_gallery_when_records_lack_its_embeddings():
  asked = []

  def embed_text(texts):
    asked.append(texts)
    return np.eye(len(texts), dtype=np.float32)

  batch = {
    "features": [np.ones((2, 3)), np.zeros((2, 3))],
    "text": ["on", "off"],
    "id": ["x", "y"],
    "labels": [{}, {}],
  }
  emb = split.embed([batch], _first_frames, embed_text, np.zeros(2, np.float32))
  assert asked == [["off", "on"]]
  np.testing.assert_array_equal(emb.text_index, [1, 0])
  np.testing.assert_array_equal(emb.text, np.eye(2))


def test_training_and_evaluation_readers_give_one_bundle(prepared_config):
  """tf.data's padded buckets (training) and the records in file order (`evaluate`) meet in
  `embed` as the same bundle: rows, ids, labels, gallery and teacher embeddings."""
  c = with_buckets(prepared_config)
  dim, mean = layout.read_teacher_stats(c.data_dir)
  batches = input_pipeline.eval_batches(c, "test", dim, 8)
  trained = split.embed(batches, _first_frames, None, mean)
  records = split.read_split(c.data_dir, "test")
  evaluated = split.embed([split.as_batch(records)], _first_frames, None, mean)
  assert len(records) > 8 and trained.ids == evaluated.ids == [r["id"] for r in records]
  assert trained.labels == evaluated.labels and trained.texts == evaluated.texts
  for field in ("speech", "layers", "text_index", "raw_text", "text"):
    np.testing.assert_array_equal(getattr(trained, field), getattr(evaluated, field))
