"""`crckd compare`: methods x seeds (x folds) from one config, and the table a paper needs.

Each run gets its own folder `OUT/<method>/seed<s>[-fold<k>]`. A run whose `metrics.json`
exists is skipped, one that started (its `config.yaml` exists) is resumed from its last
checkpoint, so a comparison killed at any moment is continued by running the same command
again. The comparison holds the lock of OUT (`RunLock`) and each run the lock of its folder.
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
from crckd.engine.lock import RunLock
from crckd.engine.metrics import SCALAR_METRICS
from crckd.engine.resume import training_changes
from crckd.engine.run_folder import RunFolder, atomic_write_text
from crckd.engine.trainer import train
from crckd.errors import ConfigError
from crckd.methods import build_config
from crckd.tools.plots import new_figure

CHART_METRICS = ("balanced_accuracy", "f1_macro", "auc_macro", "kappa")


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


def write_comparison(frame: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """comparison.csv (per run), comparison.md (mean ± std, best in bold) and comparison.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "comparison.csv", frame.to_csv(index=False))
    summary = summarize(frame)
    last = frame[["method", *[f"last_{m}" for m in SCALAR_METRICS]]].rename(
        columns=lambda c: c.removeprefix("last_")
    )
    text = (
        "# Comparison\n\nTest metrics of the model selected on the validation split:\n\n"
        + markdown_table(summary)
        + "\nMean of the last test epochs (the paper's reporting rule):\n\n"
        + markdown_table(summarize(last))
    )
    atomic_write_text(out_dir / "comparison.md", text)
    bar_chart(summary, out_dir / "comparison.png")
    return summary
