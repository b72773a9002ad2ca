"""The run folder: every file a training run writes, and the rules for reusing a folder.

Layout (a documented format, see docs/run-folder.md):
config.yaml, split.csv, epochs.csv, metrics.json, per_class.csv, tensorboard/, checkpoints/.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from crckd.errors import RunFolderError


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    @property
    def epochs(self) -> Path:
        return self.root / "epochs.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def per_class(self) -> Path:
        return self.root / "per_class.csv"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def last_checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.root / "checkpoints" / "best.pt"

    def holds_run(self) -> bool:
        return self.config.exists()

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Create the folder; refuse to mix a new run into an old one unless asked to."""
        if self.holds_run() and not (resume or overwrite):
            raise RunFolderError(
                f"{self.root} already holds a run: pass --resume to continue it, --overwrite to "
                "replace it, or choose another output_dir"
            )
        if resume and not self.last_checkpoint.exists():
            raise RunFolderError(f"nothing to resume: {self.last_checkpoint} does not exist")
        try:
            (self.root / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"cannot create run folder {self.root}: {exc}") from None
        if not os.access(self.root, os.W_OK):
            raise RunFolderError(f"run folder {self.root} is not writable")

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config, yaml.safe_dump(config, sort_keys=False))

    def write_epochs(self, history: list[dict[str, Any]]) -> None:
        atomic_write_text(self.epochs, pd.DataFrame(history).to_csv(index=False))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_text(self.metrics, json.dumps(metrics, indent=2) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Write text through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
