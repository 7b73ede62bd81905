"""Tests of the in-process espeak-ng binding."""

import os

import numpy as np
import pytest

from configs import demo
from stalign.data import espeak


def test_sample_rate_comes_from_the_library():
  assert espeak.SAMPLE_RATE == 22_050
  wave = espeak.synthesize("hello world", "en-us", 175, 50)
  assert wave.dtype == np.float32 and 0.3 < len(wave) / 22_050 < 3
  assert 0.05 < np.abs(wave).max() <= 1


@pytest.mark.parametrize("voice", demo.get_config().corpus.voices)
def test_corpus_voices_exist(voice):
  assert len(espeak.synthesize("one two", voice, 200, 50)) > 1000


def test_unknown_voice_is_named_in_the_error():
  with pytest.raises(espeak.EspeakError, match="'en-gb'"):
    espeak.synthesize("hello", "en-gb", 175, 50)
  assert len(espeak.synthesize("hello", "en-us", 175, 50)) > 0  # Recovers.


def test_rate_and_pitch_are_applied():
  slow = espeak.synthesize("the farmer sold two red tractors", "en", 120, 50)
  fast = espeak.synthesize("the farmer sold two red tractors", "en", 300, 50)
  assert len(slow) > 1.8 * len(fast)


def test_forked_child_starts_pristine():
  """A child's audio must not depend on what its parent synthesised."""

  def child_output() -> bytes:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
      wave = espeak.synthesize("turn on the kitchen lights", "en-us+f2", 180, 40)
      os.write(write, wave.tobytes())
      os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 1 << 16):
      chunks.append(chunk)
    os.waitpid(pid, 0)
    return b"".join(chunks)

  before = child_output()
  espeak.synthesize("something else entirely to move the state", "en+m2", 300, 90)
  assert child_output() == before
