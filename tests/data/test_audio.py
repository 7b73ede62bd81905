import logging

import numpy as np
import pytest
import soundfile as sf

from stalign.data import audio


def _write(path, wave, rate=16000):
  sf.write(str(path), wave, rate, subtype="PCM_16")
  return str(path)


def _amplitude_at(wave: np.ndarray, hz: float, rate: int) -> float:
  """The amplitude of a `hz` tone in `wave` (a whole number of its periods long)."""
  spectrum = np.abs(np.fft.rfft(wave)) * 2 / wave.size
  return float(spectrum[round(hz * wave.size / rate)])


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_rate_and_stereo_becomes_the_model_rate_mono_mix(tmp_path, rate):
  """Two different channels (440 Hz left, 1 kHz right) at the file's rate: the result is 1 s at
  16 kHz holding both tones at half their amplitude, i.e. the channels' mean, resampled."""
  t = np.arange(rate) / rate
  stereo = np.stack([0.6 * np.sin(2 * np.pi * 440 * t), 0.4 * np.sin(2 * np.pi * 1000 * t)], 1)
  wave = audio.load_audio(_write(tmp_path / "a.wav", stereo, rate), 16000, 10.0)
  assert wave.ndim == 1 and wave.dtype == np.float32 and abs(len(wave) - 16000) <= 1
  middle = wave[4000:12000]  # Half a second, away from the resampler's edges.
  assert abs(_amplitude_at(middle, 440, 16000) - 0.3) < 0.01
  assert abs(_amplitude_at(middle, 1000, 16000) - 0.2) < 0.01
  assert _amplitude_at(middle, 700, 16000) < 0.01


@pytest.mark.parametrize(
  "case,match",
  [
    ("empty", "empty"),
    ("silent", "silent"),
    ("long", "longer than"),
    ("short", "too short"),
    ("garbage", "cannot decode"),
    ("truncated", "cannot decode|too short|empty"),
    ("zero_bytes", "cannot decode audio; re-encode it as WAV/FLAC or drop it"),
    ("nan", "audio contains NaN/Inf samples; re-export it or drop it"),
    ("inf", "audio contains NaN/Inf samples; re-export it or drop it"),
    ("seventy_seconds", "70.0 s is longer than features.max_seconds=30; segment it or raise"),
  ],
)
def test_bad_audio_raises_an_error_naming_the_file(tmp_path, case, match):
  noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
  if case == "empty":
    path = _write(tmp_path / "x.wav", np.zeros(0, np.float32))
  elif case == "silent":
    path = _write(tmp_path / "x.wav", np.zeros(16000, np.float32))
  elif case == "long":
    path = _write(tmp_path / "x.wav", np.tile(noise, 3))
  elif case == "short":
    path = _write(tmp_path / "x.wav", noise[:160])
  elif case == "garbage":
    path = str(tmp_path / "x.wav")
    open(path, "wb").write(b"this is not audio at all" * 10)
  elif case == "zero_bytes":
    path = str(tmp_path / "x.wav")
    open(path, "wb").close()
  elif case in ("nan", "inf"):  # A float WAV can hold them.
    noise[100] = np.nan if case == "nan" else np.inf
    path = str(tmp_path / "x.wav")
    sf.write(path, noise, 16000, subtype="FLOAT")
  elif case == "seventy_seconds":
    path = _write(tmp_path / "x.wav", np.tile(noise, 70))
  else:
    full = _write(tmp_path / "full.wav", noise)
    path = str(tmp_path / "x.wav")
    open(path, "wb").write(open(full, "rb").read()[:40])
  with pytest.raises(audio.AudioError, match=match) as err:
    audio.load_audio(path, 16000, max_seconds=30 if case == "seventy_seconds" else 2.0)
  assert str(err.value).startswith(f"{path}: ")


def test_stereo_downmix_is_logged_with_the_file_name(tmp_path, caplog):
  left = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000) * 0.5
  path = _write(tmp_path / "stereo.wav", np.stack([left, np.zeros_like(left)], axis=1))
  caplog.set_level(logging.INFO)
  wave = audio.load_audio(path, 16000, 10.0)
  np.testing.assert_allclose(wave, left / 2, atol=1e-4)
  assert f"{path}: downmixed 2 channels to mono" in caplog.text
  caplog.clear()
  audio.load_audio(_write(tmp_path / "mono.wav", left), 16000, 10.0)
  assert "downmixed" not in caplog.text


def test_more_than_two_channels_are_refused(tmp_path):
  noise = np.random.default_rng(0).standard_normal((16000, 4)) * 0.1
  path = _write(tmp_path / "array.wav", noise)
  with pytest.raises(audio.AudioError, match="4 audio channels") as err:
    audio.load_audio(path, 16000, 10.0)
  assert path in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_refused(bad):
  wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
  wave[100] = bad
  with pytest.raises(audio.AudioError, match="clip-7: audio contains NaN/Inf"):
    audio.check_waveform(wave, 16000, 16000, 10.0, "clip-7")


def test_implausible_sample_rate_is_refused(tmp_path):
  noise = np.random.default_rng(0).standard_normal(2000) * 0.1
  path = _write(tmp_path / "x.wav", noise, rate=1000)  # A 2 s file whose header says 1 kHz.
  with pytest.raises(audio.AudioError, match="1000 Hz is too low") as err:
    audio.load_audio(path, 16000, 10.0)
  assert path in str(err.value)


def test_narrowband_keeps_the_telephone_band_and_drops_what_is_above():
  """`audio.narrowband`: a 16 kHz clip as if recorded at 8 kHz, at its own length and rate."""
  rate = 16_000
  t = np.arange(rate) / rate
  wave = (np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
  narrow = audio.narrowband(wave, rate)
  assert narrow.dtype == np.float32 and narrow.size == wave.size
  spectrum = np.abs(np.fft.rfft(narrow)) / np.abs(np.fft.rfft(wave)).max()
  assert spectrum[1000] > 0.9 and spectrum[6000] < 0.01  # 1 Hz per bin over one second.


def test_change_speed_moves_tempo_and_pitch_together():
  rate = 16_000
  tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
  for speed in (0.9, 1.1):
    faster = audio.change_speed(tone, speed)
    assert faster.dtype == np.float32 and abs(faster.size - rate / speed) <= 2
    pitch = np.argmax(np.abs(np.fft.rfft(faster))) * rate / faster.size
    assert abs(pitch - 440 * speed) < 2
