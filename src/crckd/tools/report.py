"""An HTML report of one or several run folders: curves, confusion matrix, ROC, calibration.

`write_report` reads run folders (docs/run-folder.md), takes the test probabilities the plots
need from each run's `test_predictions.csv` (or runs its selected student, `checkpoints/best.pt`,
on its test split, for a run made before that file existed), and writes `index.html` with the
PNGs it shows beside it. The page loads nothing else: no script, no stylesheet, no network.
Figures are drawn with matplotlib's Agg canvas (no display needed).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike
from sklearn.metrics import auc, roc_curve
from torch.utils.data import DataLoader

from crckd import __version__
from crckd.data import load_split, load_table, split_indices
from crckd.engine.inference import (
    LoadedStudent,
    load_student,
    predict_probs,
    resolve_device,
    table_loader,
)
from crckd.engine.metrics import PROB_PREFIX, SCALAR_METRICS, per_class_table
from crckd.engine.run_folder import RunFolder, atomic_write_text
from crckd.errors import CheckpointError, ConfigError, DataError, RunFolderError
from crckd.tools.compare import (
    Differences,
    difference_table,
    differences_in_words,
    read_predictions,
)
from crckd.tools.plots import new_figure

ECE_BINS = 15
_OWN_PNG = re.compile(r"^(run\d+|compare)-[\w.-]+\.png$")


@dataclass(frozen=True)
class RunData:
    """What the report shows of one run; `probs`/`labels` are None when `note` says why."""

    label: str
    run: RunFolder
    epochs: pd.DataFrame
    metrics: dict[str, Any]
    probs: np.ndarray | None
    labels: np.ndarray | None
    note: str | None


@dataclass(frozen=True)
class ReportResult:
    """The written page and any sections left out (e.g. the test images were not found)."""

    index: Path
    notes: list[str]


# --- calibration ---------------------------------------------------------------------------


def reliability_bins(probs: ArrayLike, labels: ArrayLike, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Top-1 confidence in `n_bins` equal-width bins (lower, upper] of [0, 1].

    One row per bin: lower, upper, count, confidence (mean top-1 probability), accuracy
    (fraction whose top-1 class is the label); confidence and accuracy are NaN in empty bins.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        inside = index == b
        count = int(inside.sum())
        rows.append(
            {
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "count": count,
                "confidence": confidence[inside].mean() if count else np.nan,
                "accuracy": correct[inside].mean() if count else np.nan,
            }
        )
    return pd.DataFrame(rows)


def expected_calibration_error(
    probs: ArrayLike, labels: ArrayLike, n_bins: int = ECE_BINS
) -> float:
    """ECE = sum over bins of (n_b / N) * |accuracy_b - confidence_b| (Guo et al., 2017)."""
    bins = reliability_bins(probs, labels, n_bins).query("count > 0")
    weights = bins["count"] / bins["count"].sum()
    return float((weights * (bins["accuracy"] - bins["confidence"]).abs()).sum())


# --- reading runs --------------------------------------------------------------------------


def run_test_loader(
    student: LoadedStudent,
    run: RunFolder,
    *,
    data_root: str | Path | None = None,
    batch_size: int = 64,
) -> DataLoader:
    """A loader over the test split of a run (its config's dataset, its split.csv), in order.

    `data_root` replaces the dataset folder recorded in the run's config (a run moved from
    another machine).
    """
    data = student.config["data"]
    root = data_root or data["root"]
    if root is None:
        raise DataError(f"{run.config}: data.root is not set; pass the dataset folder")
    table = load_table(data["dataset"], root, csv=data.get("csv"), classes=student.classes)
    if not run.split.exists():
        raise DataError(f"{run.split} does not exist: not a complete run folder")
    positions = split_indices(load_split(run.split, table), table, "test")
    return table_loader(table, positions, student, batch_size)


def load_run(
    run_dir: str | Path,
    label: str,
    *,
    data_root: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
) -> RunData:
    """Read a finished run and its best student's test probabilities: those of its
    `test_predictions.csv`, or, for a run made before crckd wrote that file, those of running
    `checkpoints/best.pt` on its test images.

    Missing test images or best.pt do not stop the report: the run keeps its curves, confusion
    matrix and table, and `note` says why ROC and calibration are left out.
    """
    run = RunFolder(Path(run_dir))
    for path in (run.epochs, run.metrics):
        if not path.is_file():
            raise RunFolderError(f"{path} does not exist: {run.root} is not a finished run")
    epochs = pd.read_csv(run.epochs)
    metrics = json.loads(run.metrics.read_text(encoding="utf-8"))
    if run.test_predictions.is_file():
        probs, labels = saved_test_probs(run.test_predictions, metrics["classes"])
        return RunData(label, run, epochs, metrics, probs, labels, None)
    torch_device = resolve_device(device)
    try:
        student = load_student(run.best_checkpoint, torch_device)
        loader = run_test_loader(student, run, data_root=data_root, batch_size=batch_size)
    except (CheckpointError, DataError) as exc:
        note = f"{label}: ROC and calibration left out ({exc})"
        return RunData(label, run, epochs, metrics, None, None, note)
    probs, labels = predict_probs(
        student.model, loader, torch_device, desc=f"report {label}", progress=progress
    )
    return RunData(label, run, epochs, metrics, probs, labels, None)


def saved_test_probs(path: Path, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The class probabilities (in the order of `classes`) and labels a run's
    `test_predictions.csv` holds."""
    table = read_predictions(path)
    columns = [f"{PROB_PREFIX}{name}" for name in classes]
    missing = [c for c in columns if c not in table]
    if missing:
        raise RunFolderError(f"{path} lacks the columns {missing} of the run's classes")
    return table[columns].to_numpy(np.float64), table["label"].to_numpy()


