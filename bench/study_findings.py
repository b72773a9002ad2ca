"""What each setting of a `crckd tune` study did: per searched key, the range tried, the best
trial's value and the rank correlation (Spearman's rho, with its p-value) between the key and
the objective over the finished trials; a choice key gets the mean objective per choice.
Pruned and failed trials are counted but not correlated (their value is not a final one).
Reads only the study's `trials.csv`, so only validation metrics.

    python bench/study_findings.py runs/crckd_study > bench/results/crckd_study/findings.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from scipy import stats

# Columns of trials.csv that are not searched keys.
NOT_KEYS = {"trial", "state", "value", "epochs", "run_dir", "note"}


def searched_keys(trials: pd.DataFrame) -> list[str]:
    return [column for column in trials.columns if column not in NOT_KEYS]


def is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def key_rows(finished: pd.DataFrame, best: pd.Series) -> list[str]:
    rows = []
    for key in searched_keys(finished):
        column = finished[key]
        if is_numeric(column):
            rho, p = stats.spearmanr(column, finished["value"])
            tried = f"{column.min():.3g} to {column.max():.3g}"
            effect = f"rho {rho:+.2f} (p {p:.2f})"
            best_value = f"{best[key]:.3g}"
        else:
            means = finished.groupby(column.astype(str))["value"].agg(["mean", "count"])
            tried = ", ".join(means.index)
            effect = ", ".join(
                f"{choice}: mean {row['mean']:.3f} (n {int(row['count'])})"
                for choice, row in means.iterrows()
            )
            best_value = str(best[key])
        rows.append(f"| `{key}` | {tried} | {best_value} | {effect} |")
    return rows


def findings(study: Path) -> str:
    trials = pd.read_csv(study / "trials.csv")
    finished = trials[trials["state"] == "complete"]
    if len(finished) < 3:
        raise SystemExit(f"{study}: {len(finished)} finished trials; 3 are needed to correlate")
    best = finished.loc[finished["value"].idxmax()]
    counts = trials["state"].value_counts()
    states = ", ".join(f"{count} {state}" for state, count in counts.items())
    values = finished["value"]
    lines = [
        f"{len(trials)} trials: {states}. Objective over the finished ones: best "
        f"{values.max():.4f} (trial {int(best['trial'])}), median {values.median():.4f}, "
        f"worst {values.min():.4f}.",
        "",
        "| key | tried | best trial | rank correlation with the objective |",
        "|---|---|---|---|",
        *key_rows(finished, best),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="the --out folder of crckd tune")
    print(findings(parser.parse_args().study), end="")


if __name__ == "__main__":
    main()
