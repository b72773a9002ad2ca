"""A dataset check that reads every label row and opens every image once, collecting all problems.

`check_dataset` reports errors (the run cannot use the data as given: missing, empty, truncated
or undecodable images, images over the pixel limit, duplicate ids, unknown labels, blank values,
classes without (labelled) training images, a bad split file or lesions crossing sets) and notes
(handled safely and counted: non-RGB images converted to RGB, a CSV with a BOM, unused columns),
each with a count and the first few files, ids or lines. A folder of unlabelled images is
checked the same way (its images are opened with the dataset's). `crckd check-data` prints the
report, and training runs it first (`data.check`), so bad data stops a run before anything is
written.
"""

from __future__ import annotations

import io
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from crckd.data.datasets import first_items, load_table
from crckd.data.images import (
    IMAGE_EXTENSIONS,
    PIXEL_LIMIT_ENV,
    allow_pixels,
    max_image_pixels,
    pixel_limit_error,
    to_rgb,
    walk_images,
)
from crckd.data.splits import load_labeled, load_split
from crckd.errors import DataError

KEPT = 20  # items kept per finding by `DataReport.to_dict`

_IMAGE_FINDINGS = {  # code -> (is an error, what the images have in common)
    "missing_file": (True, "image file(s) listed but not found"),
    "unreadable_file": (True, "image file(s) that cannot be read"),
    "empty_file": (True, "zero-byte image file(s)"),
    "truncated_image": (True, "truncated image(s)"),
    "undecodable_image": (True, "image(s) that cannot be decoded"),
    "too_many_pixels": (
        True,
        f"image(s) over the pixel limit, possible decompression bombs "
        f"(raise it with {PIXEL_LIMIT_ENV})",
    ),
    "converted_to_rgb": (False, "non-RGB image(s), converted to RGB when loaded"),
}


@dataclass(frozen=True)
class Finding:
    """One kind of problem: a code, what it means, and every file, id or line it concerns."""

    code: str
    message: str
    items: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.items) or 1

    def format(self) -> str:
        if not self.items:
            return self.message
        return f"{self.message} ({len(self.items)}): {first_items(self.items)}"

    def to_dict(self) -> dict[str, Any]:
        examples = list(self.items[:KEPT])
        return {
            "code": self.code,
            "message": self.message,
            "count": self.count,
            "examples": examples,
        }


