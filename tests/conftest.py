"""Shared tiny fixtures: dataset folders of small random images, and tables without files.

The builders are plain functions so that any test can make a variant
(`from conftest import make_ham_layout`); `ham_root` and `aptos_root` are the default folders.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from crckd.cli import main
from crckd.data import APTOS_CLASSES, HAM10000_CLASSES, ImageTable
from crckd.engine.metrics import SCALAR_METRICS, classification_metrics, predictions_table
from crckd.engine.run_folder import RunFolder

HAM_PARTS = ("HAM10000_images_part_1", "HAM10000_images_part_2")


def write_image(path: Path, size: tuple[int, int] = (16, 12), seed: int = 0) -> Path:
    """Write an RGB image of random noise (width, height); the format follows the suffix."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_ham_layout(
    root: Path,
    n_per_class: int = 4,
    size: tuple[int, int] = (16, 12),
    *,
    folders: Sequence[str] = HAM_PARTS,
    encoding: str = "utf-8",
) -> Path:
    """A HAM10000 folder: HAM10000_metadata.csv and JPEGs spread over `folders` (round robin).

    Lesions hold 1, 2, 3, 1, 2, 3, ... images (cut short at a class end), so grouping matters.
    Image ids are ISIC_0000000, ISIC_0000001, ... in class order (HAM10000_CLASSES).
    """
    rows, lesion = [], 0
    for dx in HAM10000_CLASSES:
        made = 0
        while made < n_per_class:
            k = min(lesion % 3 + 1, n_per_class - made)
            for _ in range(k):
                image_id = f"ISIC_{len(rows):07d}"
                rows.append({"lesion_id": f"HAM_{lesion:07d}", "image_id": image_id, "dx": dx})
            made, lesion = made + k, lesion + 1
    meta = pd.DataFrame(rows).assign(dx_type="histo", age=50.0, sex="male", localization="back")
    root.mkdir(parents=True, exist_ok=True)
    meta.to_csv(root / "HAM10000_metadata.csv", index=False, encoding=encoding)
    for i, image_id in enumerate(meta["image_id"]):
        write_image(root / folders[i % len(folders)] / f"{image_id}.jpg", size, seed=i)
    return root


FAST = [
    "model.backbone=resnet18",
    "data.image_size=32",
    "train.batch_size=16",
    "train.progress=false",
    "method.ccd.num_negatives=32",
    "method.ccd.num_positives=4",
    "method.consistency.begin_epoch=1",
    "method.crp.begin_epoch=1",
]


def make_colour_ham(root: Path, n_per_class: int = 12) -> Path:
    """A HAM10000 folder whose classes differ in colour, so that a model can learn them fast."""
    make_ham_layout(root, n_per_class=n_per_class, size=(32, 24))
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(len(HAM10000_CLASSES), 3))
    for i, (image_id, dx) in enumerate(zip(meta["image_id"], meta["dx"], strict=True)):
        colour = palette[HAM10000_CLASSES.index(dx)]
        noise = rng.integers(-20, 21, size=(24, 32, 3))
        pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
        folder = "HAM10000_images_part_1" if i % 2 == 0 else "HAM10000_images_part_2"
        Image.fromarray(pixels).save(root / folder / f"{image_id}.jpg")
    return root


