"""The supported dataset layouts, one reader that turns any of them into an `ImageTable`, and a
torch Dataset over images.

Every layout is turned into one `ImageTable` (image id, absolute path, integer label, group), so
that splitting, training and evaluation never need to know how the files were laid out. Each
layout is declared as a `Layout` in `LAYOUTS`. Problems the user can fix (missing files, bad
labels, wrong columns) raise `DataError` naming the file, row or id at fault, before any training
starts; given an `Issues` collector instead, the reader records every bad row and goes on
(`crckd.data.check` builds its report this way).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image

from crckd.data.csvio import Issues, csv_line, read_csv
from crckd.data.images import (
    IMAGE_EXTENSIONS,
    index_images,
    open_rgb,
    visible_entries,
    walk_images,
)
from crckd.errors import DataError

HAM10000_CLASSES = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")
APTOS_CLASSES = ("no_dr", "mild", "moderate", "severe", "proliferative_dr")

SHOWN = 5  # how many offending ids, files or lines a message lists
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True, eq=False)
class ImageTable:
    """One dataset as a table of images.

    `frame` has the columns image_id (unique str), path (absolute str), label (int in
    0..len(classes)-1) and group (str: images of one group, e.g. one lesion, must stay in one
    split). `ordinal` marks graded labels (APTOS), which are scored with quadratic kappa.
    """

    name: str
    root: Path
    classes: tuple[str, ...]
    frame: pd.DataFrame
    ordinal: bool = False


@dataclass(frozen=True)
class Layout:
    """How a dataset folder lists its images, labels and groups: one row per image in a label
    CSV, or (without `csv`) one subfolder per class holding its images."""

    name: str
    classes: tuple[str, ...] | None = None  # fixed names in label order; None: the user's or found
    ordinal: bool = False  # graded labels
    csv: str | None = None  # default label CSV in the dataset folder; None: class subfolders
    columns: tuple[str, ...] = ()  # CSV columns that must be there, with no blank value
    optional: tuple[str, ...] = ()  # further columns used when there (others: noted as unused)
    id_columns: tuple[str, ...] = ()  # the image id is the first present; a repeated id is bad
    label_column: str = ""
    # A label value is a class name, a name or else a 0-based class position, or a position only
    labels: Literal["name", "name_or_position", "position"] = "name"
    lowercase_labels: bool = False  # lower-case label values before looking them up
    group_column: str | None = None  # the image's group (e.g. lesion); absent or blank: its id
    path_column: str | None = None  # image path relative to the dataset folder; None: by id
    # Found by id: the image whose file stem is the id, among `extensions` in `image_folder` (and
    # below with `recursive`); unchecked and missing, it gets the path <image_folder>/<id><suffix>
    image_folder: str = ""
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    recursive: bool = True
    suffix: str = ""
    # Ids name an image beyond this folder (ISIC ids, APTOS id codes): a file named by one in
    # another folder (unlabelled images) is taken for that image.
    global_ids: bool = False


LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout(
            "ham10000",
            classes=HAM10000_CLASSES,
            csv="HAM10000_metadata.csv",
            columns=("lesion_id", "image_id", "dx"),
            optional=("dx_type", "age", "sex", "localization", "dataset"),
            id_columns=("image_id",),
            label_column="dx",
            lowercase_labels=True,
            group_column="lesion_id",
            suffix=".jpg",
            global_ids=True,
        ),
        Layout(
            "aptos",
            classes=APTOS_CLASSES,
            ordinal=True,
            csv="train.csv",
            columns=("id_code", "diagnosis"),
            id_columns=("id_code",),
            label_column="diagnosis",
            labels="position",
            image_folder="train_images",
            extensions=(".png", ".jpg", ".jpeg"),
            recursive=False,
            suffix=".png",
            global_ids=True,
        ),
        Layout(
            "csv",
            csv="labels.csv",
            columns=("path", "label"),
            optional=("image_id", "group"),
            id_columns=("image_id", "path"),
            label_column="label",
            labels="name_or_position",
            group_column="group",
            path_column="path",
        ),
        Layout("imagefolder"),
    )
}
"""The supported layouts by name."""


def load_table(
    dataset: str,
    root: str | Path,
    *,
    csv: str | Path | None = None,
    classes: Sequence[str] | None = None,
    check_files: bool = True,
    issues: Issues | None = None,
) -> ImageTable:
    """Read a dataset folder in one of the layouts "ham10000", "aptos", "csv" or "imagefolder".

    `csv` overrides the layout's label file (default: HAM10000_metadata.csv, train.csv,
    labels.csv); a relative `csv` is looked up in `root` first, then in the working directory.
    `classes` fixes the class names and their order for "csv" and "imagefolder"; the HAM10000
    and APTOS classes are fixed. `check_files=False` skips checking that every image exists.
    With `issues`, bad rows (blank values, duplicate ids, unknown labels) and empty class
    folders are recorded there and left out, and notes (a BOM, unused columns) are added;
    problems that leave nothing to read (no folder, no CSV, missing columns) still raise.
    """
    name = dataset.strip().lower()
    if name not in LAYOUTS:
        raise DataError(f"unknown dataset {dataset!r}; valid ones are: {', '.join(LAYOUTS)}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root} (set data.root=FOLDER)")
    layout = LAYOUTS[name]
    if layout.csv is None:
        return _read_class_folders(layout, root, csv, classes, issues)
    return _read_label_csv(layout, root, csv, classes, check_files, issues)


def first_items(items: Sequence[object], limit: int = SHOWN) -> str:
    """The first `limit` items joined by commas, with " ..." when there are more."""
    items = list(items)
    return ", ".join(map(str, items[:limit])) + (" ..." if len(items) > limit else "")


class ImageDataset(torch.utils.data.Dataset):
    """Images with integer labels (-1 when unlabelled), each item a dict.

    With `views=2` the item also holds "image2": a second, independent draw of `transform` on
    the same image, for methods that compare two augmented views. `images`, when given, is an
    indexable source of already decoded images (the decoded cache) used instead of the files.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int] | None,
        transform: Callable[[Image.Image], torch.Tensor],
        views: int = 1,
        images: Sequence[Image.Image] | None = None,
    ) -> None:
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}")
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [str(p) for p in paths]
        self.labels = [-1] * len(self.paths) if labels is None else [int(y) for y in labels]
        self.transform = transform
        self.views = views
        self.images = images

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Item `key`, or `(index, seed)`: then its augmentation is drawn from (seed, index)
        alone, the same whatever the worker or rank that loads it."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.images[index] if self.images is not None else open_rgb(self.paths[index])
        if seed is None:
            return self._item(image, index)
        # The transforms draw from torch's default CPU generator: seed it for this item and put
        # its state back after. (torch.manual_seed would also reach every other device's
        # generators, at a far higher cost per image.)
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed((seed * 1_000_003 + index) % 2**63)
        try:
            return self._item(image, index)
        finally:
            generator.set_state(state)

    def _item(self, image: Image.Image, index: int) -> dict:
        item = {"image": self.transform(image), "label": self.labels[index], "index": index}
        if self.views == 2:
            item["image2"] = self.transform(image)
        return item


