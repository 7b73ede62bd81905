"""A trained run, or an export of one, as a Python object: speech and text into one space.

  import stalign
  model = stalign.load("runs/demo")                 # a run, or a folder from stalign.export
  speech = model.embed_speech(["a.wav", "b.wav"])    # [2, D]
  text = model.embed_text(["turn on the fan", "lock the door"])
  scores = stalign.api.cosine(speech, text)          # [2, 2]

Two spaces (`space=`):
  "shared"   (default) the space the student was trained in: teacher
             embeddings minus the training mean when `loss.centre_targets`.
             Speech and text embedded by stalign compare best here.
  "teacher"  the teacher's own space, unit vectors: `embed_text` equals
             sentence-transformers' `encode` (its truncation included), and
             `embed_speech` maps the student's output back there, so a spoken
             query can search an index built with sentence-transformers.

Speech goes through the same front end as the stored training data
(resampling, checks, log-mel rounded to float16), so an embedding does not
depend on whether a clip came from a TFRecord or a wav file. Audio longer than
`features.max_seconds` (the cap on training clips) is cut into overlapping
windows whose embeddings are averaged (`window_bounds`, `Model.embed_windows`).

An export (`python -m stalign.export`) is read here too: `stalign.load` knows
one by its manifest file, and needs neither the run nor its data folder. Runs,
exports and audio files may be local or `gs://` URLs (`stalign.fs`).
"""

from collections.abc import Sequence
import functools
import json
import math
import os

from absl import logging
from flax import nnx
import jax
import ml_collections
import numpy as np
import safetensors.numpy

from stalign import checkpoints
from stalign import config as config_lib
from stalign import fs
from stalign import losses
from stalign import sharding
from stalign import utils
from stalign.data import audio
from stalign.data import features as features_lib
from stalign.data import layout
from stalign.data import text as text_lib
from stalign.models import frontend
from stalign.models import student as student_lib
from stalign.models import teacher as teacher_lib

SPACES = ("shared", "teacher")

# An export folder (written by stalign/export.py, read by `load`).
EXPORT_MANIFEST = "stalign_export.json"  # Marks the folder: {"format", "format_version", ...}.
EXPORT_FORMAT = "stalign-export"
EXPORT_FORMAT_VERSION = 1
EXPORT_PARAMS = "params.safetensors"  # Student params by `param_key`.
EXPORT_CONFIG = "config.json"  # The resolved config, as a run saves it.
EXPORT_TEACHER_STATS = "teacher_stats.npz"  # Teacher width and training mean (layout's format).


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run or an export saved (`config.json`), as a ConfigDict."""
  path = os.path.join(workdir, "config.json")
  if not fs.exists(path):
    raise FileNotFoundError(
      f"{path} not found: pass a run directory written by stalign.main or a folder written by "
      "stalign.export (or give the config explicitly)"
    )
  return config_lib.upgrade(ml_collections.ConfigDict(json.loads(fs.read_text(path))))


def _split_path(path: str) -> tuple[str, int | None]:
  """(workdir, step) for a run directory, its checkpoints/ folder or one checkpoint step folder."""
  path = fs.abspath(path).rstrip("/")
  if os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints":
    return os.path.dirname(os.path.dirname(path)), int(os.path.basename(path))
  if os.path.basename(path) == "checkpoints":
    return os.path.dirname(path), None
  return path, None


def resolve_data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`config.data_dir` as saved is relative to where training ran: try there, then above the run."""
  rel = config.data_dir
  candidates = [rel] + [os.path.join(d, rel) for d in _ancestors(workdir)]
  for c in candidates:
    if fs.exists(layout.teacher_stats_path(c)):
      return fs.abspath(c)
  raise FileNotFoundError(
    f"teacher_stats.npz not found under data_dir={rel!r} (tried {candidates}); "
    "the run's data folder holds the training mean the embeddings are centred on "
    "(or load a folder written by `python -m stalign.export`, which carries it)"
  )