def png_header(width: int, height: int) -> bytes:
    """A valid PNG that claims `width` x `height` pixels but holds no image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))


def make_aptos_layout(
    root: Path,
    n_per_class: int = 3,
    size: tuple[int, int] = (16, 16),
    *,
    extensions: Sequence[str] = (".png", ".jpg"),
) -> Path:
    """An APTOS folder: train.csv (id_code,diagnosis) and train_images/<id_code><ext>, the
    extensions taken in turn."""
    ids = [f"{i:012x}" for i in range(len(APTOS_CLASSES) * n_per_class)]
    grades = [i // n_per_class for i in range(len(ids))]
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id_code": ids, "diagnosis": grades}).to_csv(root / "train.csv", index=False)
    for i, id_code in enumerate(ids):
        write_image(root / "train_images" / f"{id_code}{extensions[i % len(extensions)]}", size, i)
    return root


def make_imagefolder_layout(
    root: Path, classes: Sequence[str] = ("benign", "malignant"), n_per_class: int = 3
) -> Path:
    """An image folder: root/<class>/img<i>.png."""
    for c, name in enumerate(classes):
        for i in range(n_per_class):
            write_image(root / name / f"img{i}.png", seed=10 * c + i)
    return root


def make_table(
    labels: Sequence[int],
    groups: Sequence[str] | None = None,
    *,
    name: str = "csv",
    classes: Sequence[str] | None = None,
) -> ImageTable:
    """An ImageTable without image files, for split tests; groups default to one per image."""
    ids = [f"img{i:05d}" for i in range(len(labels))]
    classes = tuple(classes or (str(c) for c in range(max(labels) + 1)))
    frame = pd.DataFrame(
        {
            "image_id": ids,
            "path": [f"/nonexistent/{i}.jpg" for i in ids],
            "label": np.asarray(labels, dtype="int64"),
            "group": list(groups) if groups is not None else ids,
        }
    )
    return ImageTable(name, Path("/nonexistent"), classes, frame, ordinal=name == "aptos")


def lesion_table(class_sizes: Sequence[int], seed: int = 0) -> ImageTable:
    """A HAM-like table without files: per class, lesions of 1 to 4 images (random sizes)."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for label, n in enumerate(class_sizes):
        made = 0
        while made < n:
            k = min(int(rng.integers(1, 5)), n - made)
            labels += [label] * k
            groups += [f"L{label}_{made:05d}"] * k
            made += k
    return make_table(labels, groups, name="ham10000", classes=HAM10000_CLASSES[: len(class_sizes)])


@pytest.fixture
def ham_root(tmp_path: Path) -> Path:
    """A tiny HAM10000 folder (4 images per class, two image folders)."""
    return make_ham_layout(tmp_path / "ham10000")


@pytest.fixture
def aptos_root(tmp_path: Path) -> Path:
    """A tiny APTOS folder (3 images per grade, .png and .jpg mixed)."""
    return make_aptos_layout(tmp_path / "aptos")


@pytest.fixture(scope="session")
def ce_run(tmp_path_factory) -> Path:
    """The run folder of one short `ce` run on a colour HAM folder (`crckd train`, FAST, 1 epoch).

    Shared by every test that needs a trained checkpoint; tests must not change it (copy it).
    """
    root = make_colour_ham(tmp_path_factory.mktemp("data") / "ham")
    out = tmp_path_factory.mktemp("runs") / "ce"
    assert main(["train", f"data.root={root}", f"output_dir={out}", "train.epochs=1", *FAST]) == 0
    return out


RUN_CLASSES = ("a", "b", "c")  # the classes of `fake_run`


def fake_run(folder: Path, labels: np.ndarray, probs: np.ndarray) -> dict:
    """A finished HAM10000 run folder as `crckd compare` and the demo read it: config.yaml,
    metrics.json (computed from `probs`) and test_predictions.csv; returns the metrics."""
    run = RunFolder(folder)
    folder.mkdir(parents=True)
    run.write_config({"data": {"dataset": "ham10000"}, "train": {"kappa_weights": "auto"}})
    metrics = classification_metrics(labels, probs, RUN_CLASSES)
    run.write_metrics({**metrics, "last_epochs_mean": {k: metrics[k] for k in SCALAR_METRICS}})
    ids = [f"img{i:04d}" for i in range(len(labels))]
    run.write_test_predictions(predictions_table(ids, labels, probs, RUN_CLASSES))
    return metrics


def model_probs(rng: np.random.Generator, labels: np.ndarray, accuracy: float) -> np.ndarray:
    """Probabilities (over `RUN_CLASSES`) whose top class is the label for exactly
    round(accuracy * N) images, a random other class for the rest."""
    right = np.zeros(len(labels), bool)
    right[rng.permutation(len(labels))[: round(accuracy * len(labels))]] = True
    top = np.where(
        right, labels, (labels + rng.integers(1, len(RUN_CLASSES), len(labels))) % len(RUN_CLASSES)
    )
    probs = rng.dirichlet(np.ones(len(RUN_CLASSES)), size=len(labels)) * 0.5
    probs[np.arange(len(labels)), top] += 1.0
    return probs / probs.sum(axis=1, keepdims=True)
