"""Confidence intervals for comparing methods: is a difference a finding or noise?

Two views of "method A against the reference R", both 95 % intervals of the difference A - R:

* **over runs** (`paired_differences`): runs are paired by seed and fold (the same split and
  seed for both methods); the interval is Student's t interval of the mean paired difference.
  It answers "would another seed give the same sign?" and needs at least 2 pairs.
* **over test images** (`bootstrap_difference`): one run of each method, scored on the same
  resampled test images (a paired percentile bootstrap). It answers "would another test set of
  this size give the same sign?" for that one pair of runs.

A difference counts as better or worse only when its interval excludes 0 (`verdict`).
The metrics are those of `crckd.engine.metrics.classification_metrics`, recomputed here from
confusion matrices and ranks for thousands of resamples at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from crckd.engine.metrics import SCALAR_METRICS

CONFIDENCE = 0.95
INTERVAL_FIELDS = ("n", "mean", "low", "high", "verdict")  # the columns of an interval in tables


@dataclass(frozen=True)
class Interval:
    """A mean difference and its confidence interval (NaN bounds when undefined)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)

    def as_row(self) -> dict[str, object]:
        """The `INTERVAL_FIELDS` of a table row."""
        return {field: getattr(self, field) for field in INTERVAL_FIELDS}


def verdict(low: float, high: float) -> str:
    """'better' or 'worse' when the interval excludes 0, else 'within noise' (or 'n/a')."""
    if np.isnan(low) or np.isnan(high):
        return "n/a"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "within noise"


def t_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Student's t interval of the mean of paired differences (NaN bounds for fewer than 2)."""
    values = np.asarray([d for d in differences if d is not None and not np.isnan(d)], float)
    n = len(values)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(values.mean())
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n)
    half = stats.t.ppf(0.5 + confidence / 2, df=n - 1) * values.std(ddof=1) / np.sqrt(n)
    return Interval(mean, float(mean - half), float(mean + half), n)


def paired_differences(
    frame: pd.DataFrame,
    reference: str,
    metrics: Sequence[str] = SCALAR_METRICS,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Per method and metric, the mean difference to `reference` over runs paired by seed and
    fold, with its t interval and verdict. `frame` has one row per run (`method`, `seed`,
    `fold` and the metric columns), as `crckd compare` collects them."""
    keys = ["seed", "fold"]
    runs = frame.assign(fold=frame["fold"].astype(object).where(frame["fold"].notna(), -1))
    ref = runs[runs["method"] == reference].set_index(keys)
    rows = []
    for method in dict.fromkeys(runs["method"]):
        if method == reference:
            continue
        own = runs[runs["method"] == method].set_index(keys)
        common = own.index.intersection(ref.index)
        for metric in metrics:
            diffs = (
                pd.to_numeric(own.loc[common, metric]) - pd.to_numeric(ref.loc[common, metric])
            ).to_numpy(float)
            interval = t_interval(diffs, confidence)
            rows.append({"method": method, "metric": metric, **interval.as_row()})
    return pd.DataFrame(rows, columns=["method", "metric", *INTERVAL_FIELDS])


def bootstrap_difference(
    labels: np.ndarray,
    probs: np.ndarray,
    reference_probs: np.ndarray,
    *,
    kappa_weights: str | None = None,
    metrics: Sequence[str] = SCALAR_METRICS,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Interval]:
    """Paired percentile bootstrap of `metric(probs) - metric(reference_probs)` on the same test
    images: each resample draws N images with replacement and scores both models on them.
    `mean` is the difference on the full test set."""
    labels = np.asarray(labels)
    if probs.shape != reference_probs.shape or len(labels) != len(probs):
        raise ValueError("both models must be scored on the same images, in the same order")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(labels), size=(resamples, len(labels)))
    full = np.arange(len(labels))[None, :]
    ours, ref = (
        resampled_metrics(labels, p, draws, kappa_weights) for p in (probs, reference_probs)
    )
    ours_full, ref_full = (
        resampled_metrics(labels, p, full, kappa_weights) for p in (probs, reference_probs)
    )
    tail = (1 - confidence) / 2
    intervals = {}
    for metric in metrics:
        diff = ours[metric] - ref[metric]
        diff = diff[~np.isnan(diff)]
        low, high = np.quantile(diff, [tail, 1 - tail]) if len(diff) else (np.nan, np.nan)
        mean = float(ours_full[metric][0] - ref_full[metric][0])
        intervals[metric] = Interval(mean, float(low), float(high), len(labels))
    return intervals


def resampled_metrics(
    labels: np.ndarray, probs: np.ndarray, draws: np.ndarray, kappa_weights: str | None = None
) -> dict[str, np.ndarray]:
    """The scalar metrics of `classification_metrics` for each row of `draws` ([R, N] image
    positions), vectorised over the R resamples; NaN where a metric is undefined."""
    num_classes = probs.shape[1]
    y, pred = labels[draws], probs.argmax(axis=1)[draws]
    cm = _confusion_matrices(y, pred, num_classes)
    support, predicted, hits = cm.sum(axis=2), cm.sum(axis=1), np.diagonal(cm, axis1=1, axis2=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, hits / support, 0.0)
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        present = support > 0
        balanced = (recall * present).sum(axis=1) / present.sum(axis=1)
    return {
        "accuracy": hits.sum(axis=1) / y.shape[1],
        "balanced_accuracy": balanced,
        "precision_macro": precision.mean(axis=1),
        "recall_macro": recall.mean(axis=1),
        "f1_macro": f1.mean(axis=1),
        "auc_macro": _macro_auc(y, probs, draws),
        "kappa": _kappa(cm, kappa_weights),
    }


def _confusion_matrices(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    rows = np.arange(y.shape[0])[:, None] * num_classes * num_classes
    flat = np.bincount((rows + y * num_classes + pred).ravel(), minlength=len(y) * num_classes**2)
    return flat.reshape(len(y), num_classes, num_classes).astype(float)


def _macro_auc(y: np.ndarray, probs: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Mean one-vs-rest AUC over the classes with positives and negatives in each resample
    (Mann-Whitney U from average ranks, as roc_auc_score computes it)."""
    aucs = []
    for c in range(probs.shape[1]):
        scores = probs[:, c][draws]
        ranks = stats.rankdata(scores, axis=1)
        positive = y == c
        n_pos = positive.sum(axis=1)
        n_neg = y.shape[1] - n_pos
        with np.errstate(divide="ignore", invalid="ignore"):
            u = (ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2
            aucs.append(np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan))
    stacked = np.stack(aucs, axis=1)
    valid = ~np.isnan(stacked)
    with np.errstate(invalid="ignore"):
        return np.where(valid.any(axis=1), np.nansum(stacked, axis=1) / valid.sum(axis=1), np.nan)


def _kappa(cm: np.ndarray, weights: str | None) -> np.ndarray:
    """Cohen's kappa of each confusion matrix, as sklearn's cohen_kappa_score; NaN if undefined."""
    num_classes = cm.shape[1]
    grid = np.abs(np.arange(num_classes)[:, None] - np.arange(num_classes)[None, :]).astype(float)
    if weights is None:
        w = (grid > 0).astype(float)
    elif weights == "linear":
        w = grid
    else:
        w = grid**2
    total = cm.sum(axis=(1, 2), keepdims=True)
    expected = cm.sum(axis=2, keepdims=True) * cm.sum(axis=1, keepdims=True) / total
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = 1 - (w * cm).sum(axis=(1, 2)) / (w * expected).sum(axis=(1, 2))
    return np.where(np.isfinite(kappa), kappa, np.nan)