# --- the readers -------------------------------------------------------------------------------


def _read_label_csv(
    layout: Layout,
    root: Path,
    csv: str | Path | None,
    classes: Sequence[str] | None,
    check_files: bool,
    issues: Issues | None,
) -> ImageTable:
    """The table of a layout with a label CSV (`csv`, else the layout's file in `root`)."""
    if layout.classes is not None:
        _check_fixed_classes(layout.name, layout.classes, classes)
    csv_path = _csv_path(root, csv, layout.csv)
    rows = read_csv(csv_path, layout.columns, issues, layout.optional)
    id_column = next(c for c in layout.id_columns if c in rows)
    rows = _unique_rows(rows, id_column, csv_path, issues)
    values = rows[layout.label_column]
    if layout.classes is not None:
        classes = layout.classes
    elif classes is None:
        classes = _classes_from_labels(values.tolist())
    else:
        classes = _check_classes(classes)
    labels = _parse_labels(layout, values, classes, csv_path, issues)
    keep = labels >= 0  # bad labels are -1, already reported
    rows, labels = rows[keep], labels[keep]
    ids = rows[id_column].tolist()
    paths = _image_paths(layout, root, rows, ids, csv_path, check_files)
    group = layout.group_column
    groups = rows[group].tolist() if group is not None and group in rows else ids
    groups = [g or i for g, i in zip(groups, ids, strict=True)]  # a blank group: its own
    frame = _frame(ids, paths, labels.tolist(), groups)
    return ImageTable(layout.name, root, classes, frame, ordinal=layout.ordinal)