def _ancestors(path: str) -> list[str]:
  """Folders above `path`, nearest first; for a URL, up to its bucket."""
  out, path = [], fs.abspath(path).rstrip("/")
  while os.path.dirname(path) != path and not os.path.dirname(path).endswith(":/"):
    path = os.path.dirname(path)
    out.append(path)
  return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[len(a), len(b)] cosine similarities."""
  return utils.unit(np.asarray(a)) @ utils.unit(np.asarray(b)).T


def check_space(space: str) -> str:
  if space not in SPACES:
    raise ValueError(f"space={space!r}; use one of {SPACES}")
  return space


def window_bounds(length: int, size: int) -> list[tuple[int, int]]:
  """[(start, stop)] covering `length` samples: all of it when it fits in `size`, else windows.

  Windows are `size` long (the longest clip trained on) at a hop of half that,
  so every sample outside the first and last half-window is seen twice; the
  last window ends at the end and is longer than the hop.
  """
  hop = size // 2
  bounds = [(0, min(size, length))]
  while bounds[-1][1] < length:
    start = bounds[-1][0] + hop
    bounds.append((start, min(start + size, length)))
  return bounds


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
    self._forward = jax.jit(self._apply)
    self._feature_dim = frontend.feature_dim(config.features)

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

  def _apply(self, params, feats, num_frames):
    model = nnx.merge(self.graphdef, params)
    model.eval()
    out = model(feats, num_frames)
    # The greedy CTC ids are a few argmaxes beside the encoder: one compiled pass serves both
    # `embed_features` and `transcribe_features`.
    return (
      out["embedding"],
      out["layers"],
      losses.greedy_ctc_ids(out["ctc_logits"], out["ctc_mask"]),
    )

  @functools.cached_property
  def teacher(self) -> teacher_lib.Teacher:
    """Loaded on first use (embedding speech never needs it); truncates as sentence-transformers."""
    return teacher_lib.from_config(self.config, inference=True)

  def embed_text(self, texts: Sequence[str], space: str = "shared") -> np.ndarray:
    """[N, D] text embeddings in `space` (module docstring): centred like the targets, or unit."""
    raw = self.teacher.embed(list(texts), batch_size=self.config.teacher.batch_size)
    return utils.unit(raw) if check_space(space) == "teacher" else raw - self.target_mean

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
    fcfg = self.config.features
    if isinstance(item, (str, os.PathLike)):
      return audio.load_audio(os.fspath(item), fcfg.sample_rate, math.inf)
    wave = np.asarray(item, np.float32)
    wave = wave.mean(axis=1) if wave.ndim == 2 else wave
    return audio.check_waveform(wave, sample_rate, fcfg.sample_rate, math.inf, "waveform")

  def windows(self, waveform: np.ndarray) -> list[np.ndarray]:
    """Log-mel of each window (`window_bounds`) of a model-rate waveform; one when it fits.

    Each window is featurised on its own, like a training clip of at most
    `features.max_seconds`, so the student never sees a longer input than it
    was trained on, and memory stays bounded for hours of audio.
    """
    fcfg = self.config.features
    size = int(fcfg.max_seconds * fcfg.sample_rate)
    return [self.features(waveform[a:b]) for a, b in window_bounds(waveform.size, size)]

  def embed_speech(
    self, waveforms_or_paths: Sequence, sample_rate: int = 16_000, space: str = "shared"
  ) -> np.ndarray:
    """[N, D] embeddings of audio files or waveforms (at `sample_rate`, resampled), in `space`."""
    windows = [self.windows(self.load_waveform(x, sample_rate)) for x in waveforms_or_paths]
    return self.embed_windows(windows, space)

  def embed_windows(
    self, windows: Sequence[Sequence[np.ndarray]], space: str = "shared"
  ) -> np.ndarray:
    """[N, D] embeddings of N inputs, each given as the log-mel of its windows (`windows`).

    An input's embedding is the mean of its windows' embeddings weighted by
    their lengths, so a short last window counts for what it holds.
    """
    check_space(space)
    emb = self.embed_features([w for item in windows for w in item])[0]
    pooled, start = [], 0
    for item in windows:
      weights = np.array([len(w) for w in item], np.float32)
      pooled.append(weights @ emb[start : start + len(item)] / weights.sum())
      start += len(item)
    pooled = np.stack(pooled)
    return self.to_teacher_space(pooled) if space == "teacher" else pooled

  def embed_features(self, feats: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, D], pooled layers [depth + 1, N, dim]) of log-mel feature arrays."""
    emb, layers, _ = self._forward_batches(feats)
    return np.stack(emb), np.stack(layers, axis=1)

  def transcribe(self, waveforms_or_paths: Sequence, sample_rate: int = 16_000) -> list[str]:
    """Greedy transcripts of audio files or waveforms by the student's multitask CTC head.

    Characters, or IPA phonemes for a run trained on `features.ctc_targets=phonemes`.
    The head is trained alongside the embedding (`loss.ctc_weight`), so its
    transcripts show what the encoder hears: on a voice whose digits it places
    wrongly, whether it mishears the words or only places them wrongly.
    Audio longer than `features.max_seconds` is cut into consecutive windows
    transcribed on their own and joined by a space (a word across a cut may split).
    """
    self._check_ctc_head()
    fcfg = self.config.features
    size = int(fcfg.max_seconds * fcfg.sample_rate)
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
    """Greedy CTC transcripts of log-mel feature arrays (`transcribe`), best path collapsed."""
    self._check_ctc_head()
    _, _, ids = self._forward_batches(feats)
    return [text_lib.decode(row, self.config.features.ctc_targets) for row in ids]

  def _check_ctc_head(self) -> None:
    if not self.config.loss.ctc_weight:
      raise ValueError(
        "this run was trained with loss.ctc_weight=0, so its CTC head is untrained and its "
        "transcripts would be noise; transcribe with a run trained with CTC (e.g. configs/demo.py)"
      )

  def _forward_batches(self, feats: Sequence[np.ndarray]) -> tuple[list, list, list]:
    """Per input: (embedding [D], pooled layers [depth + 1, dim], greedy CTC ids of its frames).

    Utterances are sorted by length and padded to the training buckets in
    full batches of `eval.batch_size` (rounded up to a multiple of the local
    devices, over which each batch is split), so jit compiles once per bucket.
    """
    if not feats:
      raise ValueError("nothing to embed")
    batch_size = self.config.eval.batch_size
    batch_sharding = None
    if self.mesh is not None:
      batch_size = utils.round_up(batch_size, self.mesh.size)
      batch_sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))
    lengths = np.array([len(f) for f in feats])
    buckets = features_lib.bucket_lengths(self.config)
    order = np.argsort(lengths, kind="stable")
    emb, layers, ctc_ids = [None] * len(feats), [None] * len(feats), [None] * len(feats)
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
      e, h, ids = jax.device_get(self._forward(self.params, x, n))
      for row, i in enumerate(index):
        # Padding frames decode to blank, so a row's ids stand for its input alone.
        emb[i], layers[i], ctc_ids[i] = e[row], h[:, row], ids[row]
    return emb, layers, ctc_ids


