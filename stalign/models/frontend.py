"""What a waveform becomes before the student: the one front end of data building and inference.

`features.frontend` picks it:
- `logmel`: natural-log mel energies every 10 ms (`stalign.data.features.featurize`), for the
  from-scratch Conformer.
- `whisper`: Whisper's log-mel, then the first `features.whisper_layers` blocks of a pretrained
  Whisper encoder (`features.whisper_weights`), frozen, every 20 ms. A frozen encoder gives the
  same frames every epoch, so they are computed once, stored in the TFRecords like the
  teacher's embeddings, and training runs only what learns: on two CPU cores that is what makes
  a 20M-parameter pretrained encoder affordable (docs/experiments.md).

The TFRecord writer (`stalign.prepare`) and inference (`stalign.api`) both call `featurize`, so a
clip embeds the same whether it came from a data folder or a file.
"""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stalign import utils
from stalign.data import features as features_lib
from stalign.models import whisper
from stalign.models import whisper_weights

FRONTENDS = ("logmel", "whisper")
_MEL_FRAMES_STEP = 100  # Log-mel frames are padded to whole seconds: one compiled shape each.


def feature_dim(fcfg: ml_collections.ConfigDict) -> int:
  """Channels of each stored frame: mel bands, or the Whisper encoder's width."""
  if fcfg.frontend == "whisper":
    return whisper_weights.load(fcfg.whisper_weights)[1].width
  return fcfg.num_mels


@functools.lru_cache(maxsize=2)
def _frozen_encoder(weights: str, layers: int):
  encoder = whisper.pretrained_encoder(weights, layers)
  graphdef, state = nnx.split(encoder)

  @jax.jit
  def run(state, mel, mel_frames):
    hidden, _ = nnx.merge(graphdef, state)(mel, mel_frames)
    return hidden

  return functools.partial(run, state)


def whisper_frames(wave: np.ndarray, fcfg: ml_collections.ConfigDict) -> np.ndarray:
  """Frozen Whisper encoder frames [frames, width] (float16, as stored) of a 16 kHz waveform.

  A clip shorter than `features.whisper_min_seconds` is followed by silence up to that length,
  as Whisper follows every clip with silence up to 30 s in training, and only the clip's own
  frames are kept. Why: alone, a 0.35 s digit is a context Whisper never saw, and its frames
  differ from those it gets with silence after it to 30 s (mean cosine 0.66 for FSDD nicolas's
  digits; 0.79 when followed by silence to 1 s). With 1 s, nicolas's zero-shot digits rose
  from 0.87 to 0.93 on the valid run (docs/experiments.md).
  """
  silence = round(fcfg.whisper_min_seconds * whisper.SAMPLE_RATE) - wave.size
  mel = whisper.log_mel(np.pad(wave, (0, max(silence, 0))), fcfg.num_mels)
  frames = mel.shape[0]
  padded = utils.round_up(max(frames, 1), _MEL_FRAMES_STEP)
  mel = np.pad(mel, ((0, padded - frames), (0, 0)))
  hidden = _frozen_encoder(fcfg.whisper_weights, fcfg.whisper_layers)(
    jnp.asarray(mel[None]), jnp.array([frames], jnp.int32)
  )
  return np.asarray(
    hidden[0, : int(whisper.encoder_frames(whisper.mel_frames(wave.size)))], np.float16
  )


def featurize(wave: np.ndarray, fcfg: ml_collections.ConfigDict) -> np.ndarray:
  """Stored frames [frames, feature_dim] of a checked waveform at the model's rate."""
  if fcfg.frontend == "whisper":
    if fcfg.remove_dc:
      wave = wave - wave.mean(dtype=np.float64).astype(wave.dtype)
    return whisper_frames(wave, fcfg)
  return features_lib.featurize(wave, fcfg)
