"""A trained run, or an export of one, as a Python object: speech and text into one space.

  import stalign
  model = stalign.load("runs/demo")                  # a run, or a folder from stalign.export
  speech = model.encode_speech(["a.wav", "b.wav"])    # [2, D]
  text = model.encode_text(["turn on the fan", "lock the door"])
  scores = model.similarity(speech, text)             # [2, 2] cosines
  model.classify(["a.wav"], ["fan", "door"], template="a request about the {}")

`encode_speech` and `encode_text` take the keywords of sentence-transformers'
`encode` (`batch_size`, `normalize_embeddings`, `show_progress_bar`,
`convert_to_numpy`); `stream_speech` embeds an iterable of any length
(a generator over a corpus) while holding only a few batches of features.

Two spaces (`space=`):
  "shared"   (default) the space the student was trained in: teacher
             embeddings minus the training mean when `loss.centre_targets`.
             Speech and text embedded by stalign compare best here.
  "teacher"  the teacher's own space, unit vectors: `encode_text` equals
             sentence-transformers' `encode` (its truncation included), and
             `encode_speech` maps the student's output back there, so a spoken
             query can search an index built with sentence-transformers.

Speech goes through the same front end as the stored training data
(resampling, checks, log-mel rounded to float16), so an embedding does not
depend on whether a clip came from a TFRecord or a wav file. Audio longer than
`features.max_seconds` (the cap on training clips) is cut into overlapping
windows whose embeddings are averaged (`speech_input`, `Model.embed_windows`).
With `model.transcript_weight` (the demo recipe's 0.5), each speech embedding
also holds the teacher's embedding of what the student's CTC head heard
(`fuse_transcripts`; decoded under a word language model with `model.ctc_lm`,
`ctc_decode`), so the teacher is loaded for speech too.

`load` takes a run or an export (`python -m stalign.export`, which needs
neither the run nor its data folder); `stalign.restore` finds and reads either.
Runs, exports and audio files may be local or `gs://` URLs (`stalign.fs`).
"""

from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
import functools
import math
import os

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from stalign import ctc_decode
from stalign import restore
from stalign import sharding
from stalign import speech_input
from stalign import utils
from stalign.data import features as features_lib
from stalign.evaluators import zero_shot
from stalign.models import frontend
from stalign.models import teacher as teacher_lib

SPACES = ("shared", "teacher")
# `stream_speech` reads, featurises and sorts by length this many batches of windows at a time:
# padding as low as sorting everything when inputs are few, memory bounded when they are not.
STREAM_BATCHES = 8