def param_key(path: tuple) -> str:
  """A parameter's path in the student's state as one string key: `blocks/0/ff1/up/kernel`."""
  return "/".join(str(k) for k in path)


def is_export(path: str) -> bool:
  return fs.isfile(os.path.join(path, EXPORT_MANIFEST))


def read_export_manifest(path: str) -> dict:
  """The manifest of an export folder, after checking that this stalign reads its format."""
  manifest = json.loads(fs.read_text(os.path.join(path, EXPORT_MANIFEST)))
  if manifest.get("format") != EXPORT_FORMAT:
    raise ValueError(f"{path}/{EXPORT_MANIFEST}: format {manifest.get('format')!r} is not ours")
  if manifest.get("format_version", 0) > EXPORT_FORMAT_VERSION:
    raise ValueError(
      f"{path}: export format version {manifest['format_version']} is newer than this stalign "
      f"reads ({EXPORT_FORMAT_VERSION}); upgrade stalign"
    )
  return manifest


def _export_file(path: str, name: str) -> str:
  file = os.path.join(path, name)
  if not fs.exists(file):
    raise FileNotFoundError(f"{file} not found: the export is incomplete; export the run again")
  return file


def _load_export(path: str, step: int | None, config: ml_collections.ConfigDict | None) -> Model:
  """A `Model` from an export folder alone: params, config and teacher statistics are inside."""
  manifest = read_export_manifest(path)
  if step is not None and step != manifest["step"]:
    raise FileNotFoundError(
      f"{path} is an export of step {manifest['step']}, not {step}; export step {step} "
      "with `python -m stalign.export --step`"
    )
  config = config_lib.validate(config or config_from_workdir(path))
  dim, mean = layout.read_teacher_stats_file(_export_file(path, EXPORT_TEACHER_STATS))
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: student_lib.build(config, dim)))
  with fs.local_copy(_export_file(path, EXPORT_PARAMS)) as params_file:
    tensors = safetensors.numpy.load_file(params_file)
  want = {param_key(p): (p, v) for p, v in nnx.to_flat_state(abstract)}
  if set(tensors) != set(want):
    raise ValueError(
      f"{path}/{EXPORT_PARAMS} does not fit the student its config.json builds: missing "
      f"{sorted(set(want) - set(tensors))[:5]}, unexpected {sorted(set(tensors) - set(want))[:5]}"
    )
  pure = {}
  for key, (p, var) in want.items():
    if tensors[key].shape != var.shape:
      raise ValueError(
        f"{path}/{EXPORT_PARAMS}: {key} has shape {tensors[key].shape}, not {var.shape}"
      )
    pure[p] = tensors[key].astype(var.dtype)  # A bfloat16 export computes in float32.
  nnx.replace_by_pure_dict(abstract, nnx.traversals.unflatten_mapping(pure))
  logging.info("loaded export %s (step %d, %s)", path, manifest["step"], manifest["dtype"])
  return Model(config, graphdef, abstract, mean, manifest["step"])


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
    A `Model` whose `embed_speech` and `embed_text` share one space.
  """
  if is_export(path):
    return _load_export(path, step, config)
  workdir, path_step = _split_path(path)
  config = config_lib.validate(config or config_from_workdir(workdir))
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy: data_dir may be resolved.
  config.data_dir = resolve_data_dir(config, workdir)
  dim, mean = layout.read_teacher_stats(config.data_dir)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: student_lib.build(config, dim)))
  params, step = checkpoints.restore_params(
    workdir, abstract, step if step is not None else path_step
  )
  logging.info("loaded %s step %d", workdir, step)
  return Model(config, graphdef, params, mean, step)
