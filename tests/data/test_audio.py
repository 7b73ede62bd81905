import logging

import numpy as np
import pytest
import soundfile as sf

from stalign.data import audio


def _write(path, wave, rate=16000):
  sf.write(str(path), wave, rate, subtype="PCM_16")
  return str(path)


def test_resamples_any_rate_and_downmixes_channels(tmp_path):
  t = np.arange(8000) / 8000
  stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
  wave = audio.load_audio(_write(tmp_path / "a.wav", stereo, 8000), 16000, 10.0)
  assert wave.ndim == 1 and wave.dtype == np.float32
  assert abs(len(wave) - 16000) <= 1


@pytest.mark.parametrize(
  "case,match",
  [
    ("empty", "empty"),
    ("silent", "silent"),
    ("long", "longer than"),
    ("short", "too short"),
    ("garbage", "cannot decode"),
    ("truncated", "cannot decode|too short|empty"),
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
  else:
    full = _write(tmp_path / "full.wav", noise)
    path = str(tmp_path / "x.wav")
    open(path, "wb").write(open(full, "rb").read()[:40])
  with pytest.raises(audio.AudioError, match=match) as err:
    audio.load_audio(path, 16000, max_seconds=2.0)
  assert path in str(err.value)


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


def test_change_speed_moves_tempo_and_pitch_together():
  rate = 16_000
  tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
  for speed in (0.9, 1.1):
    faster = audio.change_speed(tone, speed)
    assert faster.dtype == np.float32 and abs(faster.size - rate / speed) <= 2
    pitch = np.argmax(np.abs(np.fft.rfft(faster))) * rate / faster.size
    assert abs(pitch - 440 * speed) < 2
