import numpy as np

from stalign.evaluators import zero_shot


def test_class_embedding_is_the_normalised_mean_of_its_unit_prompts():
  table = {"a": [3.0, 0.0], "the {} a": [0.0, 1.0], "b": [0.0, -2.0], "the {} b": [0.0, -1.0]}
  embed = lambda prompts: np.array([table[p.replace("the x ", "the {} ")] for p in prompts])
  got = zero_shot.class_embeddings(embed, ["a", "b"], templates=("{}", "the x {}"))
  np.testing.assert_allclose(got, [[np.sqrt(0.5), np.sqrt(0.5)], [0.0, -1.0]], atol=1e-6)


def test_accuracy_per_class_per_group_and_confusion_by_hand():
  classes = np.array([[1.0, 0.0], [0.0, 1.0]])
  speech = np.array([[2.0, 0.1], [0.3, 1.0], [1.0, 0.2], [0.1, 5.0]])
  targets = np.array([0, 1, 1, 1])  # The third is wrong.
  out = zero_shot.evaluate(speech, targets, classes, ["x", "y"], groups=["g", "g", "h", "h"])
  assert out["accuracy"] == 0.75 and out["chance"] == 0.5
  assert out["per_class"] == {"x": 1.0, "y": 2 / 3}
  assert out["per_group"] == {
    "g": {"accuracy": 1.0, "utterances": 2},
    "h": {"accuracy": 0.5, "utterances": 2},
  }
  assert out["confusion"] == [[1, 0], [1, 2]]
