"""A split as the `Embeddings` bundle every evaluator reads, embedded by predict functions.

As big_vision's evaluators take a `predict_fn` rather than a model, `embed` takes
two functions: `embed_speech` (a batch of the split's rows -> their student
embeddings and pooled layers) and `embed_text` (transcripts -> raw teacher
embeddings). The evaluation driver passes an `api.Model`'s (`stalign.evaluate`);
training passes its own compiled eval step over the batches it validates on
(`stalign.train_validation.run_evaluators`). So the evaluators, and this bridge, know
neither the model nor the reader nor the devices that made the vectors, and the
training loop needs neither the inference API nor the evaluation CLI.

Kept out of `evaluators/__init__.py`: reading records is the data layer's work,
which the inference API (importing `evaluators.zero_shot`) must not load.
"""

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
import json

import numpy as np

from stalign import evaluators
from stalign import fs
from stalign.data import layout
from stalign.data import tfrecords

# A batch of a split's rows -> (student embeddings [B, D], pooled layers [depth + 1, B, W]).
EmbedSpeech = Callable[[dict], tuple[np.ndarray, np.ndarray]]
# Distinct transcripts -> their raw teacher embeddings [G, D].
EmbedText = Callable[[list[str]], np.ndarray]


def read_split(data_dir: str, split: str) -> list[dict]:
  """Every record of `split` in `data_dir`, in file order (`tfrecords.deserialize`'s dicts), with
  its transcript's `teacher_embedding` where the data folder has the teacher's table."""
  records = list(tfrecords.iterate_records(layout.list_shards(data_dir, split)))
  table = {}
  if fs.exists(layout.teacher_table_path(data_dir)):
    table = dict(zip(*layout.read_teacher_table(data_dir)))
  for record in records:
    record["teacher_embedding"] = table.get(record["text"])
  return records


def as_batch(records: Sequence[dict]) -> dict:
  """Records (`read_split`) as one batch of columns for `embed`, features as a list of arrays.

  `teacher` is there only when every record carries its teacher embedding (`read_split` found
  the data folder's teacher table), else the transcripts are embedded by `embed_text` as a whole.
  """
  batch = {key: [r[key] for r in records] for key in ("features", "text", "labels", "id")}
  if all(r["teacher_embedding"] is not None for r in records):
    batch["teacher"] = [r["teacher_embedding"] for r in records]
  return batch


def embed(
  batches: Iterable[dict],
  embed_speech: EmbedSpeech,
  embed_text: EmbedText | None,
  target_mean: np.ndarray,
) -> evaluators.Embeddings:
  """The bundle of a split given in batches: its utterances, transcripts' gallery and labels.

  Args:
    batches: columns of the split's rows: `text`, `labels` and `id` (str, dict
      and str, or the UTF-8 and JSON bytes that `input_pipeline.eval_batches`
      reads), whatever `embed_speech` reads, and optionally `teacher` (raw
      teacher embeddings), `valid` (False for padding rows) and `position` (a
      row's place in the split's files, which then orders the bundle, so it
      does not depend on how a reader grouped the rows).
    embed_speech: the student's predict function.
    embed_text: the teacher's, for the gallery when a batch lacks `teacher`;
      None when every batch holds it.
    target_mean: subtracted from the raw teacher embeddings, giving the space
      the student was trained to match (zeros when `loss.centre_targets` is off).

  Returns:
    The bundle, in file order; the gallery is the sorted distinct transcripts.
  """
  columns = {k: [] for k in ("speech", "layers", "text", "labels", "id", "teacher", "position")}
  with_teacher = True
  for batch in batches:
    rows = np.flatnonzero(batch.get("valid", np.ones(len(batch["text"]), bool)))
    speech, layers = embed_speech(batch)
    columns["speech"].append(np.asarray(speech)[rows])
    columns["layers"].append(np.asarray(layers)[:, rows])
    columns["text"] += [_decoded(batch["text"][i]) for i in rows]
    columns["id"] += [_decoded(batch["id"][i]) for i in rows]
    columns["labels"] += [_labels(batch["labels"][i]) for i in rows]
    with_teacher = with_teacher and "teacher" in batch
    columns["teacher"] += [batch["teacher"][i] for i in rows] if with_teacher else []
    columns["position"] += [batch["position"][i] for i in rows] if "position" in batch else []
  speech = np.concatenate(columns["speech"])
  # Without positions the reader's order is the file order.
  order = np.argsort(columns["position"] or np.arange(len(speech)), kind="stable")
  texts, labels, ids = ([columns[k][i] for i in order] for k in ("text", "labels", "id"))
  gallery, first, index = np.unique(np.array(texts), return_index=True, return_inverse=True)
  if with_teacher:
    raw = np.stack([columns["teacher"][order[i]] for i in first])
  else:
    raw = embed_text(list(gallery))
  return evaluators.Embeddings(
    speech=speech[order],
    text=raw - target_mean,
    text_index=index,
    texts=list(gallery),
    raw_text=raw,
    labels=labels,
    ids=ids,
    layers=np.concatenate(columns["layers"], axis=1)[:, order],
  )


def _decoded(value: str | bytes) -> str:
  return value.decode() if isinstance(value, bytes) else value


def _labels(value: dict | str | bytes) -> dict:
  return json.loads(value) if isinstance(value, (str, bytes)) else value
