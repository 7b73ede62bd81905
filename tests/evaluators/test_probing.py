import numpy as np

from stalign.evaluators import probing


def _planted(n=900, d=24, classes=4, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d))
  y = np.argmax(x @ rng.standard_normal((d, classes)), axis=1)
  return x, y


def test_probe_recovers_a_planted_linear_signal():
  x, y = _planted()
  probe = probing.Probe(y, 4, probing.partition(len(y)))
  assert probe.run(x) > 0.9


def test_probe_stays_at_chance_on_noise():
  x, _ = _planted()
  y = np.random.default_rng(1).integers(0, 4, len(x))
  probe = probing.Probe(y, 4, probing.partition(len(y)))
  assert abs(probe.run(x) - 0.25) < 0.1
  assert abs(probe.chance - 0.25) < 0.1


def test_transfer_needs_the_signal_in_the_same_directions():
  x, y = _planted()
  probe = probing.Probe(y, 4, probing.partition(len(y)))
  rotated = x @ np.linalg.qr(np.random.default_rng(2).standard_normal((24, 24)))[0]
  assert probe.run(x, x + 0.1 * np.random.default_rng(3).standard_normal(x.shape)) > 0.85
  assert probe.run(x, rotated) < 0.6  # Same information, other directions: transfer fails.


def test_tasks_keep_categorical_labels_and_drop_none_and_measurements():
  labels = [
    {"intent": "a", "tense": "none", "rate": 150.5, "id": f"u{i}", "digit": i % 3}
    for i in range(200)
  ]
  labels[1]["tense"] = "past"
  labels[2]["tense"] = "future"
  found = probing.tasks(labels)
  assert sorted(found) == [
    "digit",
    "tense",
  ]  # One intent value; rate is a float; id has 200 values.
  classes, y = found["tense"]
  assert classes == ["future", "past"] and y[0] == -1 and y[1] == 1 and y[2] == 0


def test_probe_all_reports_every_kind_and_layers():
  x, y = _planted(n=300)
  labels = [{"planted": int(v)} for v in y]
  out = probing.probe_all(x, x, labels, layers=np.stack([x, x[:, ::-1]]))
  p = out["planted"]
  assert set(p) == {
    "speech",
    "text",
    "text_to_speech_transfer",
    "speech_to_text_transfer",
    "chance",
    "classes",
    "examples",
    "layers",
  }
  assert len(p["layers"]) == 2 and p["text_to_speech_transfer"] > 0.8
