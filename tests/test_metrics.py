"""Classification metrics against scikit-learn and hand-checked values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from crckd.engine.metrics import (
    SCALAR_METRICS,
    ClassificationMetric,
    classification_metrics,
    format_metrics_table,
    per_class_table,
)

CLASSES = ["a", "b", "c"]
KEYS = {*SCALAR_METRICS, "per_class", "confusion_matrix", "classes", "num_samples"}

# 8 samples; predictions (argmax) are 0 0 1 | 1 1 2 | 2 0
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2])
PROBS = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.5, 0.2],
        [0.2, 0.7, 0.1],
        [0.1, 0.6, 0.3],
        [0.2, 0.3, 0.5],
        [0.1, 0.2, 0.7],
        [0.5, 0.1, 0.4],
    ]
)


def _random_problem(n: int = 60, c: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, size=n)
    probs = rng.dirichlet(np.ones(c), size=n)
    probs[np.arange(n), labels] += rng.random(n)  # better than chance
    return labels, probs / probs.sum(axis=1, keepdims=True)


def test_hand_checked_example() -> None:
    m = classification_metrics(LABELS, PROBS, CLASSES)
    assert set(m) == KEYS
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(5 / 8)
    a, b, c = (m["per_class"][k] for k in CLASSES)
    assert (a["sensitivity"], b["sensitivity"], c["sensitivity"]) == pytest.approx(
        (2 / 3, 2 / 3, 1 / 2)
    )
    # specificity = TN / (TN + FP): a has FP 1 of 5 negatives, b 1 of 5, c 1 of 6
    assert (a["specificity"], b["specificity"], c["specificity"]) == pytest.approx(
        (4 / 5, 4 / 5, 5 / 6)
    )
    assert (a["precision"], b["precision"], c["precision"]) == pytest.approx((2 / 3, 2 / 3, 1 / 2))
    assert [a["support"], b["support"], c["support"]] == [3, 3, 2]
    # class c: positives score 0.7, 0.4; negatives 0.1 0.1 0.2 0.1 0.3 0.5 -> 11 of 12 pairs
    assert c["auc"] == pytest.approx(11 / 12)
    assert m["classes"] == CLASSES
    assert m["num_samples"] == 8


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_scikit_learn(seed: int) -> None:
    labels, probs = _random_problem(seed=seed)
    pred = probs.argmax(1)
    m = classification_metrics(labels, probs, list("abcd"), kappa_weights="quadratic")
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert m["precision_macro"] == pytest.approx(precision_score(labels, pred, average="macro"))
    assert m["recall_macro"] == pytest.approx(recall_score(labels, pred, average="macro"))
    assert m["f1_macro"] == pytest.approx(f1_score(labels, pred, average="macro"))
    one_hot = np.eye(4)[labels]
    assert m["auc_macro"] == pytest.approx(roc_auc_score(one_hot, probs, average="macro"))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(labels, pred, weights="quadratic"))
    f1_per_class = f1_score(labels, pred, average=None)
    assert [v["f1"] for v in m["per_class"].values()] == pytest.approx(list(f1_per_class))


def test_quadratic_kappa_forgives_near_misses() -> None:
    """Off-by-one grade errors cost less under quadratic weights than unweighted."""
    labels = np.array([0, 1, 2, 3, 4] * 4)
    pred = np.clip(labels + np.tile([0, 0, 1, -1, 0], 4), 0, 4)
    probs = np.eye(5)[pred]
    grades = [str(g) for g in range(5)]
    plain = classification_metrics(labels, probs, grades)["kappa"]
    quadratic = classification_metrics(labels, probs, grades, kappa_weights="quadratic")["kappa"]
    linear = classification_metrics(labels, probs, grades, kappa_weights="linear")["kappa"]
    assert plain == pytest.approx(cohen_kappa_score(labels, pred))
    assert quadratic == pytest.approx(cohen_kappa_score(labels, pred, weights="quadratic"))
    assert plain < linear < quadratic


def test_class_absent_from_labels() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    m = classification_metrics(labels, probs, CLASSES)
    absent = m["per_class"]["c"]
    assert absent["auc"] is None
    assert absent["support"] == 0
    assert (absent["sensitivity"], absent["precision"], absent["f1"]) == (0.0, 0.0, 0.0)
    assert absent["specificity"] == pytest.approx(3 / 4)
    # macro precision/recall/f1 count the absent class (as a 0); balanced accuracy does not
    assert m["recall_macro"] == pytest.approx((1 / 2 + 1) / 3)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["auc_macro"] == pytest.approx(np.mean([m["per_class"][k]["auc"] for k in "ab"]))
    assert m["confusion_matrix"][2] == [0, 0, 0]


def test_undefined_values_are_none_not_nan() -> None:
    m = classification_metrics([1, 1], [[0.1, 0.9], [0.2, 0.8]], ["x", "y"])
    assert m["auc_macro"] is None
    assert m["kappa"] is None
    json.dumps(m, allow_nan=False)


def test_output_is_json_serialisable() -> None:
    labels, probs = _random_problem()
    m = classification_metrics(torch.tensor(labels), torch.tensor(probs), list("abcd"))
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_rejects_inconsistent_inputs() -> None:
    with pytest.raises(ValueError, match="probs"):
        classification_metrics(LABELS, PROBS[:, :2], CLASSES)
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(LABELS[:-1], PROBS, CLASSES)
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(LABELS + 1, PROBS, CLASSES)


def test_metric_object_equals_function_on_concatenation() -> None:
    labels, probs = _random_problem(n=50)
    metric = ClassificationMetric(list("abcd"), kappa_weights="linear")
    for chunk in np.array_split(np.arange(50), 3):
        metric.update(torch.tensor(probs[chunk]), torch.tensor(labels[chunk]))
    assert metric.aggregate() == classification_metrics(labels, probs, list("abcd"), "linear")
    np.testing.assert_array_equal(metric.labels, labels)
    np.testing.assert_allclose(metric.probs, probs)
    metric.reset()
    assert metric.labels.shape == (0,)
    assert metric.probs.shape == (0, 4)


def test_tables() -> None:
    m = classification_metrics(np.array([0, 0, 1, 1]), np.eye(3)[[0, 1, 1, 1]], CLASSES)
    table = per_class_table(m)
    assert list(table.columns) == [
        "class", "sensitivity", "specificity", "auc", "precision", "f1", "support",
    ]  # fmt: skip
    assert list(table["class"]) == CLASSES
    assert np.isnan(table.loc[2, "auc"])
    text = format_metrics_table(m)
    for key in [*SCALAR_METRICS, *CLASSES]:
        assert key in text
    assert "0.7500" in text  # accuracy
