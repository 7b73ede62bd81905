"""In-process text-to-speech through libespeak-ng (ctypes).

The corpus builder synthesises tens of thousands of short sentences. Spawning
the `espeak-ng` binary per sentence costs more than the synthesis itself, so
this module loads the shared library shipped by `espeakng_loader` and calls it
directly in AUDIO_OUTPUT_SYNCHRONOUS mode: `espeak_Synth` runs the whole
utterance on the calling thread and hands int16 blocks to a callback, with no
audio device and no background thread.

libespeak-ng keeps its state in C globals, which shapes the design:
  * Output depends slightly on what the instance synthesised before (pitch
    flutter phase, gain control and echo buffers live in statics that no API
    resets; lengths drift by a few samples). The random generators are reseeded
    per call, but bit-exact audio needs the same sequence of calls on a
    pristine instance.
  * So each process loads its own private copy of the shared object, lazily on
    first use (keyed by pid). A plain dlopen would hand a forked child the
    parent's instance, statics included; a copy at another path is a separate
    instance that starts pristine, whatever the parent synthesised.
    `stalign.data.corpus` renders each chunk of utterances in a fresh process.
  * Calls are serialised with a lock: the library is not re-entrant.
"""

import ctypes
import os
import shutil
import tempfile
import threading

import espeakng_loader
import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # Report errors instead of calling exit().
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_EE_OK = 0
_PHONEMES_IPA = 0x02  # espeak_TextToPhonemes phonememode bit 1; bits 8-23 hold a separator.

# int callback(short *wav, int numsamples, espeak_EVENT *events); non-zero aborts.
_SynthCallback = ctypes.CFUNCTYPE(
  ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(RuntimeError):
  """libespeak-ng refused a voice, a parameter or a text."""


class _Engine:
  """The library handle of this process plus the buffer its callback fills."""

  def __init__(self):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "libespeak-ng.so")
      shutil.copyfile(espeakng_loader.get_library_path(), path)
      lib = ctypes.CDLL(path)  # Stays mapped once the file is gone.
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    lib.espeak_Synth.argtypes = [
      ctypes.c_char_p,
      ctypes.c_size_t,
      ctypes.c_uint,
      ctypes.c_int,
      ctypes.c_uint,
      ctypes.c_uint,
      ctypes.c_void_p,
      ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_TextToPhonemes.argtypes = [
      ctypes.POINTER(ctypes.c_void_p),
      ctypes.c_int,
      ctypes.c_int,
    ]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    data_path = espeakng_loader.get_data_path()
    self.sample_rate = lib.espeak_Initialize(
      _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT
    )
    if self.sample_rate <= 0:
      raise EspeakError(f"espeak_Initialize failed ({self.sample_rate}) with data path {data_path}")
    self._blocks: list[np.ndarray] = []
    # ctypes frees the C trampoline with this object, so keep it alive.
    self._callback = _SynthCallback(self._collect)
    lib.espeak_SetSynthCallback(self._callback)
    self._lib = lib
    # Breath noise in some variants calls libc rand() rather than espeak's own.
    self._libc = ctypes.CDLL(None)
    self._voice = None

  def _collect(self, wav, numsamples, events):
    del events  # Word and phoneme timings are not needed.
    if numsamples > 0:
      self._blocks.append(np.ctypeslib.as_array(wav, (numsamples,)).copy())
    return 0

  def _set_voice(self, voice: str):
    if voice == self._voice:
      return
    self._voice = None
    err = self._lib.espeak_SetVoiceByName(voice.encode())
    if err != _EE_OK:
      raise EspeakError(f"espeak-ng has no voice {voice!r} (error {err})")
    self._voice = voice

  def synthesize(self, text: str, voice: str, rate_wpm: int, pitch: int) -> np.ndarray:
    self._set_voice(voice)
    for name, param, value in (("rate", _PARAM_RATE, rate_wpm), ("pitch", _PARAM_PITCH, pitch)):
      err = self._lib.espeak_SetParameter(param, int(value), 0)
      if err != _EE_OK:
        raise EspeakError(f"espeak-ng rejected {name}={value} with voice {voice!r} (error {err})")
    self._lib.espeak_ng_SetRandSeed(0)
    self._libc.srand(0)
    data = text.encode("utf-8") + b"\0"
    self._blocks = []
    err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    blocks, self._blocks = self._blocks, []
    if err != _EE_OK:
      raise EspeakError(f"espeak-ng failed (error {err}) with voice {voice!r} on {text!r}")
    if not blocks:
      raise EspeakError(f"espeak-ng produced no audio with voice {voice!r} for {text!r}")
    return np.concatenate(blocks).astype(np.float32) / 32768.0

  def phonemize(self, text: str, voice: str, separator: str) -> str:
    self._set_voice(voice)
    data = ctypes.create_string_buffer(text.encode("utf-8"))
    # The library advances this pointer clause by clause and sets it to NULL at the end.
    cursor = ctypes.c_void_p(ctypes.addressof(data))
    mode = _PHONEMES_IPA | (ord(separator) << 8)
    clauses = []
    while cursor.value:
      clauses.append(self._lib.espeak_TextToPhonemes(ctypes.byref(cursor), _CHARS_UTF8, mode))
    return " ".join(c.decode("utf-8") for c in clauses if c)


_lock = threading.Lock()
_engines: dict[int, _Engine] = {}


def _engine() -> _Engine:
  """The engine of this process; a forked child initialises its own."""
  pid = os.getpid()
  if pid not in _engines:
    _engines.clear()
    _engines[pid] = _Engine()
  return _engines[pid]


def synthesize(text: str, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50) -> np.ndarray:
  """Speaks `text`; returns float32 samples in [-1, 1) at `SAMPLE_RATE` Hz.

  Args:
    text: what to say, as plain UTF-8 (no SSML).
    voice: an espeak-ng voice name, optionally with a variant ("en-us+f3").
    rate_wpm: speaking rate in words per minute (espeak takes about 80..450).
    pitch: base pitch, 0..100.

  Raises:
    EspeakError: naming the voice (and text) that espeak-ng could not handle.
  """
  with _lock:
    return _engine().synthesize(text, voice, rate_wpm, pitch)


def phonemize(text: str, voice: str = "en-us", separator: str = "_") -> str:
  """IPA phonemes of `text` as espeak-ng would speak them (no audio is made).

  Words are separated by spaces and phonemes within a word by `separator`, so
  multi-letter phonemes ("tʃ", "aɪ") stay one unit; stress marks are kept on
  the vowel they precede. espeak may join unstressed function words into one
  word ("on the" -> "ɔ_n_ð_ə").
  """
  with _lock:
    return _engine().phonemize(text, voice, separator)


def __getattr__(name: str) -> int:
  # SAMPLE_RATE is what espeak_Initialize returns, so reading it initialises
  # the library; a module attribute computed at import would do that on import.
  if name == "SAMPLE_RATE":
    with _lock:
      return _engine().sample_rate
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