def cosine(a: np.ndarray | jax.Array, b: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
  """[len(a), len(b)] cosine similarities: numpy for numpy (or lists), a jax.Array for JAX input."""
  a, b = (x if isinstance(x, jax.Array) else np.asarray(x) for x in (a, b))
  return utils.unit(a) @ utils.unit(b).T


def check_space(space: str) -> str:
  if space not in SPACES:
    raise ValueError(f"space={space!r}; use one of {SPACES}")
  return space


class Model:
  """A restored student plus the teacher, embedding speech and text into the same space.

  `params` and `step` may be replaced (training evaluates its current params
  this way) without recompiling the forward pass. Batches are split over this
  process's devices (`sharding.local_mesh`), params replicated on each.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    graphdef,
    params,
    target_mean: np.ndarray,
    step: int | None = None,
  ):
    self.config = config
    self.graphdef = graphdef
    self.mesh = sharding.local_mesh()
    self.params = params
    self.step = step
    self.target_mean = target_mean if config.loss.centre_targets else np.zeros_like(target_mean)
    self._forward = jax.jit(self._apply, static_argnames="ctc")
    self._feature_dim = frontend.feature_dim(config.features)
    self._decoder = ctc_decode.Decoder(config)

  @property
  def params(self):
    return self._params

  @params.setter
  def params(self, params):
    """Placed (replicated) on the devices once, not sent along with every batch."""
    if self.mesh is None:
      self._params = jax.device_put(params)
    else:
      replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
      self._params = jax.device_put(params, replicated)

  def _apply(self, params, feats, num_frames, ctc: bool):
    model = nnx.merge(self.graphdef, params)
    model.eval()
    out = model(feats, num_frames)
    if not ctc:  # Nothing is decoded: every frame's head output stays on the device.
      return out["embedding"], out["layers"], None, None
    # The CTC head's log-probabilities come with the embedding: one compiled pass serves both
    # `embed_features` and `transcribe_features`, whichever way `ctc_decode` reads them.
    log_probs = jax.nn.log_softmax(out["ctc_logits"].astype(jnp.float32), axis=-1)
    return out["embedding"], out["layers"], log_probs, out["ctc_mask"].sum(axis=1)

  @functools.cached_property
  def teacher(self) -> teacher_lib.Teacher:
    """Loaded on first use (embedding speech never needs it); truncates as sentence-transformers."""
    return teacher_lib.from_config(self.config, inference=True)

  def encode_text(
    self,
    texts: str | Sequence[str],
    space: str = "shared",
    *,
    batch_size: int | None = None,
    normalize_embeddings: bool = False,
    show_progress_bar: bool | None = None,
    convert_to_numpy: bool = True,
  ) -> np.ndarray | jax.Array:
    """[N, D] embeddings of texts ([D] of one text) in `space`: centred like the targets, or unit.

    The keywords are sentence-transformers' `encode`'s: `batch_size` texts per
    teacher pass (default `teacher.batch_size`), unit rows with
    `normalize_embeddings` (the teacher space's already are), a progress bar
    (`show_progress_bar`, default: when logging is at INFO), and a jax.Array
    instead of numpy with `convert_to_numpy=False`.
    """
    check_space(space)
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    size = batch_size or self.config.teacher.batch_size
    pool = size * STREAM_BATCHES  # Sorted by length together, as `stream_speech` does speech.
    parts = []
    with _progress(show_progress_bar, len(texts), "text") as bar:
      for start in range(0, len(texts), pool):
        parts.append(self.teacher.embed(texts[start : start + pool], batch_size=size))
        bar.update(len(parts[-1]))
    raw = np.concatenate(parts) if parts else np.zeros((0, self.teacher.dim), np.float32)
    emb = utils.unit(raw) if space == "teacher" else raw - self.target_mean
    return _output(emb[0] if single else emb, normalize_embeddings, convert_to_numpy)

  def to_teacher_space(self, speech: np.ndarray) -> np.ndarray:
    """Student (shared-space) embeddings -> unit vectors in the teacher's own space.

    The student matches the direction of its target `t - mean` (cosine loss),
    not its length, so its output is scaled to the targets' root-mean-square
    length, sqrt(1 - |mean|^2) for unit teacher vectors, before the mean is
    added back: the estimate of `t` that then gets compared by cosine.
    """
    mean_sq = float(self.target_mean @ self.target_mean)
    if mean_sq >= 1:
      raise ValueError(
        f"|target mean|^2 = {mean_sq:.3f} >= 1: the teacher's training embeddings were not unit "
        "vectors, so speech cannot be mapped back into its space; use space='shared'"
      )
    return utils.unit(utils.unit(speech) * math.sqrt(1 - mean_sq) + self.target_mean)

  def features(self, waveform: np.ndarray) -> np.ndarray:
    """Frames of a model-rate waveform (`models.frontend`), as the TFRecord writer stores them."""
    return frontend.featurize(waveform, self.config.features)

  def load_waveform(self, item, sample_rate: int = 16_000) -> np.ndarray:
    """A path or an in-memory waveform -> checked mono audio at the model's rate, any length."""
    return speech_input.load_waveform(item, self.config.features, sample_rate)

  def windows(self, waveform: np.ndarray) -> list[np.ndarray]:
    """Log-mel of each window of a model-rate waveform (`speech_input.windows`)."""
    return speech_input.windows(waveform, self.config.features)

  def encode_speech(
    self,
    inputs: str | os.PathLike | np.ndarray | Iterable,
    sample_rate: int = 16_000,
    space: str = "shared",
    *,
    batch_size: int | None = None,
    normalize_embeddings: bool = False,
    show_progress_bar: bool | None = None,
    convert_to_numpy: bool = True,
  ) -> np.ndarray | jax.Array:
    """[N, D] embeddings of audio files or waveforms ([D] of one), in `space`.

    Args:
      inputs: paths (any sample rate) or waveforms at `sample_rate` (resampled
        to the model's), any length; an iterable (a generator too), or one
        path or waveform.
      sample_rate: the rate of waveforms given as arrays.
      space: "shared" or "teacher" (module docstring).
      batch_size: windows per forward pass; default `eval.batch_size`.
      normalize_embeddings: unit rows (cosine becomes a dot product).
      show_progress_bar: default: when logging is at INFO, as sentence-transformers.
      convert_to_numpy: False returns a jax.Array.

    Inputs are read and featurised a few batches at a time (`stream_speech`).
    """
    single = isinstance(inputs, (str, os.PathLike, np.ndarray))
    items = [inputs] if single else inputs
    rows = []
    total = len(items) if hasattr(items, "__len__") else None
    with _progress(show_progress_bar, total, "clip") as bar:
      for row in self.stream_speech(items, sample_rate, space, batch_size=batch_size):
        rows.append(row)
        bar.update()
    emb = np.stack(rows) if rows else np.zeros((0, self.target_mean.shape[-1]), np.float32)
    return _output(emb[0] if single else emb, normalize_embeddings, convert_to_numpy)

  def stream_speech(
    self,
    inputs: Iterable,
    sample_rate: int = 16_000,
    space: str = "shared",
    *,
    batch_size: int | None = None,
  ) -> Iterator[np.ndarray]:
    """The [D] embedding of each input in turn, holding the features of a few batches at most.

    For more audio than fits in memory as features (a generator over a corpus):
    inputs are read and cut into windows until `STREAM_BATCHES` batches are
    filled, those are embedded (sorted by length, `embed_windows`), their
    embeddings yielded in input order, and only then are more inputs read.
    """
    check_space(space)
    pool = STREAM_BATCHES * self._batch_size(batch_size)
    pending, count = [], 0
    for item in inputs:
      pending.append(self.windows(self.load_waveform(item, sample_rate)))
      count += len(pending[-1])
      if count >= pool:
        yield from self.embed_windows(pending, space, batch_size)
        pending, count = [], 0
    if pending:
      yield from self.embed_windows(pending, space, batch_size)

  def similarity(
    self, a: np.ndarray | jax.Array, b: np.ndarray | jax.Array
  ) -> np.ndarray | jax.Array:
    """[len(a), len(b)] cosines of two sets of embeddings (`cosine`), as sentence-transformers'."""
    return cosine(a, b)

  def classify(
    self,
    speech: str | os.PathLike | np.ndarray | Iterable,
    labels: Sequence[str],
    template: str | Sequence[str] = "{}",
    *,
    sample_rate: int = 16_000,
    space: str = "shared",
    batch_size: int | None = None,
  ) -> str | list[str]:
    """Zero-shot: the label whose text is nearest to each input (one label for one input).

    A label's text is `template.format(label)`; the answer is the argmax of
    `similarity` between the speech and those texts. Several templates are
    averaged per label as the zero-shot evaluation averages them
    (`evaluators.zero_shot.class_embeddings`), so `classify` is the rule
    behind report.json's zero-shot figures.
    """
    templates = [template] if isinstance(template, str) else list(template)
    if not labels or not templates:
      raise ValueError(f"classify needs labels and templates; got {labels!r} and {templates!r}")
    speech_emb = self.encode_speech(
      speech, sample_rate, space, batch_size=batch_size, show_progress_bar=False
    )
    encode = functools.partial(self.encode_text, space=space, show_progress_bar=False)
    classes = zero_shot.class_embeddings(encode, labels, templates)
    best = np.argmax(self.similarity(np.atleast_2d(speech_emb), classes), axis=1)
    predicted = [labels[i] for i in best]
    return predicted[0] if np.ndim(speech_emb) == 1 else predicted

  def embed_windows(
    self,
    windows: Sequence[Sequence[np.ndarray]],
    space: str = "shared",
    batch_size: int | None = None,
  ) -> np.ndarray:
    """[N, D] embeddings of N inputs, each given as the log-mel of its windows (`windows`).

    An input's embedding is the mean of its windows' embeddings weighted by
    their lengths, so a short last window counts for what it holds.
    """
    check_space(space)
    emb = self.embed_features([w for item in windows for w in item], batch_size)[0]
    pooled, start = [], 0
    for item in windows:
      weights = np.array([len(w) for w in item], np.float32)
      pooled.append(weights @ emb[start : start + len(item)] / weights.sum())
      start += len(item)
    pooled = np.stack(pooled)
    return self.to_teacher_space(pooled) if space == "teacher" else pooled

  def embed_features(
    self, feats: Sequence[np.ndarray], batch_size: int | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, D], pooled layers [depth + 1, N, dim]) of stored feature arrays.

    With `model.transcript_weight`, each embedding is the student's fused with the teacher's
    embedding of what the student's CTC head transcribed (`fuse_transcripts`), from the same
    forward pass. Every speech embedding of a model (`encode_speech`, the evaluations) comes
    through here or `embed_and_transcribe_features`.
    """
    emb, layers, _ = self._embed(feats, batch_size, transcribe=False)
    return emb, layers

  def embed_and_transcribe_features(
    self, feats: Sequence[np.ndarray], batch_size: int | None = None
  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`embed_features` and `transcribe_features` together, from one forward pass and one decode
    (a fused embedding has decoded its transcript already): what evaluation reads."""
    self._check_ctc_head()
    return self._embed(feats, batch_size, transcribe=True)

  def _embed(
    self, feats: Sequence[np.ndarray], batch_size: int | None, transcribe: bool
  ) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    weight = self.config.model.transcript_weight
    decode = bool(weight) or transcribe
    emb, layers, log_probs = self._forward_batches(feats, batch_size, ctc=decode)
    emb = np.stack(emb)
    texts = self._decoder(log_probs) if decode else None
    if weight:
      heard = self.encode_text(texts, show_progress_bar=False)
      emb = fuse_transcripts(emb, heard, [bool(t.strip()) for t in texts], weight)
    return emb, np.stack(layers, axis=1), texts

  def transcribe(self, waveforms_or_paths: Sequence, sample_rate: int = 16_000) -> list[str]:
    """Transcripts of audio files or waveforms by the student's multitask CTC head.

    Characters, or IPA phonemes for a run trained on `features.ctc_targets=phonemes`: the best
    path, or with `model.ctc_lm` a beam search under a word language model (`ctc_decode`).
    The head is trained alongside the embedding (`loss.ctc_weight`), so its
    transcripts show what the encoder hears: on a voice whose digits it places
    wrongly, whether it mishears the words or only places them wrongly.
    Audio longer than `features.max_seconds` is cut into consecutive windows
    transcribed on their own and joined by a space (a word across a cut may split).
    """
    self._check_ctc_head()
    size = speech_input.window_samples(self.config.features)
    feats, windows = [], []  # Every window of every input, batched together; windows per input.
    for item in waveforms_or_paths:
      wave = self.load_waveform(item, sample_rate)
      cuts = range(0, max(wave.size, 1), size)
      feats += [self.features(wave[a : a + size]) for a in cuts]
      windows.append(len(cuts))
    texts = self.transcribe_features(feats)
    bounds = np.cumsum([0, *windows])
    return [" ".join(texts[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

  def transcribe_features(self, feats: Sequence[np.ndarray]) -> list[str]:
    """CTC transcripts of stored feature arrays (`transcribe`), decoded as `model.ctc_lm` says."""
    self._check_ctc_head()
    return self._decoder(self._forward_batches(feats, ctc=True)[2])

  def _check_ctc_head(self) -> None:
    if not self.config.loss.ctc_weight:
      raise ValueError(
        "this run was trained with loss.ctc_weight=0, so its CTC head is untrained and its "
        "transcripts would be noise; transcribe with a run trained with CTC (e.g. configs/demo.py)"
      )

  def _batch_size(self, batch_size: int | None) -> int:
    """Rows of a forward pass: `batch_size` (default `eval.batch_size`), whole per local device."""
    size = batch_size or self.config.eval.batch_size
    return size if self.mesh is None else utils.round_up(size, self.mesh.size)

  def _forward_batches(
    self, feats: Sequence[np.ndarray], batch_size: int | None = None, ctc: bool = True
  ) -> tuple[list, list, list]:
    """Per input: (embedding [D], pooled layers [depth + 1, dim], CTC log-probs [frames, vocab]).

    With `ctc=False` the log-probabilities are None and never leave the device (a variant
    compiled without them): [batch, frames, vocab] floats a batch, where the embedding is [D].

    Utterances are sorted by length and padded to the training buckets in
    full batches (`_batch_size`; each split over the local devices), so jit
    compiles once per bucket.
    """
    if not feats:
      raise ValueError("nothing to embed")
    batch_size = self._batch_size(batch_size)
    batch_sharding = None
    if self.mesh is not None:
      batch_sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))
    lengths = np.array([len(f) for f in feats])
    buckets = features_lib.bucket_lengths(self.config)
    order = np.argsort(lengths, kind="stable")
    emb, layers, log_probs = [None] * len(feats), [None] * len(feats), [None] * len(feats)
    for start in range(0, len(order), batch_size):
      index = order[start : start + batch_size]
      longest = lengths[index[-1]]
      padded = features_lib.padded_length(longest, buckets, self.config.model.subsample)
      x = np.zeros((batch_size, padded, self._feature_dim), np.float32)
      for row, i in enumerate(index):
        x[row, : lengths[i]] = feats[i]
      n = np.zeros(batch_size, np.int32)
      n[: len(index)] = lengths[index]
      if batch_sharding is not None:
        x, n = jax.device_put((x, n), batch_sharding)
      e, h, lp, frames = jax.device_get(self._forward(self.params, x, n, ctc=ctc))
      for row, i in enumerate(index):
        emb[i], layers[i] = e[row], h[:, row]
        log_probs[i] = lp[row, : frames[row]] if ctc else None
    return emb, layers, log_probs


def fuse_transcripts(
  speech: np.ndarray, heard: np.ndarray, has_transcript: Sequence[bool], weight: float
) -> np.ndarray:
  """unit(unit(speech) + weight * unit(heard)) per row: the student's embedding and the teacher's
  embedding of the student's own transcript, in the shared space; a row whose transcript is
  empty keeps the student's alone.

  Why: the student's pooled embedding and its CTC head learn the same words by different routes,
  and the teacher reads a transcript, even a misspelt one, in ways a few thousand training
  sentences cannot teach the student: on the valid split, over three seeds, weight 0.25 lifted
  speech->text R@1 of unseen LibriSpeech readers, AN4 speakers and the synthetic split, and 0.5
  with the transcript read under a word model (`ctc_decode`) lifted them further
  (docs/experiments.md, "The CTC head's transcript, fused" and "A word language model").
  """
  mask = np.asarray(has_transcript, np.float32)[:, None]
  return utils.unit(utils.unit(speech) + weight * mask * utils.unit(heard))


def _progress(show: bool | None, total: int | None, unit: str) -> tqdm.tqdm:
  """A progress bar over `total` inputs; `show=None` shows it when logging is at INFO or finer."""
  show = logging.get_verbosity() >= logging.INFO if show is None else show
  return tqdm.tqdm(total=total, desc=f"encode {unit}", unit=unit, disable=not show)


def _output(emb: np.ndarray, normalize: bool, to_numpy: bool) -> np.ndarray | jax.Array:
  """`encode_*`'s result: unit rows if asked, numpy or a jax.Array."""
  emb = utils.unit(emb) if normalize else emb
  return emb if to_numpy else jnp.asarray(emb)


def load(
  path: str, step: int | None = None, config: ml_collections.ConfigDict | None = None
) -> Model:
  """Restores a run or an export for embedding.

  Args:
    path: a run directory (holding config.json and checkpoints/), its
      checkpoints/ folder, one step folder `RUN/checkpoints/1500`, or a folder
      written by `python -m stalign.export`.
    step: checkpoint step; default the one in `path`, else the latest.
    config: overrides the saved config.json.

  Returns:
    A `Model` whose `encode_speech` and `encode_text` share one space.
  """
  return Model(*restore.student(path, step, config))
