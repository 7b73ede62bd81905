"""Reading audio files into model-rate mono waveforms, with checks that name the file.

Every data source goes through `load_audio` or `check_waveform`, so corrupt,
empty, silent, absurdly short or long files, implausible sample rates and
channel layouts are caught in one place; the TFRecord writer turns an
`AudioError` into a counted skip with its reason.
"""

from absl import logging
import numpy as np
import soundfile as sf
import soxr

from stalign import fs

MIN_SECONDS = 0.1
SILENCE_PEAK = 1e-4
# Below telephone band (8 kHz) speech is not intelligible; such a rate is a broken header.
MIN_SAMPLE_RATE = 4000
# Stereo is averaged; more channels (arrays, surround) are not one voice, so are refused.
MAX_CHANNELS = 2
# Telephone band: FSDD's recordings and phone lines are sampled at 8 kHz (speech up to 4 kHz).
NARROWBAND_RATE = 8000


class AudioError(ValueError):
  """An audio file that cannot be used; the message names the file and the fix."""


def load_audio(path: str, sample_rate: int, max_seconds: float) -> np.ndarray:
  """Returns float32 mono audio at `sample_rate`; raises AudioError on bad input.

  `path` may be a URL (`stalign.fs`): manifests on a bucket name their audio there.
  """
  try:
    with fs.open(path, "rb") as f:
      wave, file_rate = sf.read(f, dtype="float32", always_2d=True)
  except FileNotFoundError as e:
    raise AudioError(
      f"{path}: no such audio file; fix its path (a manifest's paths are relative to the manifest)"
    ) from e
  except Exception as e:  # soundfile raises several types for bad headers.
    raise AudioError(
      # The decoder's detail last: skips are counted by the text before the first ";".
      f"{path}: cannot decode audio; re-encode it as WAV/FLAC or drop it ({e})"
    ) from e
  return check_waveform(to_mono(wave, path), file_rate, sample_rate, max_seconds, path)


def to_mono(wave: np.ndarray, name: str) -> np.ndarray:
  """(samples,) or (samples, channels) -> (samples,); logs each downmix, naming the file.

  Averaging stereo is what a listener hears, but it can cancel out-of-phase
  channels, so a downmix is logged rather than silent.
  """
  if wave.ndim == 1:
    return wave
  channels = wave.shape[1]
  if channels == 1:
    return wave[:, 0]
  if channels > MAX_CHANNELS:
    raise AudioError(
      f"{name}: {channels} audio channels (at most {MAX_CHANNELS}); "
      "pick or mix the speech channel before training"
    )
  logging.info("%s: downmixed %d channels to mono", name, channels)
  return wave.mean(axis=1)


def check_waveform(
  wave: np.ndarray, file_rate: int, sample_rate: int, max_seconds: float, name: str
) -> np.ndarray:
  """Validates an in-memory mono waveform and resamples it to `sample_rate`."""
  if wave.size == 0:
    raise AudioError(f"{name}: empty audio (0 samples); drop it or record it again")
  if file_rate < MIN_SAMPLE_RATE:
    raise AudioError(
      f"{name}: sample rate {file_rate} Hz is too low for speech "
      f"(min {MIN_SAMPLE_RATE} Hz); the header is probably wrong"
    )
  if not np.all(np.isfinite(wave)):
    raise AudioError(f"{name}: audio contains NaN/Inf samples; re-export it or drop it")
  seconds = wave.size / file_rate
  if seconds < MIN_SECONDS:
    raise AudioError(
      f"{name}: {seconds:.3f} s is too short to be speech (min {MIN_SECONDS} s); drop it"
    )
  if seconds > max_seconds:
    raise AudioError(
      f"{name}: {seconds:.1f} s is longer than features.max_seconds={max_seconds}; "
      "segment it or raise the limit"
    )
  if np.abs(wave).max() < SILENCE_PEAK:
    raise AudioError(
      f"{name}: audio is silent (peak below {SILENCE_PEAK}); check the recording or drop it"
    )
  if file_rate != sample_rate:
    wave = soxr.resample(wave, file_rate, sample_rate)
  return wave.astype(np.float32)


def change_speed(wave: np.ndarray, speed: float) -> np.ndarray:
  """`wave` played `speed` times faster: tempo, pitch and formants move together, as on tape.

  Why: the standard speed perturbation of speech training data (Ko et al., 2015). Each
  factor makes a recording sound like a slightly different speaker, which is what a
  handful of real voices lacks. Resampling to 1/speed of the rate and playing the result
  at the original rate is exactly that.
  """
  return soxr.resample(wave, speed, 1.0).astype(np.float32)


def narrowband(wave: np.ndarray, sample_rate: int) -> np.ndarray:
  """`wave` as if recorded at `NARROWBAND_RATE`: through that rate and back to `sample_rate`.

  Why: 16 kHz training speech carries a 4-8 kHz band that an 8 kHz recording (FSDD's digits,
  the telephone) lacks; band-limited copies of many speakers' clips show the head speech as
  such recordings sound. (It did not help FSDD's unseen nicolas: docs/experiments.md.)
  """
  low = soxr.resample(wave, sample_rate, NARROWBAND_RATE)
  return soxr.resample(low, NARROWBAND_RATE, sample_rate).astype(np.float32)[: wave.size]
