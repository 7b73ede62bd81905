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


@pytest.mark.parametrize("case,match", [
    ("empty", "empty"), ("silent", "silent"), ("long", "longer than"), ("short", "too short"),
    ("garbage", "cannot decode"), ("truncated", "cannot decode|too short|empty")])
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
