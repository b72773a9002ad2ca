"""Image files: finding them in folders, and opening them as RGB within a pixel limit."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from crckd.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

MAX_IMAGE_PIXELS = 89_478_485
"""Default pixel limit (PIL's): a larger image is refused unread, as a decompression bomb."""
PIXEL_LIMIT_ENV = "CRCKD_MAX_IMAGE_PIXELS"
"""Environment variable that overrides `MAX_IMAGE_PIXELS` (training, eval, predict, checks)."""


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named by `paths`: files as given, folders searched recursively (sorted)."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found.extend(walk_images(item))
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


def visible_entries(folder: Path) -> list[os.DirEntry]:
    """Visible entries of a folder, sorted by name."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as err:
        raise DataError(f"cannot list folder {folder}: {err.strerror or err}") from err


def walk_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in sorted order."""
    return list(_iter_images(folder, IMAGE_EXTENSIONS, recursive=True))


def index_images(
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


def _iter_images(
    folder: Path, extensions: Sequence[str], recursive: bool, seen: set[str] | None = None
) -> Iterator[Path]:
    """Image files in `folder` (and below); a folder reached again (a symlink loop) is skipped."""
    seen = set() if seen is None else seen
    real = os.path.realpath(folder)
    if real in seen:
        return
    seen.add(real)
    for entry in visible_entries(folder):
        if entry.is_dir():
            if recursive:
                yield from _iter_images(Path(entry.path), extensions, recursive, seen)
        elif os.path.splitext(entry.name)[1].lower() in extensions:
            yield Path(entry.path)
