"""The feature space of a run: t-SNE of student and teacher features, and the numbers behind
CRCKD's claim (compact classes, separated class centroids).

`embed_run` uses `checkpoints/last.pt` for both models: the mean teacher exists only there
(`state["method"]`, keys prefixed ``teacher.``), and taking the student from the same file
compares the two at the same training step. Features are the classifier's bottleneck output
(`ClassifierOutput.features`, `model.feat_dim` wide) on the run's test split.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.manifold import TSNE

from crckd.engine.checkpoint import load_checkpoint
from crckd.engine.inference import load_student, resolve_device, run_model
from crckd.engine.run_folder import RunFolder, atomic_write_text
from crckd.errors import CheckpointError
from crckd.models import Classifier
from crckd.tools.plots import new_figure
from crckd.tools.report import run_labels, run_test_loader

TEACHER_PREFIX = "teacher."


# --- the numbers ---------------------------------------------------------------------------


def unit_features(features: ArrayLike) -> np.ndarray:
    """Features centred on their mean over the split, then scaled to unit length.

    Centring removes the offset all bottleneck features share (it makes every raw cosine close
    to 1 and tells nothing about classes); what is left is how the samples differ.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def intra_class_cosine(features: ArrayLike, labels: ArrayLike) -> dict[int, float]:
    """Per class: mean cosine similarity over all pairs of distinct samples of that class,
    on `unit_features`. Classes with fewer than two samples have no pair and are left out."""
    unit, y = unit_features(features), np.asarray(labels)
    result = {}
    for c in np.unique(y):
        rows = unit[y == c]
        n = len(rows)
        if n >= 2:
            similarity = rows @ rows.T
            result[int(c)] = float((similarity.sum() - np.trace(similarity)) / (n * (n - 1)))
    return result


def centroid_distance(features: ArrayLike, labels: ArrayLike) -> float | None:
    """Mean Euclidean distance between the class means of `unit_features`, over all pairs of
    classes present; None with fewer than two classes."""
    unit, y = unit_features(features), np.asarray(labels)
    centroids = np.stack([unit[y == c].mean(axis=0) for c in np.unique(y)])
    if len(centroids) < 2:
        return None
    upper = np.triu_indices(len(centroids), k=1)
    distances = np.linalg.norm(centroids[:, None, :] - centroids[None, :, :], axis=2)
    return float(distances[upper].mean())


def feature_statistics(
    features: ArrayLike, labels: ArrayLike, classes: Sequence[str]
) -> dict[str, Any]:
    """The embed.json entry of one model: both numbers, and the cosine per class name."""
    per_class = intra_class_cosine(features, labels)
    return {
        "intra_class_cosine": float(np.mean(list(per_class.values()))) if per_class else None,
        "intra_class_cosine_per_class": {classes[c]: v for c, v in per_class.items()},
        "centroid_distance": centroid_distance(features, labels),
    }


# --- models and features -------------------------------------------------------------------


def load_teacher(checkpoint: str | Path, student: Classifier) -> Classifier | None:
    """The mean teacher stored in a last.pt, built like `student`; None if the method has none."""
    state = load_checkpoint(checkpoint)
    weights = {
        key.removeprefix(TEACHER_PREFIX): value
        for key, value in state.get("method", {}).items()
        if key.startswith(TEACHER_PREFIX)
    }
    if not weights:
        return None
    teacher = copy.deepcopy(student)
    try:
        teacher.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{checkpoint}: teacher weights do not fit the model ({exc})"
        ) from None
    return teacher.eval()


# --- the run -------------------------------------------------------------------------------


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D t-SNE (PCA init, perplexity min(30, (N - 1) / 3)) of the features."""
    perplexity = min(30.0, max(1.0, (len(features) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(features)


def plot_tsne(
    panels: Sequence[tuple[str, np.ndarray]],
    labels: np.ndarray,
    classes: Sequence[str],
    path: Path,
    title: str = "",
) -> None:
    """Side-by-side scatter plots of 2-D points coloured by class, one panel per model."""
    fig, axes = new_figure(5.5 * len(panels) + 1.5, 5, 1, len(panels))
    axes = axes[0]
    colours = [f"C{c % 10}" for c in range(len(classes))]
    for ax, (heading, points) in zip(axes, panels, strict=True):
        for c, name in enumerate(classes):
            inside = labels == c
            if inside.any():
                ax.scatter(*points[inside].T, s=12, color=colours[c], label=name)
        ax.set(title=heading, xticks=[], yticks=[])
    axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.suptitle(title)
    fig.savefig(path, dpi=100)


def embed_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    data_root: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """t-SNE (`tsne.png`) and feature statistics (`embed.json`) of a run's student and teacher
    on its test split, written to `out_dir` (default `RUN_DIR/embed`); returns embed.json."""
    run = RunFolder(Path(run_dir))
    out = Path(out_dir) if out_dir is not None else run.root / "embed"
    torch_device = resolve_device(device)
    student = load_student(run.last_checkpoint, torch_device)
    teacher = load_teacher(run.last_checkpoint, student.model)
    loader = run_test_loader(student, run, data_root=data_root, batch_size=batch_size)
    result: dict[str, Any] = {
        "run": str(run.root.resolve()),
        "method": student.config["method"]["name"],
        "checkpoint": str(run.last_checkpoint),
        "split": "test",
        "classes": list(student.classes),
    }
    panels = []
    for name, model in (("student", student.model), ("teacher", teacher)):
        if model is not None:
            outputs = run_model(
                model, loader, torch_device, desc=f"{name} features", progress=progress
            )
            features, labels = outputs.features, outputs.labels
            result[name] = feature_statistics(features, labels, student.classes)
            panels.append((name, tsne_2d(features, seed)))
    result["num_samples"] = len(labels)
    if teacher is None:
        result["teacher"] = None
        result["teacher_note"] = f"method {result['method']!r} has no teacher"
        panels[0] = (f"student only: {result['teacher_note']}", panels[0][1])
    out.mkdir(parents=True, exist_ok=True)
    title = f"{run.root.resolve().name} ({result['method']}): t-SNE of the test features"
    plot_tsne(panels, labels, student.classes, out / "tsne.png", title)
    result["tsne"] = "tsne.png"
    atomic_write_text(out / "embed.json", json.dumps(result, indent=2) + "\n")
    return result


def embed_table(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per run and model: method, intra-class cosine, centroid distance."""
    labels = run_labels([r["run"] for r in results])
    rows = [
        {
            "run": label,
            "method": r["method"],
            "model": name,
            "intra_class_cosine": r[name]["intra_class_cosine"],
            "centroid_distance": r[name]["centroid_distance"],
        }
        for r, label in zip(results, labels, strict=True)
        for name in ("student", "teacher")
        if r[name] is not None
    ]
    return pd.DataFrame(rows)
