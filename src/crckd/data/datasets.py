"""Image tables for the supported dataset layouts, and a torch Dataset over them.

Every layout is turned into one `ImageTable` (image id, absolute path, integer label, group), so
that splitting, training and evaluation never need to know how the files were laid out. Problems
the user can fix (missing files, bad labels, wrong columns) raise `DataError` naming the file, row
or id at fault, before any training starts; given an `Issues` collector instead, the readers
record every bad row and go on (`crckd.data.check` builds its report this way).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import numpy as np
import pandas as pd
import torch
from PIL import Image

from crckd.errors import DataError

HAM10000_CLASSES = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")
APTOS_CLASSES = ("no_dr", "mild", "moderate", "severe", "proliferative_dr")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

MAX_IMAGE_PIXELS = 89_478_485
"""Default pixel limit (PIL's): a larger image is refused unread, as a decompression bomb."""
PIXEL_LIMIT_ENV = "CRCKD_MAX_IMAGE_PIXELS"
"""Environment variable that overrides `MAX_IMAGE_PIXELS` (training, eval, predict, checks)."""

_APTOS_EXTENSIONS = (".png", ".jpg", ".jpeg")
_HAM_EXTRA_COLUMNS = ("dx_type", "age", "sex", "localization", "dataset")
SHOWN = 5  # how many offending ids, files or lines a message lists
_INT = re.compile(r"[+-]?\d+")
_BOM = b"\xef\xbb\xbf"


class Issues(Protocol):
    """Collects the problems of a dataset instead of raising at the first one."""

    def error(self, code: str, message: str, items: Sequence[str] = ()) -> None: ...

    def note(self, code: str, message: str, items: Sequence[str] = ()) -> None: ...


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
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {dataset!r}; valid ones are: {', '.join(_LOADERS)}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root} (set data.root=FOLDER)")
    return _LOADERS[name](root, csv, classes, check_files, issues)


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named by `paths`: files as given, folders searched recursively (sorted)."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found.extend(_walk_images(item))
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(f"not an image file ({', '.join(IMAGE_EXTENSIONS)}): {item}")
            found.append(item)
        else:
            raise DataError(f"no such file or folder: {item}")
    if not found:
        shown = ", ".join(str(p) for p in paths) or "(no paths given)"
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in: {shown}")
    return found


def first_items(items: Sequence[object], limit: int = SHOWN) -> str:
    """The first `limit` items joined by commas, with " ..." when there are more."""
    items = list(items)
    return ", ".join(map(str, items[:limit])) + (" ..." if len(items) > limit else "")


def max_image_pixels() -> int:
    """The pixel limit: $CRCKD_MAX_IMAGE_PIXELS when set, else `MAX_IMAGE_PIXELS`."""
    value = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not value:
        return MAX_IMAGE_PIXELS
    if not value.isdigit() or int(value) == 0:
        raise DataError(f"{PIXEL_LIMIT_ENV} must be a positive integer, got {value!r}")
    return int(value)


def allow_pixels(limit: int) -> None:
    """Let PIL open images up to `limit` pixels, so that crckd's own check (which refuses larger
    ones before decoding) decides: PIL refuses images over twice its `Image.MAX_IMAGE_PIXELS`
    while still opening them, whatever $CRCKD_MAX_IMAGE_PIXELS allows. Only ever raises PIL's
    limit, and leaves it off where it is off."""
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit


def pixel_limit_error(image: Image.Image, limit: int) -> str | None:
    """Why an opened (not yet decoded) image is refused by the pixel limit, or None."""
    width, height = image.size
    if width * height <= limit:
        return None
    return f"{width}x{height} = {width * height} pixels, over the limit of {limit}"


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image to 8-bit RGB; 16-bit grey levels are scaled, not clipped.

    32-bit integer grey levels ("I", as some Pillow versions open 16-bit PNGs) are taken as
    16-bit when they lie in 0..65535; other 32-bit and floating-point images raise ValueError
    (what their values mean is not known: save them with 8 or 16 bits).
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        grey = np.asarray(image)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise ValueError(
                f"32-bit grey levels {grey.min()}..{grey.max()} are outside 0..65535: save the "
                "image with 8 or 16 bits per channel"
            )
        image = Image.fromarray((grey.astype(np.uint16) >> 8).astype(np.uint8))
    elif image.mode == "F":
        raise ValueError("floating-point pixels: save the image with 8 or 16 bits per channel")
    return image.convert("RGB")