def _read_class_folders(
    layout: Layout,
    root: Path,
    csv: str | Path | None,
    classes: Sequence[str] | None,
    issues: Issues | None,
) -> ImageTable:
    """The table of a layout without a CSV: one subfolder of `root` per class."""
    if csv is not None:
        raise DataError(f"the {layout.name!r} layout takes its labels from folder names, not a CSV")
    if classes is None:
        classes = tuple(sorted(e.name for e in visible_entries(root) if e.is_dir()))
        if not classes:
            raise DataError(f"no class subfolders in {root} (expected {root}/<class>/<image>)")
    else:
        classes = _check_classes(classes)
    ids, paths, labels = [], [], []
    for label, name in enumerate(classes):
        folder = root / name
        images = walk_images(folder) if folder.is_dir() else []
        if not images and issues is None:  # a collector reports the class without images
            raise DataError(
                f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
                if folder.is_dir()
                else f"class folder not found: {folder}"
            )
        ids += [p.relative_to(root).as_posix() for p in images]
        paths += [str(p) for p in images]
        labels += [label] * len(images)
    return ImageTable(layout.name, root, classes, _frame(ids, paths, labels, ids))


# --- helpers -----------------------------------------------------------------------------------


def _csv_path(root: Path, csv: str | Path | None, default: str) -> Path:
    if csv is None:
        return root / default
    csv = Path(csv).expanduser()
    in_root = root / csv  # an absolute csv replaces root
    if in_root.is_file() or not csv.is_file():  # if neither exists, the error names root's
        return in_root
    return csv.resolve()


def _unique_rows(
    frame: pd.DataFrame, column: str, path: Path, issues: Issues | None
) -> pd.DataFrame:
    """`frame` without rows repeating an earlier `column` value (an error, or recorded)."""
    repeated = frame[column].duplicated()
    duplicated = frame[column][repeated].unique().tolist()
    if duplicated and issues is None:
        raise DataError(f"{path}: duplicate {column} value(s): {first_items(duplicated)}")
    if duplicated:
        issues.error(
            "duplicate_id", f"{path.name}: duplicate {column} values, first row kept", duplicated
        )
    return frame[~repeated]


def _check_fixed_classes(name: str, fixed: tuple[str, ...], classes: Sequence[str] | None) -> None:
    if classes is not None and tuple(classes) != fixed:
        raise DataError(
            f"dataset {name!r} has fixed classes ({', '.join(fixed)}); got {', '.join(classes)}"
        )


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    classes = tuple(str(c) for c in classes)
    if not classes or len(set(classes)) != len(classes) or "" in classes:
        raise DataError(f"class names must be unique and non-empty, got {list(classes)}")
    return classes


def _classes_from_labels(values: Sequence[str]) -> tuple[str, ...]:
    """Sorted unique label values: numerically when all are integers, else as strings."""
    unique = set(values)
    if all(_INT.fullmatch(v) for v in unique):
        return tuple(str(v) for v in sorted({int(v) for v in unique}))
    return tuple(sorted(unique))


def _parse_labels(
    layout: Layout,
    values: pd.Series,
    classes: Sequence[str],
    path: Path,
    issues: Issues | None,
) -> np.ndarray:
    """Class positions of the label values, read as `layout.labels` says (-1: a bad value,
    recorded in `issues`)."""
    column = layout.label_column
    if layout.lowercase_labels:
        values = values.str.lower()
    if layout.labels == "position":
        return _integer_labels(values, len(classes), path, column, issues)
    by_index = layout.labels == "name_or_position"
    return _lookup_labels(values, classes, path, column, issues, by_index=by_index)


