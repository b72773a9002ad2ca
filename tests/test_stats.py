"""Confidence intervals of comparisons (crckd.tools.stats), on synthetic predictions."""

import numpy as np
import pandas as pd
import pytest

from crckd.engine.metrics import SCALAR_METRICS, classification_metrics
from crckd.tools.stats import (
    bootstrap_difference,
    paired_differences,
    resampled_metrics,
    t_interval,
    verdict,
)

CLASSES = ("a", "b", "c", "d")


def _probs(rng: np.random.Generator, labels: np.ndarray, accuracy: float) -> np.ndarray:
    """Random probabilities whose top class is the label for about `accuracy` of the images."""
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=len(labels))
    right = rng.random(len(labels)) < accuracy
    probs[right, labels[right]] += 2.0
    return probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_resampled_metrics_equal_scikit_learn_on_each_resample(weights):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), 60)
    labels[:3] = 3  # class 3 is rare: some resamples lack it (balanced accuracy, AUC skip it)
    labels[3:] = np.minimum(labels[3:], 2)
    probs = _probs(rng, labels, 0.6)
    draws = rng.integers(0, len(labels), size=(25, len(labels)))
    fast = resampled_metrics(labels, probs, draws, weights)
    for r, rows in enumerate(draws):
        slow = classification_metrics(labels[rows], probs[rows], CLASSES, weights)
        for metric in SCALAR_METRICS:
            expected = np.nan if slow[metric] is None else slow[metric]
            assert fast[metric][r] == pytest.approx(expected, abs=1e-12, nan_ok=True), metric


def test_t_interval_follows_the_formula():
    interval = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / np.sqrt(3)  # t(0.975, df=2) * sd (1) / sqrt(n)
    assert (interval.mean, interval.n) == (2.0, 3)
    assert interval.low == pytest.approx(2.0 - half)
    assert interval.high == pytest.approx(2.0 + half)
    assert interval.verdict == "within noise"
    one = t_interval([0.5])
    assert one.mean == 0.5 and np.isnan(one.low) and one.verdict == "n/a"


def test_verdict_needs_the_interval_to_exclude_zero():
    assert verdict(0.01, 0.2) == "better"
    assert verdict(-0.2, -0.01) == "worse"
    assert verdict(-0.01, 0.2) == "within noise"


def test_bootstrap_finds_a_known_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, len(CLASSES), 800)
    strong, weak = _probs(rng, labels, 0.9), _probs(rng, labels, 0.5)
    found = bootstrap_difference(labels, strong, weak, resamples=400, seed=0)
    accuracy = found["accuracy"]
    full_gap = (strong.argmax(1) == labels).mean() - (weak.argmax(1) == labels).mean()
    assert accuracy.mean == pytest.approx(full_gap)
    assert accuracy.low < accuracy.mean < accuracy.high
    assert accuracy.verdict == "better"
    assert bootstrap_difference(labels, weak, strong, resamples=400)["kappa"].verdict == "worse"
    twin = _probs(rng, labels, 0.5)  # another model of the same quality
    null = bootstrap_difference(labels, twin, weak, resamples=400, seed=0)
    assert null["balanced_accuracy"].verdict == "within noise"
    same = bootstrap_difference(labels, weak, weak, resamples=50)["f1_macro"]
    assert (same.low, same.mean, same.high) == (0.0, 0.0, 0.0)


def test_bootstrap_refuses_unpaired_predictions():
    labels = np.zeros(5, dtype=int)
    with pytest.raises(ValueError, match="same images"):
        bootstrap_difference(labels, np.ones((5, 4)) / 4, np.ones((4, 4)) / 4)


def test_paired_differences_pair_runs_by_seed_and_fold():
    frame = pd.DataFrame(
        {
            "method": ["ce"] * 3 + ["crckd"] * 3 + ["mt"] * 2,
            "seed": [0, 1, 2, 2, 0, 1, 0, 1],
            "fold": [None] * 8,
            "balanced_accuracy": [0.5, 0.6, 0.7, 0.8, 0.6, 0.7, 0.4, 0.7],
        }
    )
    table = paired_differences(frame, "ce", metrics=["balanced_accuracy"]).set_index("method")
    assert table.loc["crckd", "mean"] == pytest.approx(0.1)  # +0.1 at every seed
    assert table.loc["crckd", "low"] == pytest.approx(0.1)
    assert table.loc["crckd", "verdict"] == "better"  # no spread: the interval is one point
    assert table.loc["mt", "n"] == 2
    assert table.loc["mt", "mean"] == pytest.approx(0.0)  # -0.1 and +0.1
    assert table.loc["mt", "verdict"] == "within noise"