def open_rgb(path: str | Path | IO[bytes], max_pixels: int | None = None) -> Image.Image:
    """Open an image fully (so the file is closed) and convert it to RGB.

    An image of more than `max_pixels` (default `max_image_pixels()`) is refused before it is
    decoded; any unreadable image raises DataError naming the file.
    """
    limit = max_pixels or max_image_pixels()
    allow_pixels(limit)
    try:
        with Image.open(path) as image:
            refused = pixel_limit_error(image, limit)
            if not refused:
                image.load()
                return to_rgb(image)
    except Exception as err:  # a corrupt file can raise nearly anything inside a PIL plugin
        raise DataError(f"cannot read image {path}: {err or type(err).__name__}") from err
    raise DataError(
        f"image {path} refused: {refused} (a possible decompression bomb; "
        f"set {PIXEL_LIMIT_ENV} to allow it)"
    )


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


# --- layouts -----------------------------------------------------------------------------------


def _load_ham10000(
    root: Path,
    csv: str | Path | None,
    classes: Sequence[str] | None,
    check_files: bool,
    issues: Issues | None,
) -> ImageTable:
    _check_fixed_classes("ham10000", HAM10000_CLASSES, classes)
    csv_path, meta = _read_rows(
        root, csv, "HAM10000_metadata.csv", ("lesion_id", "image_id", "dx"), issues,
        _HAM_EXTRA_COLUMNS, unique="image_id",
    )  # fmt: skip
    labels = _lookup_labels(meta["dx"].str.lower(), HAM10000_CLASSES, csv_path, "dx", issues)
    meta, labels = _labelled(meta, labels)
    ids = meta["image_id"].tolist()
    index = _index_images(root)
    paths = _find_paths(ids, index, root, ".jpg", csv_path, check_files)
    frame = _frame(ids, paths, labels.tolist(), meta["lesion_id"].tolist())
    return ImageTable("ham10000", root, HAM10000_CLASSES, frame)


def _load_aptos(
    root: Path,
    csv: str | Path | None,
    classes: Sequence[str] | None,
    check_files: bool,
    issues: Issues | None,
) -> ImageTable:
    _check_fixed_classes("aptos", APTOS_CLASSES, classes)
    csv_path, meta = _read_rows(
        root, csv, "train.csv", ("id_code", "diagnosis"), issues, unique="id_code"
    )
    labels = _integer_labels(meta["diagnosis"], len(APTOS_CLASSES), csv_path, "diagnosis", issues)
    meta, labels = _labelled(meta, labels)
    ids = meta["id_code"].tolist()
    folder = root / "train_images"
    if check_files and not folder.is_dir():
        raise DataError(f"APTOS image folder not found: {folder} (images listed in {csv_path})")
    index = _index_images(folder, _APTOS_EXTENSIONS, recursive=False) if folder.is_dir() else {}
    paths = _find_paths(ids, index, folder, ".png", csv_path, check_files)
    frame = _frame(ids, paths, labels.tolist(), ids)
    return ImageTable("aptos", root, APTOS_CLASSES, frame, ordinal=True)


def _load_csv(
    root: Path,
    csv: str | Path | None,
    classes: Sequence[str] | None,
    check_files: bool,
    issues: Issues | None,
) -> ImageTable:
    csv_path, table = _read_rows(
        root, csv, "labels.csv", ("path", "label"), issues, ("image_id", "group"),
        unique=("image_id", "path"),
    )  # fmt: skip
    if classes is None:
        classes = _classes_from_labels(table["label"].tolist())
    else:
        classes = _check_classes(classes)
    labels = _lookup_labels(table["label"], classes, csv_path, "label", issues, by_index=True)
    table, labels = _labelled(table, labels)
    written = table["path"].tolist()
    ids = table["image_id"].tolist() if "image_id" in table else written
    paths = [str(root / p) for p in written]  # an absolute p replaces root
    if check_files:
        missing = [i for i, p in zip(ids, paths, strict=True) if not os.path.isfile(p)]
        _raise_if_missing(missing, csv_path, root)
    groups = table["group"].tolist() if "group" in table else ids
    groups = [g or i for g, i in zip(groups, ids, strict=True)]  # a blank group: its own
    return ImageTable("csv", root, classes, _frame(ids, paths, labels.tolist(), groups))