# --- figures -------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=100)
    return path.name


def _columns(epochs: pd.DataFrame, prefix: str, skip: Sequence[str] = ()) -> list[str]:
    return [
        c
        for c in epochs.columns
        if c.startswith(prefix) and c not in skip and epochs[c].notna().any()
    ]


def _epoch_axis(ax: Axes, epochs: int) -> None:
    """Epochs 1..`epochs` on the x axis, integer ticks only (one epoch gets one tick)."""
    ax.set(xlabel="epoch", xlim=(0.5, epochs + 0.5))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)


def _one_based(epoch: int | None) -> int | None:
    """metrics.json counts epochs from 0; the page counts them from 1, as the plots do."""
    return None if epoch is None else epoch + 1


def plot_losses(epochs: pd.DataFrame, path: Path) -> str:
    """Every loss term per epoch (unweighted, and the weighted total), and each term's weight."""
    fig, axes = new_figure(11, 3.8, 1, 2)
    ax_loss, ax_weight = axes[0]
    x = epochs["epoch"] + 1
    for column in _columns(epochs, "train_", skip=("train_seconds",)):
        name = column.removeprefix("train_")
        label = "total (weighted)" if name == "loss" else name
        ax_loss.plot(x, epochs[column], marker="o", label=label)
    for column in _columns(epochs, "weight_"):
        ax_weight.plot(x, epochs[column], marker="o", label=column.removeprefix("weight_"))
    ax_loss.set(title="training loss terms", ylabel="loss")
    ax_weight.set(title="loss weights", ylabel="weight")
    for ax in axes[0]:
        ax.legend(fontsize=8)
        _epoch_axis(ax, int(x.max()))
    return _save(fig, path)


