import numpy as np

from stalign.evaluators import Embeddings
from stalign.evaluators import geometry


def _by_hand(speech, text, index):
  s = speech / np.linalg.norm(speech, axis=1, keepdims=True)
  t = text / np.linalg.norm(text, axis=1, keepdims=True)
  sim = s @ t.T
  paired = sim[np.arange(len(s)), index]
  unpaired = [sim[i, g] for i in range(len(s)) for g in range(len(t)) if g != index[i]]
  tp = t[index]
  gap = np.linalg.norm(s.mean(0) - tp.mean(0))
  align = np.mean([np.sum((s[i] - tp[i]) ** 2) for i in range(len(s))])

  def unif(u):
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    return np.log(
      np.mean(
        [
          np.exp(-2 * np.sum((u[i] - u[j]) ** 2))
          for i in range(len(u))
          for j in range(len(u))
          if i != j
        ]
      )
    )

  def selfcos(u):
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    return np.mean([u[i] @ u[j] for i in range(len(u)) for j in range(len(u)) if i != j])

  return {
    "paired_cosine": paired.mean(),
    "random_cosine": np.mean(unpaired),
    "modality_gap": gap,
    "alignment": align,
    "uniformity_speech": unif(speech),
    "uniformity_text": unif(text),
    "self_cosine_speech": selfcos(speech),
    "self_cosine_text": selfcos(text),
  }


def test_every_figure_matches_a_hand_computation():
  rng = np.random.default_rng(0)
  text = rng.standard_normal((5, 8))
  index = np.array([0, 1, 2, 3, 4, 0, 2])
  speech = text[index] + 0.5 * rng.standard_normal((7, 8))
  emb = Embeddings(speech=speech, text=text, text_index=index, texts=list("abcde"), raw_text=text)
  got = geometry.evaluate(emb)
  want = _by_hand(speech, text, index)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_known_extremes():
  e = np.eye(4)
  # Identical modalities: no gap, perfect alignment, orthogonal one-hots spread uniformly.
  np.testing.assert_allclose(geometry.modality_gap(e, e), 0, atol=1e-6)
  np.testing.assert_allclose(geometry.alignment(e, e), 0, atol=1e-6)
  np.testing.assert_allclose(geometry.uniformity(e), -4.0, atol=1e-5)  # All distances^2 are 2.
  # Opposite modalities: maximal alignment error and gap.
  x = np.ones((3, 2))
  np.testing.assert_allclose(geometry.alignment(x, -x), 4.0, atol=1e-5)
  np.testing.assert_allclose(geometry.modality_gap(x, -x), 2.0, atol=1e-5)
