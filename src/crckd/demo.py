"""`crckd demo`: train `ce`, `mt` and `crckd` on the shipped HAM10000 sample, side by side,
and say which differences between them the sample's few test images can tell from noise."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from crckd.config import deep_merge, read_yaml
from crckd.data import sample_root
from crckd.engine import train
from crckd.engine.metrics import SCALAR_METRICS
from crckd.methods import build_config
from crckd.tools.compare import bootstrap_runs, difference_table, interval_text

DEMO_METRICS = ("balanced_accuracy", "accuracy")  # the differences the demo prints


def demo_config_path() -> Path:
    """The packaged demo config."""
    return Path(str(resources.files("crckd") / "configs" / "demo.yaml"))


def run_demo(
    out_dir: Path, methods: list[str] | None = None, epochs: int | None = None
) -> pd.DataFrame:
    """Train each method on the sample, print a metrics table and return it."""
    methods = methods or ["ce", "mt", "crckd"]
    base = read_yaml(demo_config_path())
    base = deep_merge(base, {"data": {"root": str(sample_root())}})
    if epochs is not None:
        base = deep_merge(base, {"train": {"epochs": epochs}})
    rows = {}
    for name in methods:
        raw = deep_merge(base, {"method": {"name": name}, "output_dir": str(out_dir / name)})
        print(f"== {name} ==")
        result = train(build_config(raw, source="demo"), overwrite=True)
        rows[name] = {key: result.metrics[key] for key in SCALAR_METRICS}
        rows[name]["run folder"] = str(result.run_dir)
    table = pd.DataFrame.from_dict(rows, orient="index")
    print("\nTest metrics of the model selected on the validation split (HAM10000 sample):")
    print(table.drop(columns="run folder").to_string(float_format=lambda v: f"{v:.3f}"))
    if len(rows) > 1:
        reference = "ce" if "ce" in rows else next(iter(rows))
        print_differences({name: Path(row["run folder"]) for name, row in rows.items()}, reference)
    print("\nRun folders:")
    for name, row in rows.items():
        print(f"  {name}: {row['run folder']}")
    return table


def print_differences(run_dirs: dict[str, Path], reference: str) -> pd.DataFrame:
    """Print each method's difference to `reference` with its 95 % bootstrap interval over the
    test images, and say in words which are noise; return the intervals (one row a method and
    metric)."""
    rows = []
    for name, run_dir in run_dirs.items():
        if name == reference:
            continue
        found = bootstrap_runs(run_dir, run_dirs[reference], metrics=DEMO_METRICS)
        rows += [{"method": name, "metric": m, **found[m].as_row()} for m in DEMO_METRICS]
    intervals = pd.DataFrame(rows)
    images = int(intervals["n"].iloc[0])
    print(
        f"\nDifference to {reference} on the {images} test images, with its 95 % interval "
        "(paired bootstrap;\nbetter or worse only where the interval excludes 0):"
    )
    print(difference_table(intervals, ["method"]).rename_axis(index=None, columns=None).to_string())
    noise = intervals[intervals["verdict"] == "within noise"]
    found = intervals[intervals["verdict"].isin(["better", "worse"])]
    for row in found.to_dict("records"):
        print(
            f"{row['method']} is {row['verdict']} than {reference} on {row['metric']}: "
            f"{interval_text(row, verdict=False)} (one seed, on these images only)"
        )
    if len(noise):
        print(
            f"The test part has only {images} images: differences within "
            f"[{noise['low'].min():+.3f}, {noise['high'].max():+.3f}] are noise"
            + (", and every difference above is within noise." if found.empty else ".")
        )
    print(
        "The demo shows how to run the methods, not which is best: docs/benchmarks.md compares "
        "them on the full datasets over several seeds."
    )
    return intervals
