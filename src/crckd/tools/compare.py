"""`crckd compare`: methods x seeds (x folds) from one config, and the table a paper needs.

Each run gets its own folder `OUT/<method>/seed<s>[-fold<k>]`. A run whose `metrics.json`
exists is skipped, one that started (its `config.yaml` exists) is resumed from its last
checkpoint, so a comparison killed at any moment is continued by running the same command
again. The comparison holds the lock of OUT (`RunLock`) and each run the lock of its folder.

Besides the means, every method is compared with a reference method (`ce` by default) by 95 %
intervals of the difference (`crckd.tools.stats`): over the runs paired by seed and fold (of
the selected models, and of the means of the last test epochs, the paper's reporting rule), and
for each run over its test images (a paired bootstrap of its `test_predictions.csv` against the
reference run's). A difference is called better or worse only when its interval excludes 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from crckd.config import config_to_dict, deep_merge, read_yaml
from crckd.data.datasets import LAYOUTS
from crckd.engine.lock import RunLock
from crckd.engine.metrics import PROB_PREFIX, SCALAR_METRICS, resolve_kappa_weights
from crckd.engine.resume import training_changes
from crckd.engine.run_folder import RunFolder, atomic_write_text
from crckd.engine.trainer import train
from crckd.errors import ConfigError, RunFolderError
from crckd.methods import build_config
from crckd.tools.plots import new_figure
from crckd.tools.stats import (
    INTERVAL_FIELDS,
    Interval,
    bootstrap_difference,
    paired_differences,
)

CHART_METRICS = ("balanced_accuracy", "f1_macro", "auc_macro", "kappa")
DEFAULT_REFERENCE = "ce"
RESAMPLES = 1000  # bootstrap resamples of the test images


@dataclass(frozen=True)
class PlannedRun:
    """One cell of the comparison grid."""

    method: str
    seed: int
    fold: int | None

    @property
    def name(self) -> str:
        return f"seed{self.seed}" + (f"-fold{self.fold}" if self.fold is not None else "")


def plan_runs(
    methods: Sequence[str], seeds: Sequence[int], folds: Sequence[int] | None = None
) -> list[PlannedRun]:
    """Every (method, seed, fold), method-major so that each method's runs finish together."""
    fold_list: list[int | None] = list(folds) if folds else [None]
    return [PlannedRun(m, s, f) for m in methods for s in seeds for f in fold_list]


