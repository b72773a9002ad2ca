"""An opt-in cache of decoded, pre-resized images (`data.cache=true`).

Decoding a 600x450 JPEG and resizing it costs more than the network does at small image sizes,
every epoch. The cache decodes and resizes each image once into one uint8 array
(N x S x S x 3, a `.npy` file read as a memory map, so loader workers share it), reused across
epochs and runs. Its name is a hash of every source file's path, size, times and inode, of the
image size and of the decoding and resizing: a changed source or size is a different cache,
never a stale one.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
from PIL import Image
from tqdm.auto import tqdm

from crckd.data.images import open_rgb
from crckd.data.transforms import resize
from crckd.errors import DataError

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """$CRCKD_CACHE_DIR, else $XDG_CACHE_HOME/crckd, else ~/.cache/crckd."""
    if "CRCKD_CACHE_DIR" in os.environ:
        return Path(os.environ["CRCKD_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "crckd"


def cache_key(paths: Sequence[str], image_size: int) -> str:
    """Hash of the sources (path, size, modification and change times, inode), the output size
    and how images are decoded and resized (the resize's settings, the Pillow version).

    Size and modification time alone miss a file replaced by one of the same size whose time
    was preserved (`cp -p`, `rsync -a`, `tar`); its inode and change time differ.
    """
    pipeline = f"{resize(image_size)!r} Pillow {PIL.__version__}"
    digest = hashlib.sha256(f"crckd-cache-{CACHE_FORMAT}-{image_size}-{pipeline}".encode())
    for path in paths:
        stat = os.stat(path)
        fields = (path, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        digest.update(("\n" + "\t".join(map(str, fields))).encode())
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

    def __getstate__(self) -> dict:
        """Pickled without the pixels: loader workers started by spawn or forkserver (the
        default on macOS, Windows and, from Python 3.14, Linux) reopen the memory map instead
        of each receiving a copy of the whole cache."""
        return {"path": self.path, "positions": self.positions}

    def __setstate__(self, state: dict) -> None:
        self.path, self.positions = state["path"], state["positions"]
        self.array = np.load(self.path, mmap_mode="r")

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
        cache_dir = Path(cache_dir or default_cache_dir()).expanduser()
        target = cache_dir / f"{cache_key(paths, image_size)}-{image_size}px-{len(paths)}.npy"
        try:
            if not target.exists():
                _build(paths, image_size, target, progress=progress, workers=workers)
            return cls(np.load(target, mmap_mode="r"), target)
        except OSError as exc:
            raise DataError(
                f"the image cache {target}: {exc.strerror or exc}; choose another folder with "
                "data.cache_dir (or $CRCKD_CACHE_DIR), or turn the cache off (data.cache=false)"
            ) from None


class JoinedImages:
    """Decoded images of several caches indexed one after the other: a training list of a
    dataset's images followed by unlabelled images from another folder, each cached apart (the
    dataset's cache stays the one a supervised run uses)."""

    def __init__(self, parts: Sequence[DecodedImages]) -> None:
        self.parts = list(parts)
        self.ends = np.cumsum([len(part) for part in self.parts])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, index: int) -> Image.Image:
        part = int(np.searchsorted(self.ends, index, side="right"))
        start = int(self.ends[part - 1]) if part else 0
        return self.parts[part][index - start]


def _build(
    paths: Sequence[str], image_size: int, target: Path, *, progress: bool, workers: int | None
) -> None:
    """Decode every image in threads (PIL releases the GIL) and write the array atomically.

    The file gets the usual permissions (0o666 less the umask), so that a cache folder shared
    by several users can be read by all of them.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(target.parent, len(paths) * image_size * image_size * 3)
    to_size = resize(image_size)
    tmp_name = target.with_name(f".{target.stem}.{os.getpid()}.{secrets.token_hex(4)}.npy")
    open(tmp_name, "xb").close()  # a name no other builder has; the umask sets its mode
    try:
        array = np.lib.format.open_memmap(
            tmp_name, mode="w+", dtype=np.uint8, shape=(len(paths), image_size, image_size, 3)
        )

        def decode(index: int) -> None:
            array[index] = np.asarray(to_size(open_rgb(paths[index])))

        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            jobs = pool.map(decode, range(len(paths)))
            for _ in tqdm(
                jobs, total=len(paths), desc="caching images", disable=None if progress else True
            ):
                pass
        array.flush()
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _check_free_space(folder: Path, needed: int) -> None:
    """Refuse to start a cache that does not fit: the array is written through a memory map,
    and a full disk there kills the process (SIGBUS) instead of raising an error."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DataError(
            f"the image cache needs {needed / 2**20:,.1f} MiB in {folder}, which has "
            f"{free / 2**20:,.1f} MiB free; set data.cache_dir to a larger disk or data.cache=false"
        )