@dataclass
class DataReport:
    """Everything `check_dataset` found; `ok` when there is no error (notes are fine)."""

    dataset: str
    root: Path
    rows: int = 0
    unlabeled: int = 0  # image files found in the unlabelled folder
    images: int = 0
    seconds: float = 0.0
    max_pixels: int = 0
    errors: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, code: str, message: str, items: Sequence[str] = ()) -> None:
        self.errors.append(Finding(code, message, tuple(items)))

    def note(self, code: str, message: str, items: Sequence[str] = ()) -> None:
        self.notes.append(Finding(code, message, tuple(items)))

    def format(self) -> str:
        """A terminal summary: one line per finding, errors first."""
        status = "OK" if self.ok else f"{len(self.errors)} error(s)"
        unlabeled = f", {self.unlabeled} unlabelled" if self.unlabeled else ""
        lines = [
            f"{self.dataset} at {self.root}: {self.rows} labelled image(s){unlabeled}, "
            f"{self.images} opened in {self.seconds:.1f}s: {status}, {len(self.notes)} note(s)"
        ]
        lines += [f"  error: {finding.format()}" for finding in self.errors]
        lines += [f"  note: {finding.format()}" for finding in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (the format of a run's `data_check.json`)."""
        return {
            "dataset": self.dataset,
            "root": str(self.root),
            "ok": self.ok,
            "rows": self.rows,
            "unlabeled": self.unlabeled,
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "max_pixels": self.max_pixels,
            "errors": [finding.to_dict() for finding in self.errors],
            "notes": [finding.to_dict() for finding in self.notes],
        }


def check_dataset(
    dataset: str,
    root: str | Path,
    *,
    csv: str | Path | None = None,
    classes: Sequence[str] | None = None,
    split_file: str | Path | None = None,
    unlabeled_root: str | Path | None = None,
    max_pixels: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> DataReport:
    """Check a dataset folder (with a split file, and a folder of unlabelled images) and report
    every problem at once.

    Raises DataError only when there is nothing to check (no folder, no readable CSV, missing
    columns). Images are opened in `workers` threads (default: min(32, CPUs + 4)) and refused
    above `max_pixels` (default `max_image_pixels()`). A split file with a `labeled` column
    needs a labelled training image of every class.
    """
    started = time.perf_counter()
    report = DataReport(dataset, Path(root), max_pixels=max_pixels or max_image_pixels())
    table = load_table(dataset, root, csv=csv, classes=classes, check_files=False, issues=report)
    report.root, report.rows = table.root, len(table.frame)
    paths = table.frame["path"].tolist()
    if unlabeled_root is not None:
        unlabeled = _unlabeled_images(Path(unlabeled_root).expanduser().resolve(), report)
        report.unlabeled = len(unlabeled)
        paths += unlabeled
    _check_images(paths, table.root, report, workers, progress)
    labels = table.frame["label"].to_numpy()
    where = "at all"
    if split_file is not None:
        try:
            split = load_split(split_file, table)
            labeled = load_labeled(split_file, split)
        except DataError as err:
            report.error("bad_split", str(err))
        else:
            labels, where = labels[split.to_numpy() == "train"], "in the training split"
            if labeled is not None:
                labels, where = labels[labeled.to_numpy()], "labelled in the training split"
    counts = np.bincount(labels, minlength=len(table.classes))
    empty = [name for name, n in zip(table.classes, counts, strict=True) if n == 0]
    if empty:
        report.error("class_without_images", f"class(es) with no image {where}", empty)
    report.seconds = time.perf_counter() - started
    return report


def _unlabeled_images(folder: Path, report: DataReport) -> list[str]:
    """The image files under a folder of unlabelled images (none, with an error, if it is not
    a folder or holds no image)."""
    if not folder.is_dir():
        report.error("no_unlabeled_images", f"unlabelled image folder not found: {folder}")
        return []
    found = [str(path) for path in walk_images(folder)]
    if not found:
        report.error(
            "no_unlabeled_images",
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the unlabelled folder {folder}",
        )
    return found


def _check_images(
    paths: list[str], root: Path, report: DataReport, workers: int | None, progress: bool
) -> None:
    """Open every image once, in threads, and add one finding per kind of problem."""
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    found: dict[str, list[str]] = defaultdict(list)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(_scan_image, paths, [report.max_pixels] * len(paths))
        bar = tqdm(
            results,
            total=len(paths),
            desc="check images",
            leave=False,
            disable=None if progress else True,
        )
        for path, result in zip(paths, bar, strict=True):
            if result is not None:
                code, detail = result
                name = _relative(path, root)
                found[code].append(f"{name} ({detail})" if detail else name)
    report.images = len(paths) - len(found["missing_file"])
    for code, (is_error, message) in _IMAGE_FINDINGS.items():
        if found[code]:
            add = report.error if is_error else report.note
            add(code, message, found[code])


def _scan_image(path: str, max_pixels: int) -> tuple[str, str] | None:
    """(code, detail) of what is wrong with one image file, or None for a sound RGB image.

    The file is read once; PIL's `verify` (checksums) and a full decode both run on the bytes.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "missing_file", ""
    except OSError as err:
        return "unreadable_file", err.strerror or type(err).__name__
    if not data:
        return "empty_file", ""
    allow_pixels(max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as image:
            refused = pixel_limit_error(image, max_pixels)
            if refused:
                return "too_many_pixels", refused
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            if mode != "RGB":
                to_rgb(image)  # what loading will do with it; it may refuse the image
    except Image.DecompressionBombError as err:
        return "too_many_pixels", str(err)
    except Image.UnidentifiedImageError:
        return "undecodable_image", "not an image format PIL reads"
    except Exception as err:  # a corrupt file can raise nearly anything inside a PIL plugin
        text = str(err) or type(err).__name__
        return ("truncated_image" if "truncated" in text.lower() else "undecodable_image"), text
    return None if mode == "RGB" else ("converted_to_rgb", mode)


def _relative(path: str, root: Path) -> str:
    """`path` relative to `root` when it lies inside it, else as given."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path