def _load_imagefolder(
    root: Path,
    csv: str | Path | None,
    classes: Sequence[str] | None,
    check_files: bool,
    issues: Issues | None,
) -> ImageTable:
    if csv is not None:
        raise DataError("the 'imagefolder' layout takes its labels from folder names, not a CSV")
    if classes is None:
        classes = tuple(sorted(e.name for e in _entries(root) if e.is_dir()))
        if not classes:
            raise DataError(f"no class subfolders in {root} (expected {root}/<class>/<image>)")
    else:
        classes = _check_classes(classes)
    ids, paths, labels = [], [], []
    for label, name in enumerate(classes):
        folder = root / name
        images = _walk_images(folder) if folder.is_dir() else []
        if not images and issues is None:  # a collector reports the class without images
            raise DataError(
                f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
                if folder.is_dir()
                else f"class folder not found: {folder}"
            )
        ids += [p.relative_to(root).as_posix() for p in images]
        paths += [str(p) for p in images]
        labels += [label] * len(images)
    return ImageTable("imagefolder", root, classes, _frame(ids, paths, labels, ids))


_LOADERS = {
    "ham10000": _load_ham10000,
    "aptos": _load_aptos,
    "csv": _load_csv,
    "imagefolder": _load_imagefolder,
}


# --- helpers -----------------------------------------------------------------------------------


def _line(position: int) -> int:
    """The CSV line of a data row (the header is line 1)."""
    return position + 2


def _csv_path(root: Path, csv: str | Path | None, default: str) -> Path:
    if csv is None:
        return root / default
    csv = Path(csv).expanduser()
    in_root = root / csv  # an absolute csv replaces root
    if in_root.is_file() or not csv.is_file():  # if neither exists, the error names root's
        return in_root
    return csv.resolve()


def _read_rows(
    root: Path,
    csv: str | Path | None,
    default_csv: str,
    required: Sequence[str],
    issues: Issues | None,
    optional: Sequence[str] = (),
    *,
    unique: str | tuple[str, str],
) -> tuple[Path, pd.DataFrame]:
    """A layout's label CSV (`csv`, else `root/default_csv`) and its rows, one per id.

    `unique` names the id column, or (preferred, fallback) when the id column is optional.
    """
    csv_path = _csv_path(root, csv, default_csv)
    frame = _read_csv(csv_path, required, issues, optional)
    if isinstance(unique, tuple):
        unique = unique[0] if unique[0] in frame else unique[1]
    return csv_path, _unique_rows(frame, unique, csv_path, issues)


