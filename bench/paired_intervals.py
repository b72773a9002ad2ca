"""Paired differences to a reference method, with 95 % t intervals over seeds, from the
comparison.csv a `crckd compare` wrote (for comparisons whose run folders are gone).

    python bench/paired_intervals.py bench/results/cpu_protocol/ham10000/comparison.csv

Several comparisons of the same seeds can be read together: `PATH@LABEL` appends " (LABEL)" to
the method names of that file, e.g. the semi-supervised runs against CE on all labels:

    python bench/paired_intervals.py bench/results/semi/ham10000_labels_20pct/comparison.csv \
        "bench/results/cpu_protocol/ham10000/comparison.csv@all labels" \
        --reference "ce (all labels)"

`--last` takes the mean of each run's last test epochs (the `last_*` columns: the paper's
reporting rule) instead of the model selected on the validation split:

    python bench/paired_intervals.py bench/results/cpu_long/ham10000/five_seeds_comparison.csv \
        --last --metrics accuracy balanced_accuracy f1_macro auc_macro kappa
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pandas as pd

from crckd.tools.compare import last_epochs
from crckd.tools.stats import paired_differences

METRICS = ["balanced_accuracy", "f1_macro", "auc_macro", "kappa"]


def interval_table(frame: pd.DataFrame, reference: str, metrics: Sequence[str] = METRICS) -> str:
    """One markdown row per method: mean difference [low, high] per metric, and the verdict."""
    table = paired_differences(frame, reference, metrics=metrics)
    lines = [
        f"| method - {reference} | runs | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for method, rows in table.groupby("method", sort=False):
        cells = []
        for row in rows.itertuples():
            text = f"{row.mean:+.3f} [{row.low:+.3f}, {row.high:+.3f}]"
            cells.append(f"**{text}** {row.verdict}" if row.verdict != "within noise" else text)
        lines.append(f"| {method} | {rows['n'].iloc[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_comparisons(specs: list[str]) -> pd.DataFrame:
    """The rows of every `PATH` or `PATH@LABEL` comparison.csv, LABEL appended to its methods."""
    frames = []
    for spec in specs:
        path, _, label = spec.partition("@")
        frame = pd.read_csv(path)
        if label:
            frame["method"] = frame["method"] + f" ({label})"
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison_csv", nargs="+", help="PATH or PATH@LABEL")
    parser.add_argument("--reference", default="ce")
    parser.add_argument("--metrics", nargs="+", default=METRICS)
    parser.add_argument(
        "--last", action="store_true", help="the mean of the last test epochs (last_* columns)"
    )
    args = parser.parse_args()
    frame = read_comparisons(args.comparison_csv)
    if args.last:
        frame = last_epochs(frame)
    print(interval_table(frame, args.reference, args.metrics), end="")


if __name__ == "__main__":
    main()
