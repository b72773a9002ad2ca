"""The decoded-image cache: same pixels as decoding, reused, invalidated by changes."""

import errno
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST, make_colour_ham, make_ham_layout, write_image
from crckd.data import cache as cache_module
from crckd.data import eval_transform, load_table, open_rgb
from crckd.data.cache import DecodedImages
from crckd.engine import train
from crckd.errors import DataError
from crckd.methods import load_config


@pytest.fixture
def paths(tmp_path):
    root = make_ham_layout(tmp_path / "ham", n_per_class=2, size=(40, 30))
    return load_table("ham10000", root).frame["path"].tolist()


def test_cached_images_equal_decoded_and_resized_ones(paths, tmp_path):
    cache = DecodedImages.open(paths, 24, tmp_path / "cache", progress=False)
    transform = eval_transform(24)
    for i in (0, 5, len(paths) - 1):
        torch.testing.assert_close(transform(cache[i]), transform(open_rgb(paths[i])))
    assert cache.array.shape == (len(paths), 24, 24, 3)


def test_cache_is_reused_and_rebuilt_when_a_source_or_the_size_changes(paths, tmp_path):
    first = DecodedImages.open(paths, 24, tmp_path / "cache", progress=False)
    built = first.path.stat()
    again = DecodedImages.open(paths, 24, tmp_path / "cache", progress=False)
    assert again.path == first.path
    reread = again.path.stat()  # the very same file, not written again
    assert (reread.st_ino, reread.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    assert DecodedImages.open(paths, 16, tmp_path / "cache", progress=False).path != first.path
    write_image(Path(paths[0]), size=(40, 30), seed=99)
    os.utime(paths[0], ns=(1, 1))  # a different modification time, whatever the clock
    changed = DecodedImages.open(paths, 24, tmp_path / "cache", progress=False)
    assert changed.path != first.path
    assert not np.array_equal(changed.array[0], first.array[0])
    # A file replaced by another of the same size and modification time (as `cp -p` does).
    stat = os.stat(paths[1])
    replacement = Path(paths[1]).with_name("replacement.jpg")
    replacement.write_bytes(Path(paths[1]).read_bytes())  # same size
    os.replace(replacement, paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(paths[1]).st_size == stat.st_size
    assert DecodedImages.open(paths, 24, tmp_path / "cache", progress=False).path != changed.path


def test_subset_indexes_into_the_same_map(paths, tmp_path):
    cache = DecodedImages.open(paths, 24, tmp_path / "cache", progress=False)
    sub = cache.subset([3, 1])
    assert len(sub) == 2
    assert np.array_equal(np.asarray(sub[0]), cache.array[3])


def test_a_pickled_cache_reopens_the_map_instead_of_copying_the_pixels(paths, tmp_path):
    cache = DecodedImages.open(paths, 24, tmp_path / "cache", progress=False).subset([3, 1])
    pickled = pickle.dumps(cache)  # what spawn and forkserver send to each loader worker
    assert len(pickled) < cache.array.nbytes / 10
    copy = pickle.loads(pickled)
    assert isinstance(copy.array, np.memmap)
    assert len(copy) == 2
    assert np.array_equal(np.asarray(copy[0]), cache.array[3])


def test_cache_file_has_the_umask_permissions_and_a_tilde_folder_is_home(
    paths, tmp_path, monkeypatch
):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    old = os.umask(0o022)
    try:
        cache = DecodedImages.open(paths, 24, Path("~/crckd-cache"), progress=False)
    finally:
        os.umask(old)
    assert cache.path.parent == tmp_path / "home" / "crckd-cache"
    assert cache.path.stat().st_mode & 0o777 == 0o644  # others can read a shared cache


def test_a_cache_that_does_not_fit_or_cannot_be_written_is_a_data_error(
    paths, tmp_path, monkeypatch
):
    usage = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda folder: usage)
    with pytest.raises(DataError, match=r"needs 0.0 MiB in .*, which has 0.0 MiB free"):
        DecodedImages.open(paths, 24, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").iterdir())  # nothing started
    monkeypatch.undo()

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(cache_module.np, "load", refuse)
    with pytest.raises(DataError, match="Permission denied; choose another folder"):
        DecodedImages.open(paths, 24, tmp_path / "cache", progress=False)


@pytest.mark.slow
def test_training_with_the_cache_equals_training_without(tmp_path):
    root = make_colour_ham(tmp_path / "ham", n_per_class=10)
    results = {}
    for cache in (False, True):
        overrides = [
            f"data.root={root}",
            f"output_dir={tmp_path / str(cache)}",
            "train.epochs=1",
            f"data.cache={str(cache).lower()}",
            f"data.cache_dir={tmp_path / 'cache'}",
            *FAST,
        ]
        results[cache] = train(load_config(overrides=overrides)).metrics
    assert results[True]["confusion_matrix"] == results[False]["confusion_matrix"]
    assert results[True]["auc_macro"] == pytest.approx(results[False]["auc_macro"])
