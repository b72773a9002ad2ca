"""The run folder: every file a training run writes, and the rules for reusing a folder.

Layout (a documented format, see docs/run-folder.md): config.yaml, split.csv, unlabeled.csv,
data_check.json, epochs.csv, metrics.json, per_class.csv, test_predictions.csv, tensorboard/,
checkpoints/. A
failed write (disk full, read-only folder) raises RunFolderError naming the file and the reason;
the file's previous version is kept.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd
import yaml

from crckd.data import split_csv
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
    def unlabeled(self) -> Path:
        """The files of `data.unlabeled_root` the run trains on (path, sha256)."""
        return self.root / "unlabeled.csv"

    @property
    def data_check(self) -> Path:
        return self.root / "data_check.json"

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
    def test_predictions(self) -> Path:
        return self.root / "test_predictions.csv"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def last_checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.root / "checkpoints" / "best.pt"

    @property
    def pending_best(self) -> Path:
        """A new best.pt, written before last.pt and renamed to best.pt after it."""
        return self.root / "checkpoints" / "best.next.pt"

    def commit_best(self) -> None:
        """Make the pending best checkpoint best.pt (an atomic rename)."""
        os.replace(self.pending_best, self.best_checkpoint)
        _fsync_dir(self.best_checkpoint.parent)

    def holds_run(self) -> bool:
        return self.config.exists()

    def check_use(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse to mix a new run into an old one unless asked to, or to resume no run (reads
        only: `prepare` checks again under the folder's lock)."""
        if self.holds_run() and not (resume or overwrite):
            raise RunFolderError(
                f"{self.root} already holds a run: pass --resume to continue it, --overwrite to "
                "replace it, or choose another output_dir"
            )
        if resume and not self.holds_run():
            raise RunFolderError(f"nothing to resume: {self.root} holds no run (no config.yaml)")

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Create the folder and check that it can be written, after `check_use`. `overwrite`
        deletes the old run's files (only those); `resume` deletes temporary files left by a
        killed write."""
        self.check_use(resume=resume, overwrite=overwrite)
        with write_guard(self.root, replacing=False):
            if overwrite and not resume:
                self._delete(self._run_files())
            self._delete(self._temporary_files())
            (self.root / "checkpoints").mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass

    def _run_files(self) -> list[Path]:
        names = (
            "config",
            "split",
            "unlabeled",
            "data_check",
            "epochs",
            "metrics",
            "per_class",
            "test_predictions",
            "tensorboard",
        )
        return [getattr(self, name) for name in names] + [self.root / "checkpoints"]

    def _temporary_files(self) -> list[Path]:
        return [*self.root.glob(".*.tmp"), *(self.root / "checkpoints").glob(".*.tmp")]

    @staticmethod
    def _delete(paths: list[Path]) -> None:
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config, yaml.safe_dump(config, sort_keys=False))

    def write_split(self, split: pd.Series, labeled: pd.Series | None = None) -> None:
        atomic_write_text(self.split, split_csv(split, labeled))

    def write_unlabeled(self, table: pd.DataFrame) -> None:
        atomic_write_text(self.unlabeled, table.to_csv(index=False))

    def write_data_check(self, report: dict[str, Any]) -> None:
        atomic_write_text(self.data_check, json.dumps(report, indent=2) + "\n")

    def write_epochs(self, history: list[dict[str, Any]]) -> None:
        atomic_write_text(self.epochs, pd.DataFrame(history).to_csv(index=False))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_text(self.metrics, json.dumps(metrics, indent=2) + "\n")

    def write_per_class(self, table: pd.DataFrame) -> None:
        atomic_write_text(self.per_class, table.to_csv(index=False))

    def write_test_predictions(self, table: pd.DataFrame) -> None:
        atomic_write_text(self.test_predictions, table.to_csv(index=False))


_WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


@contextmanager
def write_guard(path: Path, *, replacing: bool = True) -> Iterator[None]:
    """Turn an OSError while writing `path` into a RunFolderError saying which file and why
    (and, when `replacing` a file, that its previous version is kept)."""
    try:
        yield
    except OSError as exc:
        reason = _WRITE_ERRORS.get(exc.errno, exc.strerror or str(exc))
        kept = "; its previous version, if any, is unchanged" if replacing else ""
        raise RunFolderError(f"cannot write {path}: {reason} ({exc}){kept}") from exc


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO]:
    """A handle (mode "w" or "wb") whose content replaces `path` when the block ends.

    It writes a temporary file in the same folder, fsyncs it and renames it over `path`, so a
    kill or a failure at any moment leaves the previous `path` (and no temporary file but after
    a kill). The file gets the usual permissions (0o666 less the umask), not mkstemp's 0o600.
    """
    with write_guard(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text atomically (see `atomic_file`), so readers never see half a file."""
    with atomic_file(path) as handle:
        handle.write(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: not every system can fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
