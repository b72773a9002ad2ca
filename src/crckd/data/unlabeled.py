"""Unlabelled training images from a folder (`data.unlabeled_root`): listing and hashing them,
finding those that are images of the labelled dataset (a validation or test image among them is
a leak), and checking that a resumed run finds the same files.

Files are named by their path relative to the folder and identified by the SHA-256 of their
bytes. Only what a comparison needs is hashed: every unlabelled file, and the dataset images
of the same size as one of them (equal content means equal size).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from crckd.data.csvio import read_csv
from crckd.data.datasets import LAYOUTS, ImageTable, first_items
from crckd.data.images import IMAGE_EXTENSIONS, walk_images
from crckd.errors import DataError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class UnlabeledFiles:
    """Image files of a folder, sorted by their path relative to `root`, with their SHA-256."""

    root: Path
    relative: tuple[str, ...]
    sha256: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.relative)

    @property
    def paths(self) -> list[str]:
        """Absolute paths, in order."""
        return [str(self.root / name) for name in self.relative]

    def without(self, names: Collection[str]) -> UnlabeledFiles:
        """These files less those named (relative paths)."""
        keep = [i for i, name in enumerate(self.relative) if name not in names]
        return UnlabeledFiles(
            self.root,
            tuple(self.relative[i] for i in keep),
            tuple(self.sha256[i] for i in keep),
        )

    def repeated(self) -> list[str]:
        """The files whose content an earlier file already has."""
        seen: set[str] = set()
        repeats = []
        for name, digest in zip(self.relative, self.sha256, strict=True):
            if digest in seen:
                repeats.append(name)
            seen.add(digest)
        return repeats

    def to_frame(self) -> pd.DataFrame:
        """The list as a table: path (relative to the folder), sha256."""
        return pd.DataFrame({"path": list(self.relative), "sha256": list(self.sha256)})


@dataclass(frozen=True)
class Overlap:
    """An unlabelled file that is an image of the labelled dataset, and how that was found."""

    file: str  # relative to the unlabelled folder
    image_id: str
    split: str  # the set of that image (of its group: a lesion is in one set)
    how: str


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    return digest.hexdigest()


def hash_files(paths: Sequence[str], *, progress: bool, desc: str) -> list[str]:
    """SHA-256 of each file, in threads (hashlib releases the GIL), in order."""
    workers = min(32, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(sha256_file, paths)
        bar = tqdm(
            results, total=len(paths), desc=desc, leave=False, disable=None if progress else True
        )
        return list(bar)


def list_unlabeled(root: str | Path, *, progress: bool = True) -> UnlabeledFiles:
    """The image files under `root` (any depth, `IMAGE_EXTENSIONS`), hashed."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"unlabelled image folder not found: {root} (data.unlabeled_root)")
    files = walk_images(root)
    if not files:
        raise DataError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root} (data.unlabeled_root)"
        )
    paths = [str(path) for path in files]
    digests = hash_files(paths, progress=progress, desc="hash unlabelled images")
    relative = tuple(path.relative_to(root).as_posix() for path in files)
    return UnlabeledFiles(root, relative, tuple(digests))


def find_overlaps(
    files: UnlabeledFiles, table: ImageTable, split: pd.Series, *, progress: bool = True
) -> list[Overlap]:
    """The unlabelled files that are images of `table`: the same file (after links), the same
    content, or (for datasets whose ids name an image anywhere, HAM10000 and APTOS) a file
    named by an image id. Each file is reported once, with the first way it was found."""
    frame = table.frame
    sets = split.reindex(frame["image_id"]).to_numpy()
    found: dict[int, tuple[int, str]] = {}  # file position -> (table row, how)

    def add(position: int, row: int, how: str) -> None:
        found.setdefault(position, (row, how))

    table_paths = frame["path"].tolist()
    by_real = {os.path.realpath(p): row for row, p in enumerate(table_paths)}
    unlabeled_paths = files.paths
    for position, path in enumerate(unlabeled_paths):
        row = by_real.get(os.path.realpath(path))
        if row is not None:
            add(position, row, "the same file")
    sizes = {os.path.getsize(path) for path in unlabeled_paths}
    candidates = [row for row, p in enumerate(table_paths) if _size(p) in sizes]
    digests = hash_files(
        [table_paths[row] for row in candidates], progress=progress, desc="hash dataset images"
    )
    by_digest: dict[str, int] = {}
    for row, digest in zip(candidates, digests, strict=True):
        by_digest.setdefault(digest, row)
    for position, digest in enumerate(files.sha256):
        if digest in by_digest:
            add(position, by_digest[digest], "the same content")
    if LAYOUTS[table.name].global_ids:
        by_id = {image_id: row for row, image_id in enumerate(frame["image_id"])}
        for position, name in enumerate(files.relative):
            row = by_id.get(Path(name).stem)
            if row is not None:
                add(position, row, "the same image id")
    ids = frame["image_id"].to_numpy()
    return [
        Overlap(files.relative[position], str(ids[row]), str(sets[row]), how)
        for position, (row, how) in sorted(found.items())
    ]


def check_same_files(files: UnlabeledFiles, saved: Path) -> None:
    """Refuse unlabelled images other than those `saved` (a run's unlabeled.csv) lists: a
    resumed run trains on exactly the files it started with."""
    frame = read_csv(saved, ("path", "sha256"))
    before = dict(zip(frame["path"], frame["sha256"], strict=True))
    now = dict(zip(files.relative, files.sha256, strict=True))
    missing = sorted(before.keys() - now.keys())
    added = sorted(now.keys() - before.keys())
    changed = sorted(name for name in before.keys() & now.keys() if before[name] != now[name])
    differences = [
        f"{len(names)} {what} ({first_items(names)})"
        for names, what in ((missing, "missing"), (added, "added"), (changed, "changed"))
        if names
    ]
    if differences:
        raise DataError(
            f"the unlabelled images under {files.root} are not those {saved} lists, which the "
            f"run trained with: {'; '.join(differences)}. Restore them, or start a new run"
        )


def _size(path: str) -> int:
    """A file's size; -1 when it cannot be read (the dataset check reports it)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def overlap_lines(overlaps: Sequence[Overlap]) -> str:
    """Overlaps as "file is <set> image <id> (how)", the first few."""
    return first_items([f"{o.file} is {o.split} image {o.image_id} ({o.how})" for o in overlaps])