def plot_validation(runs: Sequence[RunData], path: Path) -> str:
    """One panel per validation metric, one line per run."""
    names = [m for m in SCALAR_METRICS if any(f"val_{m}" in r.epochs for r in runs)]
    ncols = min(4, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = new_figure(3.2 * ncols, 2.8 * nrows, nrows, ncols)
    for ax, name in zip(axes.flat, names, strict=False):
        for run in runs:
            if f"val_{name}" in run.epochs:
                ax.plot(
                    run.epochs["epoch"] + 1, run.epochs[f"val_{name}"], marker="o", label=run.label
                )
        ax.set(title=f"val {name}")
        _epoch_axis(ax, max(int(r.epochs["epoch"].max()) + 1 for r in runs))
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    return _save(fig, path)


def plot_confusion(matrix: ArrayLike, classes: Sequence[str], path: Path) -> str:
    """The confusion matrix as counts and row-normalised (recall on the diagonal)."""
    counts = np.asarray(matrix, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    size = 2.2 + 0.55 * len(classes)
    fig, axes = new_figure(2 * size, size, 1, 2)
    for ax, values, title, fmt in (
        (axes[0][0], counts, "counts", "{:d}"),
        (axes[0][1], rates, "row-normalised", "{:.2f}"),
    ):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, shrink=0.8)
        threshold = values.max() / 2 if values.max() > 0 else 1
        for (i, j), value in np.ndenumerate(values):
            colour = "white" if value > threshold else "black"
            ax.text(j, i, fmt.format(value), ha="center", va="center", color=colour, fontsize=8)
        ticks = np.arange(len(classes))
        ax.set_xticks(ticks, classes, rotation=45, ha="right")
        ax.set_yticks(ticks, classes)
        ax.set(title=title, xlabel="predicted", ylabel="true")
    return _save(fig, path)


def plot_roc(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], path: Path) -> str:
    """One-vs-rest ROC curve per class (classes absent from, or alone in, the labels skipped)."""
    fig, axes = new_figure(5.5, 5)
    ax = axes[0][0]
    for c, name in enumerate(classes):
        positive = labels == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.set(title="one-vs-rest ROC", xlabel="false positive rate", ylabel="true positive rate")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_reliability(bins: pd.DataFrame, ece: float, path: Path) -> str:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), and counts."""
    fig, axes = new_figure(5.5, 6, 2, 1, sharex=True, height_ratios=[3, 1])
    top, bottom = axes[:, 0]
    width = bins["upper"] - bins["lower"]
    top.bar(
        bins["lower"],
        bins["accuracy"].fillna(0),
        width=width,
        align="edge",
        edgecolor="black",
        label="accuracy",
    )
    top.bar(
        bins["lower"],
        (bins["confidence"] - bins["accuracy"]).fillna(0),
        bottom=bins["accuracy"].fillna(0),
        width=width,
        align="edge",
        color="tab:red",
        alpha=0.3,
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    top.set(
        title=f"reliability: ECE = {ece:.4f} ({len(bins)} bins)",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(bins["lower"], bins["count"], width=width, align="edge", edgecolor="black")
    bottom.set(xlabel="top-1 confidence", ylabel="images")
    return _save(fig, path)


# --- the page ------------------------------------------------------------------------------


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1em 0; }
.note { background: #fff4d6; padding: 0.5em; }
code { background: #f2f2f2; }
"""


def _figure_html(name: str, caption: str) -> str:
    src, text = html.escape(name), html.escape(caption)
    return f'<figure><img src="{src}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def _summary_table(runs: Sequence[RunData], eces: dict[str, float | None]) -> str:
    """Rows: the scalar test metrics of each metrics.json, ECE and run facts; one column a run."""
    rows: dict[str, list[Any]] = {
        "method": [r.metrics.get("method", "") for r in runs],
        "selected epoch": [_one_based(r.metrics.get("selected_epoch")) for r in runs],
        "test images": [r.metrics["num_samples"] for r in runs],
    }
    for key in SCALAR_METRICS:
        rows[key] = [r.metrics.get(key) for r in runs]
    rows["ECE (top-1, 15 bins)"] = [eces[r.label] for r in runs]
    if any("last_epochs_mean" in r.metrics for r in runs):
        rows["last test epochs averaged"] = [r.metrics.get("last_epochs") for r in runs]
        for key in SCALAR_METRICS:
            rows[f"{key}, mean of last epochs"] = [
                r.metrics.get("last_epochs_mean", {}).get(key) for r in runs
            ]
    table = pd.DataFrame(rows, index=[r.label for r in runs]).T
    return table.to_html(float_format=lambda v: f"{v:.4f}", na_rep="n/a")


def _differences_section(diff: Differences) -> str:
    """The differences to the reference method (`crckd compare`): tables and findings."""
    parts = [
        f"<h2>differences to {html.escape(diff.reference)} (95 % intervals)</h2>",
        "<p>Method minus reference. <em>better</em> or <em>worse</em> only where the interval "
        "excludes 0; otherwise the difference is within noise.</p>",
        "<h3>over runs paired by seed and fold (t interval)</h3>",
        difference_table(diff.paired, ["method"]).to_html(na_rep="n/a"),
        "<h3>the same for the mean of the last test epochs (the paper's reporting rule)</h3>",
        difference_table(diff.paired_last, ["method"]).to_html(na_rep="n/a"),
    ]
    if len(diff.bootstrap):
        parts += [
            "<h3>per run, over its test images (paired bootstrap)</h3>",
            difference_table(diff.bootstrap, ["method", "run"]).to_html(na_rep="n/a"),
        ]
    lines = differences_in_words(diff) + [f"note: {note}" for note in diff.notes]
    parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
    return "\n".join(parts)