def run_comparison(
    base: dict[str, Any],
    methods: Sequence[str],
    seeds: Sequence[int],
    out_dir: Path,
    *,
    folds: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Train every planned run not yet finished (resuming any that started), holding the lock
    of `out_dir`, then write and return the per-run table."""
    plan = plan_runs(methods, seeds, folds)
    configs = [build_config(_run_raw(base, run, out_dir), source=run.name) for run in plan]
    with RunLock(out_dir):
        for index, (run, config) in enumerate(zip(plan, configs, strict=True), start=1):
            folder = RunFolder(Path(config.output_dir))
            if folder.holds_run():  # an earlier comparison's run: only if made the same way
                changes = training_changes(read_yaml(folder.config), config_to_dict(config))
                if changes:
                    raise ConfigError(
                        f"{folder.root} holds a run with other settings ({changes}): choose "
                        "another --out, or delete that folder to train it again"
                    )
            if folder.metrics.exists():
                print(f"[{index}/{len(plan)}] {run.method} {run.name}: done, skipped")
                continue
            print(f"[{index}/{len(plan)}] {run.method} {run.name}")
            # A started run resumes from its last.pt, or from epoch 1 if it saved none.
            train(config, resume=folder.holds_run())
        return collect(out_dir, plan)


def _run_raw(base: dict[str, Any], run: PlannedRun, out_dir: Path) -> dict[str, Any]:
    update: dict[str, Any] = {
        "method": {"name": run.method},
        "train": {"seed": run.seed},
        "output_dir": str(out_dir / run.method / run.name),
    }
    if run.fold is not None:
        update["data"] = {"fold": run.fold}
    return deep_merge(base, update)


def collect(out_dir: Path, plan: Sequence[PlannedRun]) -> pd.DataFrame:
    """One row per finished run with its test metrics (selected model and last-epochs mean)."""
    rows = []
    for run in plan:
        path = RunFolder(out_dir / run.method / run.name).metrics
        if not path.exists():
            continue
        metrics = json.loads(path.read_text())
        row: dict[str, Any] = {"method": run.method, "seed": run.seed, "fold": run.fold}
        row.update({key: metrics[key] for key in SCALAR_METRICS})
        last = metrics.get("last_epochs_mean", {})
        row.update({f"last_{key}": last.get(key) for key in SCALAR_METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(frame: pd.DataFrame, metrics: Sequence[str] = SCALAR_METRICS) -> pd.DataFrame:
    """Mean and standard deviation of each metric per method (methods in first-seen order)."""
    order = list(dict.fromkeys(frame["method"]))
    grouped = frame.groupby("method", sort=False)[list(metrics)].agg(["mean", "std"])
    grouped.insert(0, ("runs", "n"), frame.groupby("method", sort=False).size())
    return grouped.loc[order]


def markdown_table(summary: pd.DataFrame, metrics: Sequence[str] = SCALAR_METRICS) -> str:
    """`mean ± std` per metric, one row per method, the best mean of each column in bold."""
    header = "| method | runs | " + " | ".join(metrics) + " |"
    lines = [header, "|---|---|" + "---|" * len(metrics)]
    best = {m: summary[(m, "mean")].max() for m in metrics}
    for method, row in summary.iterrows():
        cells = []
        for m in metrics:
            mean, std = row[(m, "mean")], row[(m, "std")]
            text = f"{mean:.3f}" + ("" if pd.isna(std) else f" ± {std:.3f}")  # one run: no std
            cells.append(f"**{text}**" if mean == best[m] else text)
        lines.append(f"| {method} | {int(row[('runs', 'n')])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(summary: pd.DataFrame, path: Path, metrics: Sequence[str] = CHART_METRICS) -> Figure:
    """Grouped bars of the mean of each metric per method, with the std as error bars; saved
    to `path` and returned."""
    methods = list(summary.index)
    width = 0.8 / len(metrics)
    fig, ((ax,),) = new_figure(max(6, 1.2 * len(methods)), 4)
    for i, metric in enumerate(metrics):
        xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(methods))]
        ax.bar(
            xs,
            summary[(metric, "mean")],
            width,
            yerr=summary[(metric, "std")].fillna(0),
            label=metric,
            capsize=2,
        )
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_ylabel("test score (mean ± std over runs)")
    lowest = min((summary[(m, "mean")] - summary[(m, "std")].fillna(0)).min() for m in metrics)
    ax.set_ylim(min(0.0, lowest), 1.15)  # kappa can be negative; room for the legend above
    ax.legend(fontsize="small", ncol=len(metrics), loc="upper center")
    fig.savefig(path, dpi=120)
    return fig


def check_reference(methods: Sequence[str], reference: str) -> str | None:
    """The reference method to compare the others with; None when only one method is compared
    (nothing to compare). A reference that is not among several methods is a ConfigError."""
    methods = list(dict.fromkeys(methods))
    if len(methods) < 2:
        return None
    if reference not in methods:
        raise ConfigError(
            f"the reference method {reference!r} is not among the compared methods "
            f"({', '.join(methods)}): add it to --methods or choose one with --reference"
        )
    return reference


def read_predictions(path: Path) -> pd.DataFrame:
    """A `test_predictions.csv` (or `crckd eval`'s predictions.csv), indexed by image id."""
    if not path.is_file():
        raise RunFolderError(f"{path} does not exist (a run made before crckd wrote it?)")
    table = pd.read_csv(path, dtype={"image_id": str}).set_index("image_id")
    if "label" not in table or not any(c.startswith(PROB_PREFIX) for c in table.columns):
        raise RunFolderError(f"{path} is not a predictions table (no label or prob_ columns)")
    return table


def run_kappa_weights(run: RunFolder) -> str | None:
    """The kappa weighting a run's metrics use (its train.kappa_weights and dataset)."""
    config = read_yaml(run.config)
    ordinal = LAYOUTS[str(config["data"]["dataset"]).strip().lower()].ordinal
    return resolve_kappa_weights(config["train"]["kappa_weights"], ordinal)


def bootstrap_runs(
    run_dir: Path,
    reference_dir: Path,
    *,
    metrics: Sequence[str] = SCALAR_METRICS,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Interval]:
    """95 % intervals of `metric(run) - metric(reference run)` over the test images, from both
    runs' test_predictions.csv (paired by image id; the reference run's kappa weighting).
    RunFolderError when a file is missing or the two were not tested on the same images."""
    ours = read_predictions(RunFolder(run_dir).test_predictions)
    ref = read_predictions(RunFolder(reference_dir).test_predictions)
    if set(ours.index) != set(ref.index) or list(ours.columns) != list(ref.columns):
        raise RunFolderError(
            f"{run_dir} and {reference_dir} were not tested on the same images and classes"
        )
    ours = ours.loc[ref.index]
    if not (ours["label"] == ref["label"]).all():
        raise RunFolderError(f"{run_dir} and {reference_dir} give the same images other labels")
    probs = [t[[c for c in t.columns if c.startswith(PROB_PREFIX)]].to_numpy() for t in (ours, ref)]
    return bootstrap_difference(
        ref["label"].to_numpy(),
        *probs,
        kappa_weights=run_kappa_weights(RunFolder(reference_dir)),
        metrics=metrics,
        resamples=resamples,
        seed=seed,
    )


@dataclass(frozen=True)
class Differences:
    """Every method against the reference: `paired` over runs (differences.csv), the same for
    the mean of the last test epochs, the paper's reporting rule (`paired_last`,
    differences_last_epochs.csv), `bootstrap` per run over its test images (bootstrap.csv), and
    `notes` on runs left out."""

    reference: str
    paired: pd.DataFrame
    paired_last: pd.DataFrame
    bootstrap: pd.DataFrame
    notes: list[str]
    resamples: int = RESAMPLES


def differences(
    frame: pd.DataFrame, out_dir: Path, reference: str, *, resamples: int = RESAMPLES
) -> Differences:
    """The paired differences of `frame`'s runs (as `collect` returns them) to the reference
    method (of the selected models, and of the last test epochs' means), and each run's
    bootstrap interval against the reference run of its seed and fold."""
    paired = paired_differences(frame, reference)
    paired_last = paired_differences(last_epochs(frame), reference)
    runs = [PlannedRun(r.method, int(r.seed), _fold(r.fold)) for r in frame.itertuples()]
    done = {(run.seed, run.fold) for run in runs if run.method == reference}
    rows, notes = [], []
    for run in runs:
        if run.method == reference:
            continue
        if (run.seed, run.fold) not in done:
            notes.append(f"{run.method} {run.name}: no finished {reference} run to pair it with")
            continue
        try:
            intervals = bootstrap_runs(
                out_dir / run.method / run.name,
                out_dir / reference / run.name,
                resamples=resamples,
            )
        except RunFolderError as err:
            notes.append(f"{run.method} {run.name}: no test-image interval ({err})")
            continue
        for metric, interval in intervals.items():
            row = {"method": run.method, "run": run.name, "seed": run.seed, "fold": run.fold}
            rows.append({**row, "metric": metric, **interval.as_row()})
    columns = ["method", "run", "seed", "fold", "metric", *INTERVAL_FIELDS]
    bootstrap = pd.DataFrame(rows, columns=columns)
    return Differences(reference, paired, paired_last, bootstrap, notes, resamples)


def last_epochs(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (one row per run, as `collect` returns it) with each metric taken from its
    `last_` column: the mean of the run's last test epochs instead of the selected model."""
    last = [c for c in frame.columns if c.startswith("last_")]
    if not last:
        raise ValueError("no last_* columns: not a table of runs as `crckd compare` writes it")
    means = frame[last].rename(columns=lambda c: c.removeprefix("last_"))
    return pd.concat([frame.drop(columns=[*last, *means.columns], errors="ignore"), means], axis=1)


def _fold(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def interval_text(row: pd.Series | dict[str, Any], *, verdict: bool = True) -> str:
    """`+0.030 [+0.010, +0.050]`, followed (with `verdict`) by `better` or `worse` when the
    interval excludes 0."""
    if pd.isna(row["mean"]):
        return "n/a"
    mean = f"{row['mean']:+.3f}"
    if pd.isna(row["low"]):
        return f"{mean} (no interval)"
    text = f"{mean} [{row['low']:+.3f}, {row['high']:+.3f}]"
    found = verdict and row["verdict"] in ("better", "worse")
    return text + (f" {row['verdict']}" if found else "")


def difference_table(long: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per `keys` (method, or method and run), one column per metric, each cell the
    difference with its interval (`interval_text`)."""
    cells = long.assign(cell=long.apply(interval_text, axis=1))
    order = list(dict.fromkeys(cells.set_index(list(keys)).index))
    wide = cells.pivot_table(index=list(keys), columns="metric", values="cell", aggfunc="first")
    return wide.reindex(index=order)[list(dict.fromkeys(long["metric"]))]


def differences_in_words(diff: Differences) -> list[str]:
    """Sentences for the differences whose interval excludes 0; the rest are within noise."""
    lines = _paired_lines(diff.paired, diff.reference)
    lines += _paired_lines(diff.paired_last, diff.reference, " over the last test epochs")
    runs = diff.bootstrap
    found = runs[runs["verdict"].isin(["better", "worse"])]
    for (method, metric, word), rows in found.groupby(["method", "metric", "verdict"], sort=False):
        total = int(((runs["method"] == method) & (runs["metric"] == metric)).sum())
        shown = "; ".join(
            f"{r['run']} {interval_text(r, verdict=False)}" for _, r in rows.iterrows()
        )
        lines.append(
            f"{method} is {word} than {diff.reference} on {metric} over the test images in "
            f"{len(rows)} of {total} runs ({shown})"
        )
    if len(runs) and found.empty:
        lines.append(
            f"on the test images, every run is within noise of its {diff.reference} run on every "
            "metric"
        )
    return lines


def _paired_lines(paired: pd.DataFrame, reference: str, reading: str = "") -> list[str]:
    """The sentences of `differences_in_words` for one table of paired differences; `reading`
    names what was compared when it is not the selected models (" over the last test
    epochs"), and only the selected models' sentences say when a method has too few runs."""
    lines = []
    for method, table in paired.groupby("method", sort=False):
        pairs = int(table["n"].max())
        if pairs < 2:
            if not reading:
                lines.append(
                    f"{method}: {pairs} run paired with {reference}, so no interval over "
                    "runs; see the per-run intervals over the test images"
                )
            continue
        for row in table[table["verdict"].isin(["better", "worse"])].to_dict("records"):
            lines.append(
                f"{method} is {row['verdict']} than {reference} on {row['metric']}{reading}: "
                f"{interval_text(row, verdict=False)} (over {pairs} paired runs)"
            )
        noise = table.loc[table["verdict"] == "within noise", "metric"].tolist()
        if noise:
            lines.append(
                f"{method} is within noise of {reference} on {', '.join(noise)}{reading} "
                f"(the 95 % interval over {pairs} paired runs includes 0)"
            )
    return lines


def _markdown(table: pd.DataFrame) -> str:
    names = list(table.index.names)
    lines = [
        "| " + " | ".join([*names, *table.columns]) + " |",
        "|" + "---|" * (len(names) + len(table.columns)),
    ]
    for key, row in table.iterrows():
        keys = key if isinstance(key, tuple) else (key,)
        lines.append("| " + " | ".join([*map(str, keys), *row.fillna("n/a")]) + " |")
    return "\n".join(lines) + "\n"


def differences_markdown(diff: Differences) -> str:
    """The comparison.md section: both tables of intervals and the findings in words."""
    parts = [
        f"## Differences to {diff.reference}\n\n"
        f"Method minus {diff.reference}, with its 95 % interval; *better* or *worse* only where "
        "the interval excludes 0, otherwise the difference is within noise. The bold means "
        "above are the highest, not necessarily a real difference.\n\n"
        "Over the runs, paired by seed and fold (Student's t interval of the mean difference):"
        "\n\n",
        _markdown(difference_table(diff.paired, ["method"])),
        "\nThe same for the mean of the last test epochs (the paper's reporting rule):\n\n",
        _markdown(difference_table(diff.paired_last, ["method"])),
    ]
    if len(diff.bootstrap):
        parts += [
            f"\nPer run, over its test images (paired bootstrap, {diff.resamples} resamples, "
            f"against the {diff.reference} run of the same seed and fold):\n\n",
            _markdown(difference_table(diff.bootstrap, ["method", "run"])),
        ]
    parts.append("\nIn words:\n\n" + "".join(f"- {line}\n" for line in differences_in_words(diff)))
    if diff.notes:
        parts.append("\nNotes:\n\n" + "".join(f"- {note}\n" for note in diff.notes))
    return "".join(parts)


@dataclass(frozen=True)
class Comparison:
    """What `write_comparison` wrote: the summary (mean and std) and the differences to the
    reference (None with fewer than two methods)."""

    summary: pd.DataFrame
    differences: Differences | None


def write_comparison(
    frame: pd.DataFrame, out_dir: Path, reference: str = DEFAULT_REFERENCE
) -> Comparison:
    """comparison.csv (per run), comparison.md (mean ± std, best in bold, and the differences
    to `reference`), comparison.png, and differences.csv, differences_last_epochs.csv and
    bootstrap.csv (the intervals)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "comparison.csv", frame.to_csv(index=False))
    summary = summarize(frame)
    text = (
        "# Comparison\n\nTest metrics of the model selected on the validation split:\n\n"
        + markdown_table(summary)
        + "\nMean of the last test epochs (the paper's reporting rule):\n\n"
        + markdown_table(summarize(last_epochs(frame)))
    )
    diff = None
    if check_reference(frame["method"].tolist(), reference) is not None:
        diff = differences(frame, out_dir, reference)
        atomic_write_text(out_dir / "differences.csv", diff.paired.to_csv(index=False))
        atomic_write_text(
            out_dir / "differences_last_epochs.csv", diff.paired_last.to_csv(index=False)
        )
        atomic_write_text(out_dir / "bootstrap.csv", diff.bootstrap.to_csv(index=False))
        text += "\n" + differences_markdown(diff)
    else:
        text += "\nOne method only: no differences to a reference.\n"
    atomic_write_text(out_dir / "comparison.md", text)
    bar_chart(summary, out_dir / "comparison.png")
    return Comparison(summary, diff)
