"""`crckd demo`: train `ce`, `mt` and `crckd` on the shipped HAM10000 sample, side by side."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from crckd.config import deep_merge, read_yaml
from crckd.data import sample_root
from crckd.engine import train
from crckd.engine.metrics import SCALAR_METRICS
from crckd.methods import build_config


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
    print("\nRun folders:")
    for name, row in rows.items():
        print(f"  {name}: {row['run folder']}")
    return table
