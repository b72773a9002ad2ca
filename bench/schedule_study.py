"""Validation table of bench/schedule_study.sh: each run's validation metrics at its selected
epoch (the best validation balanced accuracy, as the trainer selects), and the differences
paired by seed with 95 % t intervals. Reads only `epochs.csv` (`val_*` columns).

    python bench/schedule_study.py runs/study
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from crckd.tools.stats import t_interval

RUNS = {
    "crckd, EMA decay 0.99 (paper)": "ema_paper/crckd",
    "crckd, EMA decay 0.873": "ema_relative/crckd",
    "ce": "ema_paper/ce",
}
METRICS = ("balanced_accuracy", "f1_macro", "kappa")
SEEDS = (0, 1, 2)


def selected(epochs_csv: Path) -> dict[str, float]:
    """Validation metrics of the epoch with the best validation balanced accuracy."""
    log = pd.read_csv(epochs_csv)
    best = log["val_balanced_accuracy"].idxmax()
    return {metric: float(log[f"val_{metric}"][best]) for metric in METRICS}


def tables(root: Path) -> str:
    scores = {
        (name, seed): selected(root / folder / f"seed{seed}" / "epochs.csv")
        for name, folder in RUNS.items()
        for seed in SEEDS
    }
    lines = ["| run (validation balanced accuracy) | seed 0 | seed 1 | seed 2 | mean |"]
    lines.append("|---|---|---|---|---|")
    for name in RUNS:
        values = [scores[(name, seed)]["balanced_accuracy"] for seed in SEEDS]
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {name} | {cells} | {sum(values) / len(values):.3f} |")
    lines += ["", "| difference, paired by seed | " + " | ".join(METRICS) + " |"]
    lines.append("|---|" + "---|" * len(METRICS))
    names = list(RUNS)
    for a, b in ((names[1], names[0]), (names[0], names[2]), (names[1], names[2])):
        cells = []
        for metric in METRICS:
            diffs = [scores[(a, s)][metric] - scores[(b, s)][metric] for s in SEEDS]
            i = t_interval(diffs)
            cells.append(f"{i.mean:+.3f} [{i.low:+.3f}, {i.high:+.3f}] {i.verdict}")
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="OUT_DIR of bench/schedule_study.sh")
    print(tables(parser.parse_args().root), end="")


if __name__ == "__main__":
    main()
