"""Validation table of bench/schedule_study.sh (and of bench/crckd_study_confirm.sh): each
run's validation metrics at its selected epoch (the best validation balanced accuracy, as the
trainer selects), and the differences paired by seed with 95 % t intervals. Reads only
`epochs.csv` (`val_*` columns).

    python bench/schedule_study.py runs/study
    python bench/schedule_study.py runs/crckd_study_confirm --seeds 1 2 3 --run "ce=defaults/ce" \\
        --run "crckd, defaults=defaults/crckd" --run "crckd, best trial=tuned/crckd"

Given `--run LABEL=FOLDER` (FOLDER under the root, holding seed<N>/epochs.csv), each run is
compared with every run given before it; without, the EMA-decay study's three runs and pairs.
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
PAIRS = ((1, 0), (0, 2), (1, 2))  # indices into RUNS: (run, minus run)


def pairs_with_earlier(count: int) -> tuple[tuple[int, int], ...]:
    """Each run's index paired with the index of every run before it: (1, 0), (2, 0), (2, 1)..."""
    return tuple((i, j) for i in range(1, count) for j in range(i))


def selected(epochs_csv: Path) -> dict[str, float]:
    """Validation metrics of the epoch with the best validation balanced accuracy."""
    log = pd.read_csv(epochs_csv)
    best = log["val_balanced_accuracy"].idxmax()
    return {metric: float(log[f"val_{metric}"][best]) for metric in METRICS}


def tables(
    root: Path,
    runs: dict[str, str] = RUNS,
    seeds: tuple[int, ...] = SEEDS,
    pairs: tuple[tuple[int, int], ...] = PAIRS,
) -> str:
    """The per-seed table of `runs` (label -> folder under `root`) and the paired differences
    `pairs` (indices into `runs`)."""
    scores = {
        (name, seed): selected(root / folder / f"seed{seed}" / "epochs.csv")
        for name, folder in runs.items()
        for seed in seeds
    }
    header = " | ".join(f"seed {seed}" for seed in seeds)
    lines = [f"| run (validation balanced accuracy) | {header} | mean |"]
    lines.append("|---|" + "---|" * (len(seeds) + 1))
    for name in runs:
        values = [scores[(name, seed)]["balanced_accuracy"] for seed in seeds]
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {name} | {cells} | {sum(values) / len(values):.3f} |")
    lines += ["", "| difference, paired by seed | " + " | ".join(METRICS) + " |"]
    lines.append("|---|" + "---|" * len(METRICS))
    names = list(runs)
    for a, b in ((names[i], names[j]) for i, j in pairs):
        cells = []
        for metric in METRICS:
            diffs = [scores[(a, s)][metric] - scores[(b, s)][metric] for s in seeds]
            i = t_interval(diffs)
            cells.append(f"{i.mean:+.3f} [{i.low:+.3f}, {i.high:+.3f}] {i.verdict}")
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="OUT_DIR of bench/schedule_study.sh")
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=FOLDER")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args()
    if not args.run:
        print(tables(args.root, seeds=tuple(args.seeds)), end="")
        return
    runs = dict(spec.rsplit("=", 1) for spec in args.run)
    print(tables(args.root, runs, tuple(args.seeds), pairs_with_earlier(len(runs))), end="")


if __name__ == "__main__":
    main()