def _lookup_labels(
    values: pd.Series,
    classes: Sequence[str],
    path: Path,
    column: str,
    issues: Issues | None,
    *,
    by_index: bool = False,
) -> np.ndarray:
    """Class positions of label values (-1 for a bad value recorded in `issues`).

    With `by_index`, an integer that is not a class name means a class position, unless some
    class name is itself an integer (then "0" could mean either, so only names count).
    """
    lookup = {name: i for i, name in enumerate(classes)}
    by_index = by_index and not any(_INT.fullmatch(c) for c in classes)

    def label(value: str) -> int:
        if value in lookup:
            return lookup[value]
        if by_index and _INT.fullmatch(value) and 0 <= int(value) < len(classes):
            return int(value)
        return -1

    labels = values.map(label).to_numpy(dtype=np.int64)
    _bad_labels(
        values, labels, f"not one of the classes ({', '.join(classes)})", path, column, issues
    )
    return labels


def _integer_labels(
    values: pd.Series, n_classes: int, path: Path, column: str, issues: Issues | None
) -> np.ndarray:
    """Integer labels in 0..n_classes-1 (-1 for a bad value recorded in `issues`)."""

    def label(value: str) -> int:
        return int(value) if _INT.fullmatch(value) and 0 <= int(value) < n_classes else -1

    labels = values.map(label).to_numpy(dtype=np.int64)
    _bad_labels(values, labels, f"not an integer in 0..{n_classes - 1}", path, column, issues)
    return labels


def _bad_labels(
    values: pd.Series,
    labels: np.ndarray,
    expected: str,
    path: Path,
    column: str,
    issues: Issues | None,
) -> None:
    """Raise for the first label that is -1, or record them all in `issues`."""
    bad = values.index[labels < 0]
    if len(bad) and issues is None:
        raise DataError(
            f"{path}, line {csv_line(bad[0])}: {column} {values[bad[0]]!r} is {expected}"
        )
    if len(bad):
        issues.error(
            "unknown_label",
            f"{path.name}: {column} values {expected}, rows left out",
            [f"line {csv_line(r)}: {values[r]!r}" for r in bad],
        )


def _image_paths(
    layout: Layout,
    root: Path,
    rows: pd.DataFrame,
    ids: Sequence[str],
    csv_path: Path,
    check_files: bool,
) -> list[str]:
    """Absolute image paths of the rows: from the path column, else looked up by id.

    A missing image is an error naming the folder searched; with `check_files` off, an image
    not found by id gets the path `folder/<id><suffix>` instead, so that tests can build tables
    without image files.
    """
    if layout.path_column is not None:
        paths = [str(root / p) for p in rows[layout.path_column]]  # an absolute p replaces root
        if check_files:
            missing = [i for i, p in zip(ids, paths, strict=True) if not os.path.isfile(p)]
            _raise_if_missing(missing, csv_path, root)
        return paths
    folder = root / layout.image_folder
    if check_files and not folder.is_dir():
        raise DataError(
            f"{layout.name.upper()} image folder not found: {folder} (images listed in {csv_path})"
        )
    index = index_images(folder, layout.extensions, layout.recursive) if folder.is_dir() else {}
    missing = [i for i in ids if i not in index]
    if check_files:
        _raise_if_missing(missing, csv_path, folder)
    guessed = {i: folder / f"{i}{layout.suffix}" for i in missing}
    return [str(index.get(i) or guessed[i]) for i in ids]


def _raise_if_missing(missing: Sequence[str], csv_path: Path, folder: Path) -> None:
    if missing:
        raise DataError(
            f"{len(missing)} image(s) listed in {csv_path} not found under {folder}: "
            f"{first_items(missing)}"
        )


def _frame(
    ids: Sequence[str], paths: Sequence[str], labels: Sequence[int], groups: Sequence[str]
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": pd.Series(ids, dtype=str),
            "path": pd.Series(paths, dtype=str),
            "label": pd.Series(labels, dtype="int64"),
            "group": pd.Series(groups, dtype=str),
        }
    )
