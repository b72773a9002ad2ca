"""The small HAM10000 sample shipped with the package, for `crckd demo` and quick checks."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from crckd.errors import DataError


def sample_root() -> Path:
    """Folder of the shipped HAM10000 sample, in the HAM10000 layout (load it as "ham10000")."""
    root = Path(str(resources.files("crckd").joinpath("sample", "ham10000")))
    if not (root / "HAM10000_metadata.csv").is_file():
        raise DataError(f"the shipped HAM10000 sample is missing from this installation: {root}")
    return root