def _labelled(frame: pd.DataFrame, labels: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows whose label is valid (bad ones are -1, already reported)."""
    keep = labels >= 0
    return frame[keep], labels[keep]


def _read_csv(
    path: Path,
    required: Sequence[str],
    issues: Issues | None = None,
    optional: Sequence[str] = (),
) -> pd.DataFrame:
    """Read a CSV as stripped strings (a UTF-8 BOM is allowed) and check its columns.

    With `issues`, rows with a blank required value are recorded and left out, and a BOM or
    columns outside `required` and `optional` are noted.
    """
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"cannot parse CSV file {path}: {err}") from err
    if not isinstance(frame.index, pd.RangeIndex):  # pandas took surplus fields for an index
        raise DataError(f"cannot parse CSV file {path}: rows have more fields than the header")
    frame.columns = [str(c).strip() for c in frame.columns]
    doubled = frame.columns[frame.columns.duplicated()].unique().tolist()
    if doubled:
        raise DataError(f"CSV file {path} has duplicate column(s) {', '.join(doubled)}")
    if frame.empty:
        raise DataError(f"CSV file {path} lists no images")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"CSV file {path} lacks column(s) {', '.join(missing)} "
            f"(it has: {', '.join(frame.columns)})"
        )
    frame = frame.apply(lambda column: column.str.strip())
    if issues is not None:
        _note_format(path, frame, [*required, *optional], issues)
    blank = frame[list(required)].eq("")
    rows = frame.index[blank.any(axis=1)]
    if len(rows) and issues is None:
        column = blank.columns[blank.loc[rows[0]]][0]
        raise DataError(f"{path}, line {_line(rows[0])}: column {column!r} is empty")
    if len(rows):
        issues.error(
            "blank_value",
            f"{path.name}: rows with an empty {'/'.join(required)} value, left out",
            [f"line {_line(r)}" for r in rows],
        )
    return frame.drop(index=rows)


def _note_format(path: Path, frame: pd.DataFrame, known: Sequence[str], issues: Issues) -> None:
    """Note a UTF-8 BOM (read correctly) and columns the layout does not use."""
    with path.open("rb") as handle:
        if handle.read(len(_BOM)) == _BOM:
            issues.note("csv_bom", f"{path.name} starts with a UTF-8 BOM (read correctly)")
    unused = [c for c in frame.columns if c not in known]
    if unused:
        issues.note("unused_columns", f"{path.name}: column(s) not used, ignored", unused)


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
        raise DataError(f"{path}, line {_line(bad[0])}: {column} {values[bad[0]]!r} is {expected}")
    if len(bad):
        issues.error(
            "unknown_label",
            f"{path.name}: {column} values {expected}, rows left out",
            [f"line {_line(r)}: {values[r]!r}" for r in bad],
        )


def _entries(folder: Path) -> list[os.DirEntry]:
    """Visible entries of a folder, sorted by name."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as err:
        raise DataError(f"cannot list folder {folder}: {err.strerror or err}") from err


def _iter_images(
    folder: Path, extensions: Sequence[str], recursive: bool, seen: set[str] | None = None
) -> Iterator[Path]:
    """Image files in `folder` (and below); a folder reached again (a symlink loop) is skipped."""
    seen = set() if seen is None else seen
    real = os.path.realpath(folder)
    if real in seen:
        return
    seen.add(real)
    for entry in _entries(folder):
        if entry.is_dir():
            if recursive:
                yield from _iter_images(Path(entry.path), extensions, recursive, seen)
        elif os.path.splitext(entry.name)[1].lower() in extensions:
            yield Path(entry.path)


def _walk_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in sorted order."""
    return list(_iter_images(folder, IMAGE_EXTENSIONS, recursive=True))


def _index_images(
    folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = True
) -> dict[str, Path]:
    """Map file stem -> path for the images under `folder`; the first in sorted order wins.

    One directory scan instead of a stat per candidate path; the first-wins rule makes the
    choice deterministic when a download holds the same image twice (Kaggle's HAM10000 does).
    """
    index: dict[str, Path] = {}
    for path in _iter_images(folder, extensions, recursive):
        index.setdefault(path.stem, path)
    return index


def _find_paths(
    ids: Sequence[str],
    index: dict[str, Path],
    folder: Path,
    suffix: str,
    csv_path: Path,
    check_files: bool,
) -> list[str]:
    """Absolute image paths of `ids`, looked up in `index`.

    A missing image is an error naming `folder`; with `check_files` off it gets the path
    `folder/<id><suffix>` instead, so that tests can build tables without image files.
    """
    missing = [i for i in ids if i not in index]
    if check_files:
        _raise_if_missing(missing, csv_path, folder)
    guessed = {i: folder / f"{i}{suffix}" for i in missing}
    return [str(index.get(i) or guessed[i]) for i in ids]


def _raise_if_missing(missing: Sequence[str], csv_path: Path, root: Path) -> None:
    if missing:
        raise DataError(
            f"{len(missing)} image(s) listed in {csv_path} not found under {root}: "
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
