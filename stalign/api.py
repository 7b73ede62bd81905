"""A trained run as a Python object: speech and text into one embedding space.

  import stalign
  model = stalign.load("runs/demo")
  speech = model.embed_speech(["a.wav", "b.wav"])          # [2, D]
  text = model.embed_text(["turn on the fan", "lock the door"])
  scores = stalign.api.cosine(speech, text)                  # [2, 2]

Both sides live in the space the student was trained to match: teacher
embeddings minus the training mean when `loss.centre_targets`, so speech and
text vectors are directly comparable by cosine. Speech goes through the same
front end as the stored training data (resampling, checks, log-mel rounded to
float16), so an embedding does not depend on whether a clip came from a
TFRecord or a wav file.
"""

from collections.abc import Sequence
import functools
import json
import os

from absl import logging
from flax import nnx
import jax
import ml_collections
import numpy as np

from stalign import checkpoints
from stalign import config as config_lib
from stalign import utils
from stalign.data import audio
from stalign.data import features as features_lib
from stalign.data import layout
from stalign.models import student as student_lib
from stalign.models import teacher as teacher_lib


def config_from_workdir(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run saved (`config.json`), as a ConfigDict."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path} not found: pass a run directory written by stalign.main "
      "(or give the config explicitly)"
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _split_path(path: str) -> tuple[str, int | None]:
  """(workdir, step) for a run directory, its checkpoints/ folder or one checkpoint step folder."""
  path = os.path.abspath(path)
  if os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints":
    return os.path.dirname(os.path.dirname(path)), int(os.path.basename(path))
  if os.path.basename(path) == "checkpoints":
    return os.path.dirname(path), None
  return path, None


def _resolve_data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`config.data_dir` as saved is relative to where training ran: try there, then above the run."""
  rel = config.data_dir
  candidates = [rel] + [os.path.join(d, rel) for d in _ancestors(workdir)]
  for c in candidates:
    if os.path.exists(layout.teacher_stats_path(c)):
      return os.path.abspath(c)
  raise FileNotFoundError(
    f"teacher_stats.npz not found under data_dir={rel!r} (tried {candidates}); "
    "the run's data folder holds the training mean the embeddings are centred on"
  )


def _ancestors(path: str) -> list[str]:
  out, path = [], os.path.abspath(path)
  while os.path.dirname(path) != path:
    path = os.path.dirname(path)
    out.append(path)
  return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[len(a), len(b)] cosine similarities."""
  return utils.unit(np.asarray(a)) @ utils.unit(np.asarray(b)).T


class Model:
  """A restored student plus the teacher, embedding speech and text into the same space.

  `params` and `step` may be replaced (training evaluates its current params
  this way) without recompiling the forward pass.
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
    self.params = params
    self.step = step
    self.target_mean = target_mean if config.loss.centre_targets else np.zeros_like(target_mean)
    self._forward = jax.jit(self._apply)

  def _apply(self, params, feats, num_frames):
    model = nnx.merge(self.graphdef, params)
    model.eval()
    out = model(feats, num_frames)
    return out["embedding"], out["layers"]

  @functools.cached_property
  def teacher(self):
    """Loaded on first use: embedding speech alone never needs it."""
    return teacher_lib.from_config(self.config)

  def embed_text(self, texts: Sequence[str]) -> np.ndarray:
    """[N, D] teacher embeddings, centred as the student's targets were."""
    return (
      self.teacher.embed(list(texts), batch_size=self.config.teacher.batch_size) - self.target_mean
    )

  def features(self, waveform: np.ndarray) -> np.ndarray:
    """Log-mel frames of a model-rate waveform, exactly as the TFRecord writer stores them."""
    return features_lib.featurize(waveform, self.config.features)

  def load_waveform(self, item, sample_rate: int = 16_000) -> np.ndarray:
    """A path or an in-memory waveform -> checked mono audio at the model's rate."""
    fcfg = self.config.features
    if isinstance(item, (str, os.PathLike)):
      return audio.load_audio(os.fspath(item), fcfg.sample_rate, fcfg.max_seconds)
    wave = np.asarray(item, np.float32)
    wave = wave.mean(axis=1) if wave.ndim == 2 else wave
    return audio.check_waveform(wave, sample_rate, fcfg.sample_rate, fcfg.max_seconds, "waveform")

  def embed_speech(self, waveforms_or_paths: Sequence, sample_rate: int = 16_000) -> np.ndarray:
    """[N, D] student embeddings of audio files or waveforms (at `sample_rate`, resampled)."""
    feats = [self.features(self.load_waveform(x, sample_rate)) for x in waveforms_or_paths]
    return self.embed_features(feats)[0]

  def embed_features(self, feats: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, D], pooled layers [depth + 1, N, dim]) of log-mel feature arrays.

    Utterances are sorted by length and padded to the training buckets in
    full batches of `eval.batch_size`, so jit compiles once per bucket.
    """
    batch_size = self.config.eval.batch_size
    lengths = np.array([len(f) for f in feats])
    buckets = features_lib.bucket_lengths(self.config)
    order = np.argsort(lengths, kind="stable")
    emb, layers = [None] * len(feats), [None] * len(feats)
    for start in range(0, len(order), batch_size):
      index = order[start : start + batch_size]
      longest = lengths[index[-1]]
      padded = features_lib.padded_length(longest, buckets, self.config.model.subsample)
      x = np.zeros((batch_size, padded, self.config.features.num_mels), np.float32)
      for row, i in enumerate(index):
        x[row, : lengths[i]] = feats[i]
      n = np.zeros(batch_size, np.int32)
      n[: len(index)] = lengths[index]
      e, h = jax.device_get(self._forward(self.params, x, n))
      for row, i in enumerate(index):
        emb[i], layers[i] = e[row], h[:, row]
    if not feats:
      raise ValueError("nothing to embed")
    return np.stack(emb), np.stack(layers, axis=1)


def load(
  path: str, step: int | None = None, config: ml_collections.ConfigDict | None = None
) -> Model:
  """Restores a run for embedding.

  Args:
    path: a run directory (holding config.json and checkpoints/), its
      checkpoints/ folder, or one step folder `RUN/checkpoints/1500`.
    step: checkpoint step; default the one in `path`, else the latest.
    config: overrides the run's saved config.json.

  Returns:
    A `Model` whose `embed_speech` and `embed_text` share one space.
  """
  workdir, path_step = _split_path(path)
  config = config_lib.validate(config or config_from_workdir(workdir))
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy: data_dir may be resolved.
  config.data_dir = _resolve_data_dir(config, workdir)
  dim, mean = layout.read_teacher_stats(config.data_dir)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: student_lib.build(config, dim)))
  params, step = checkpoints.restore_params(
    workdir, abstract, step if step is not None else path_step
  )
  logging.info("loaded %s step %d", workdir, step)
  return Model(config, graphdef, params, mean, step)
