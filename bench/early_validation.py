"""How early a run's validation metric ranks runs by their final value: for each epoch, the rank
correlation (Spearman's rho, with its p-value) between the epoch's validation metric and the
best one of the run (what the trainer selects), over runs of the same length. It is what
`crckd tune`'s default pruner waits for (docs/tune.md). Reads only `epochs.csv` files.

    python bench/early_validation.py runs/crckd_study/trials/*/ runs/study/*/*/seed*/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from scipy import stats


def validation_curves(run_dirs: list[Path], metric: str) -> pd.DataFrame:
    """One row per run that trained as many epochs as the longest, one column per epoch."""
    curves = {
        str(run): pd.read_csv(run / "epochs.csv")[f"val_{metric}"].to_list()
        for run in run_dirs
        if (run / "epochs.csv").exists()
    }
    longest = max(map(len, curves.values()), default=0)
    return pd.DataFrame({run: c for run, c in curves.items() if len(c) == longest}).T


def early_ranking(curves: pd.DataFrame) -> str:
    best = curves.max(axis=1)
    lines = [
        f"{len(curves)} runs of {curves.shape[1]} epochs.",
        "",
        "| epoch | rho with the run's best | p |",
        "|---|---|---|",
    ]
    for epoch in curves.columns:
        rho, p = stats.spearmanr(curves[epoch], best)
        lines.append(f"| {epoch + 1} | {rho:+.2f} | {p:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (holding epochs.csv)")
    parser.add_argument("--metric", default="balanced_accuracy")
    args = parser.parse_args()
    curves = validation_curves(args.runs, args.metric)
    if len(curves) < 3:
        raise SystemExit(f"{len(curves)} runs of full length; 3 are needed to correlate")
    print(early_ranking(curves), end="")


if __name__ == "__main__":
    main()
