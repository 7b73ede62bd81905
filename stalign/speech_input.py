"""Speech in at inference: any audio file or waveform to checked audio, long audio to windows.

`api.Model` reads every clip it embeds or transcribes through here, so audio of
any rate, channel count and length becomes what the student was trained on:
mono audio at `features.sample_rate`, checked as the data stage checks it
(`data.audio`), featurised (`models.frontend`) in windows no longer than the
longest training clip (`features.max_seconds`).
"""

import math
import os

import ml_collections
import numpy as np

from stalign.data import audio
from stalign.models import frontend


def load_waveform(
  item: str | os.PathLike | np.ndarray,
  features: ml_collections.ConfigDict,
  sample_rate: int = 16_000,
) -> np.ndarray:
  """A path, or a waveform at `sample_rate` -> checked mono audio at the model's rate, any length.

  `features` is the run's `config.features`.
  """
  if isinstance(item, (str, os.PathLike)):
    return audio.load_audio(os.fspath(item), features.sample_rate, math.inf)
  wave = np.asarray(item, np.float32)
  wave = wave.mean(axis=1) if wave.ndim == 2 else wave
  return audio.check_waveform(wave, sample_rate, features.sample_rate, math.inf, "waveform")


def window_samples(features: ml_collections.ConfigDict) -> int:
  """Samples in the longest clip trained on, the length of a window."""
  return int(features.max_seconds * features.sample_rate)


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


def windows(waveform: np.ndarray, features: ml_collections.ConfigDict) -> list[np.ndarray]:
  """Log-mel of each window (`window_bounds`) of a model-rate waveform; one when it fits.

  Each window is featurised on its own, like a training clip of at most
  `features.max_seconds`, so the student never sees a longer input than it
  was trained on, and memory stays bounded for hours of audio.
  """
  bounds = window_bounds(waveform.size, window_samples(features))
  return [frontend.featurize(waveform[a:b], features) for a, b in bounds]
