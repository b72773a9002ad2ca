"""An opt-in cache of decoded, pre-resized images (`data.cache=true`).

Decoding a 600x450 JPEG and resizing it costs more than the network does at small image sizes,
every epoch. The cache decodes and resizes each image once into one uint8 array
(N x S x S x 3, a `.npy` file read as a memory map, so loader workers share it), reused across
epochs and runs. Its name is a hash of every source file's path, size and modification time
and of the image size: a changed source or size is a different cache, never a stale one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.transforms import Resize
from tqdm.auto import tqdm

from crckd.data.datasets import open_rgb

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """$CRCKD_CACHE_DIR, else $XDG_CACHE_HOME/crckd, else ~/.cache/crckd."""
    if "CRCKD_CACHE_DIR" in os.environ:
        return Path(os.environ["CRCKD_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "crckd"


def cache_key(paths: Sequence[str], image_size: int) -> str:
    """Hash of the sources (path, size, mtime) and the output size."""
    digest = hashlib.sha256(f"crckd-cache-{CACHE_FORMAT}-{image_size}".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"\n{path}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


class DecodedImages:
    """Images of `paths` decoded and resized to `image_size`, indexed like `paths`."""

    def __init__(self, array: np.ndarray, path: Path, positions: np.ndarray | None = None) -> None:
        self.array = array
        self.path = path
        self.positions = np.arange(len(array)) if positions is None else np.asarray(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> Image.Image:
        return Image.fromarray(np.asarray(self.array[self.positions[index]]))

    def subset(self, positions: Sequence[int] | np.ndarray) -> DecodedImages:
        """The images at `positions` (of this object), sharing the same memory map."""
        return DecodedImages(self.array, self.path, self.positions[np.asarray(positions)])

    @classmethod
    def open(
        cls,
        paths: Sequence[str],
        image_size: int,
        cache_dir: Path | None = None,
        *,
        progress: bool = True,
        workers: int | None = None,
    ) -> DecodedImages:
        """Load the cache for these sources and size, building it first if needed."""
        cache_dir = Path(cache_dir or default_cache_dir())
        target = cache_dir / f"{cache_key(paths, image_size)}-{image_size}px-{len(paths)}.npy"
        if not target.exists():
            _build(paths, image_size, target, progress=progress, workers=workers)
        return cls(np.load(target, mmap_mode="r"), target)


def _build(
    paths: Sequence[str], image_size: int, target: Path, *, progress: bool, workers: int | None
) -> None:
    """Decode every image in threads (PIL releases the GIL) and write the array atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    resize = Resize((image_size, image_size))  # the same resampling as the transforms
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".npy", dir=target.parent)
    os.close(fd)
    try:
        array = np.lib.format.open_memmap(
            tmp_name, mode="w+", dtype=np.uint8, shape=(len(paths), image_size, image_size, 3)
        )

        def decode(index: int) -> None:
            array[index] = np.asarray(resize(open_rgb(paths[index])))

        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            jobs = pool.map(decode, range(len(paths)))
            for _ in tqdm(jobs, total=len(paths), desc="caching images", disable=not progress):
                pass
        array.flush()
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
