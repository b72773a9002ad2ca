"""Classification metrics of the paper's evaluation, computed with scikit-learn.

`classification_metrics` returns a JSON-serialisable dict with exactly these keys (other tools
read it from metrics files):

* ``accuracy``, ``balanced_accuracy`` (sklearn: mean recall over the classes present in the
  labels), ``precision_macro``, ``recall_macro``, ``f1_macro`` (over all C classes: a class absent
  from the labels counts with 0, as in the reference);
* ``auc_macro``: macro one-vs-rest AUC, the mean of ``roc_auc_score(labels == c, probs[:, c])``
  over the classes that have both positives and negatives in the labels (the others get
  ``auc = None`` in ``per_class`` and are left out); None when no class qualifies;
* ``kappa``: Cohen's kappa, unweighted or "linear"/"quadratic" (ordinal grades such as APTOS);
  None when undefined (labels and predictions all one class);
* ``per_class``: class name -> sensitivity, specificity, auc, precision, f1, support;
* ``confusion_matrix`` (rows = true class, columns = predicted, class order), ``classes``,
  ``num_samples``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from crckd.errors import ConfigError

SCALAR_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "auc_macro",
    "kappa",
)
PER_CLASS_METRICS = ("sensitivity", "specificity", "auc", "precision", "f1", "support")
KAPPA_WEIGHTS = (None, "linear", "quadratic")
PROB_PREFIX = "prob_"  # column prefix of the class probabilities in predictions tables


def classification_metrics(
    labels: ArrayLike,
    probs: ArrayLike,
    classes: Sequence[str],
    kappa_weights: str | None = None,
) -> dict[str, Any]:
    """Metrics of predicted class probabilities `probs` [N, C] against integer `labels` [N]."""
    y, probs = _check_inputs(labels, probs, len(classes))
    if kappa_weights not in KAPPA_WEIGHTS:
        raise ConfigError(f"kappa weights {kappa_weights!r} is not one of {KAPPA_WEIGHTS}")
    class_ids = list(range(len(classes)))
    pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=class_ids, zero_division=0
    )
    aucs = [_one_vs_rest_auc(y == c, probs[:, c]) for c in class_ids]
    valid_aucs = [a for a in aucs if a is not None]
    per_class = {
        name: {
            "sensitivity": float(recall[c]),
            "specificity": spec,
            "auc": aucs[c],
            "precision": float(precision[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c, (name, spec) in enumerate(
            zip(classes, _specificities(y, pred, class_ids), strict=True)
        )
    }
    # sklearn warns when a predicted class is absent from the labels (balanced accuracy) and when
    # kappa is undefined; both cases are documented above.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        balanced = float(balanced_accuracy_score(y, pred))
        kappa = cohen_kappa_score(y, pred, labels=class_ids, weights=kappa_weights)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": balanced,
        "precision_macro": float(np.mean(precision)),
        "recall_macro": float(np.mean(recall)),
        "f1_macro": float(np.mean(f1)),
        "auc_macro": float(np.mean(valid_aucs)) if valid_aucs else None,
        "kappa": _finite_or_none(kappa),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y, pred, labels=class_ids).tolist(),
        "classes": [str(c) for c in classes],
        "num_samples": len(y),
    }


def resolve_kappa_weights(setting: str | None, ordinal: bool) -> str | None:
    """The kappa weighting for a setting: "auto" is quadratic for ordinal grades (APTOS) and
    unweighted otherwise; "none" is unweighted."""
    if setting == "auto":
        return "quadratic" if ordinal else None
    return None if setting == "none" else setting


def _check_inputs(labels: ArrayLike, probs: ArrayLike, num_classes: int):
    y = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ValueError(f"probs must be [N, {num_classes}], got shape {probs.shape}")
    if y.shape != (probs.shape[0],):
        raise ValueError(f"labels must be [N={probs.shape[0]}], got shape {y.shape}")
    if len(y) == 0:
        raise ValueError("no samples to score")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must be integers in [0, {num_classes})")
    return y, probs


def _one_vs_rest_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """AUC of one class against the rest; None when the labels lack positives or negatives."""
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, scores))


def _specificities(y: np.ndarray, pred: np.ndarray, class_ids: list[int]) -> list[float]:
    """TN / (TN + FP) per class, 0 when a class has no negatives."""
    matrices = multilabel_confusion_matrix(y, pred, labels=class_ids)
    return [float(tn / (tn + fp)) if tn + fp else 0.0 for (tn, fp), _ in matrices]


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


class ClassificationMetric:
    """Accumulates (probs, labels) batch by batch; `aggregate` scores everything seen."""

    def __init__(self, classes: Sequence[str], kappa_weights: str | None = None) -> None:
        self.classes = list(classes)
        self.kappa_weights = kappa_weights
        self.reset()

    def update(self, probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        """Add one batch: probabilities [B, C] and integer labels [B]."""
        self._probs.append(_to_numpy(probs))
        self._labels.append(_to_numpy(labels))

    @property
    def probs(self) -> np.ndarray:
        """All accumulated probabilities, [N, C]."""
        if not self._probs:
            return np.zeros((0, len(self.classes)))
        return np.concatenate(self._probs)

    @property
    def labels(self) -> np.ndarray:
        """All accumulated labels, [N]."""
        return np.concatenate(self._labels) if self._labels else np.zeros(0, dtype=np.int64)

    def aggregate(self) -> dict[str, Any]:
        return classification_metrics(self.labels, self.probs, self.classes, self.kappa_weights)

    def reset(self) -> None:
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []


def _to_numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def per_class_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """One row per class: class, sensitivity, specificity, auc (NaN if undefined), ..., support."""
    rows = [{"class": name, **values} for name, values in metrics["per_class"].items()]
    table = pd.DataFrame(rows, columns=["class", *PER_CLASS_METRICS])
    return table.astype({"auc": float})


def predictions_table(
    image_ids: Sequence[str], labels: ArrayLike, probs: ArrayLike, classes: Sequence[str]
) -> pd.DataFrame:
    """One row per image: image_id, label, label_name, predicted (the top class), predicted_name
    and prob_<class> per class, the probabilities the metrics were computed from."""
    y, probs = _check_inputs(labels, probs, len(classes))
    if len(image_ids) != len(y):
        raise ValueError(f"{len(image_ids)} image ids for {len(y)} predictions")
    names = np.asarray(classes, dtype=object)
    pred = probs.argmax(axis=1)
    table = pd.DataFrame(
        {
            "image_id": list(image_ids),
            "label": y,
            "label_name": names[y],
            "predicted": pred,
            "predicted_name": names[pred],
        }
    )
    probs_frame = pd.DataFrame(probs, columns=[f"{PROB_PREFIX}{c}" for c in classes])
    return pd.concat([table, probs_frame], axis=1)


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """Overall metrics, then the per-class table, as fixed-width text for the terminal."""
    width = max(map(len, SCALAR_METRICS))
    lines = [f"{'samples':<{width}}  {metrics['num_samples']}"]
    for key in SCALAR_METRICS:
        value = metrics[key]
        lines.append(f"{key:<{width}}  {'n/a' if value is None else f'{value:.4f}'}")
    table = per_class_table(metrics).to_string(
        index=False, float_format=lambda v: f"{v:.4f}", na_rep="n/a"
    )
    return "\n".join([*lines, "", table])