def _run_section(index: int, run: RunData, out_dir: Path, ece: float | None) -> str:
    prefix = f"run{index}-"
    metrics = run.metrics
    classes = metrics["classes"]
    parts = [
        f"<h2>{html.escape(run.label)}</h2>",
        f"<p>run folder <code>{html.escape(str(run.run.root.resolve()))}</code></p>",
        _figure_html(
            plot_losses(run.epochs, out_dir / f"{prefix}losses.png"),
            "training loss terms (unweighted; total is weighted) and their weights",
        ),
        _figure_html(
            plot_validation([run], out_dir / f"{prefix}validation.png"),
            "validation metrics per epoch",
        ),
        _figure_html(
            plot_confusion(
                metrics["confusion_matrix"], classes, out_dir / f"{prefix}confusion.png"
            ),
            "test confusion matrix of the selected model (rows: true class)",
        ),
    ]
    if run.probs is None:
        parts.append(f'<p class="note">{html.escape(run.note or "")}</p>')
    else:
        bins = reliability_bins(run.probs, run.labels)
        parts += [
            _figure_html(
                plot_roc(run.probs, run.labels, classes, out_dir / f"{prefix}roc.png"),
                "one-vs-rest ROC curves on the test split",
            ),
            _figure_html(
                plot_reliability(bins, ece, out_dir / f"{prefix}reliability.png"),
                "reliability diagram of the top-1 confidence on the test split",
            ),
        ]
    table = per_class_table(metrics).to_html(
        index=False, float_format=lambda v: f"{v:.4f}", na_rep="n/a"
    )
    parts += ["<h3>per class (test)</h3>", table]
    return "\n".join(parts)


def _clear_old_figures(out_dir: Path) -> None:
    """Remove PNGs an earlier report wrote here, so the folder holds only what the page shows."""
    for path in out_dir.glob("*.png"):
        if _OWN_PNG.match(path.name):
            path.unlink()


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Short names that tell runs apart: the folder names, or as many trailing parts of the
    paths as needed (`ce/seed0`, `crckd/seed0`); the same folder twice gets its position."""
    parts = [Path(p).resolve().parts for p in run_dirs]
    for depth in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(path[-depth:]) for path in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i}:{Path(p).resolve().name}" for i, p in enumerate(run_dirs)]


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    data_root: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
    differences: Differences | None = None,
) -> ReportResult:
    """Write `out_dir/index.html` and its PNGs for one run, or compare several side by side.

    `out_dir` defaults to `RUN_DIR/report` for one run and must be given for several. With
    several runs the page starts with their metrics.json side by side (then `differences`, the
    intervals `crckd compare` found) and their validation curves overlaid, then shows each run
    in full.
    """
    if not run_dirs:
        raise ConfigError("report: no run folder given")
    paths = [Path(p) for p in run_dirs]
    if out_dir is None:
        if len(paths) > 1:
            raise ConfigError("report: several runs need an output folder (--out)")
        out_dir = paths[0] / "report"
    out = Path(out_dir)
    runs = [
        load_run(
            p, label, data_root=data_root, batch_size=batch_size, device=device, progress=progress
        )
        for p, label in zip(paths, run_labels(paths), strict=True)
    ]
    out.mkdir(parents=True, exist_ok=True)
    _clear_old_figures(out)
    eces = {
        r.label: None if r.probs is None else expected_calibration_error(r.probs, r.labels)
        for r in runs
    }
    title = "crckd report: " + ", ".join(r.label for r in runs)
    body = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>test metrics (metrics.json)</h2>",
        _summary_table(runs, eces),
    ]
    if differences is not None:
        body.append(_differences_section(differences))
    if len(runs) > 1:
        body.append(
            _figure_html(
                plot_validation(runs, out / "compare-validation.png"),
                "validation metrics per epoch, all runs",
            )
        )
    body += [_run_section(i, r, out, eces[r.label]) for i, r in enumerate(runs)]
    body.append(f"<p><small>written by crckd {__version__}</small></p>")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    index = out / "index.html"
    atomic_write_text(index, page)
    return ReportResult(index, [r.note for r in runs if r.note])
