"""Evaluation of a checkpoint on a dataset, and prediction of image files (`crckd eval`,
`crckd predict`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crckd.data import ImageTable, list_images, load_split, load_table, split_indices
from crckd.engine.inference import (
    image_loader,
    load_student,
    predict_probs,
    resolve_device,
    table_loader,
)
from crckd.engine.metrics import (
    classification_metrics,
    per_class_table,
    predictions_table,
    resolve_kappa_weights,
)
from crckd.engine.run_folder import RunFolder, atomic_write_text
from crckd.errors import DataError
from crckd.tools.export import is_exported, load_exported

PREDICTIONS_CSV = "predictions.csv"  # what `evaluate_checkpoint` writes beside metrics.json


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str,
    data_root: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    split_file: str | Path | None = None,
    kappa_weights: str | None = "auto",
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of a checkpoint on a dataset folder, written to `out_dir/metrics.json` (and
    `per_class.csv`), with each image's prediction in `out_dir/predictions.csv`.

    `split="all"` uses every image (an external test set); `split="test"` uses the test part of
    `split_file`, by default the split.csv of the run the checkpoint belongs to.
    """
    torch_device = resolve_device(device)
    student = load_student(checkpoint, torch_device)
    table = load_table(dataset, data_root, classes=student.classes)
    if tuple(table.classes) != student.classes:
        raise DataError(
            f"{data_root}: classes {list(table.classes)} differ from the checkpoint's "
            f"{list(student.classes)}"
        )
    positions = _positions(table, split, split_file, Path(checkpoint))
    loader = table_loader(table, positions, student, batch_size)
    probs, labels = predict_probs(
        student.model, loader, torch_device, desc="eval", progress=progress
    )
    kappa = resolve_kappa_weights(kappa_weights, table.ordinal)
    metrics = classification_metrics(labels, probs, student.classes, kappa)
    metrics["checkpoint"] = str(checkpoint)
    metrics["split"] = split
    out = RunFolder(Path(out_dir))
    out.write_metrics(metrics)
    out.write_per_class(per_class_table(metrics))
    ids = table.frame["image_id"].to_numpy()[positions]
    predictions = predictions_table(ids, labels, probs, student.classes)
    atomic_write_text(out.root / PREDICTIONS_CSV, predictions.to_csv(index=False))
    return metrics


def _positions(
    table: ImageTable, split: str, split_file: str | Path | None, checkpoint: Path
) -> np.ndarray:
    if split == "all":
        return np.arange(len(table.frame))
    path = Path(split_file) if split_file else RunFolder(checkpoint.resolve().parent.parent).split
    if not path.exists():
        raise DataError(
            f"--split {split} needs the run's split file; {path} does not exist "
            "(pass --split-file, or --split all for an external test set)"
        )
    return split_indices(load_split(path, table), table, split)


def predict_paths(
    checkpoint: str | Path,
    paths: list[str | Path],
    out_csv: str | Path,
    *,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Class probabilities and the top class for every image under `paths`, saved as CSV.

    `checkpoint` is a crckd checkpoint (best.pt, last.pt) or a model written by `crckd export`
    (ONNX or TorchScript, run on the CPU), whose model card gives classes, size and
    normalisation. Images go through the model `batch_size` at a time, with a progress bar.
    """
    exported = load_exported(checkpoint) if is_exported(checkpoint) else None
    if exported is not None:
        classes, size, normalization = exported.classes, exported.image_size, exported.normalization
    else:
        torch_device = resolve_device(device)
        student = load_student(checkpoint, torch_device)
        classes, size, normalization = student.classes, student.image_size, student.normalization
    files = [str(p) for p in list_images(paths)]
    loader = image_loader(files, None, size, normalization, batch_size)
    if exported is not None:
        probs = exported.probs(loader, progress=progress)
    else:
        probs, _ = predict_probs(student.model, loader, torch_device, progress=progress)
    frame = pd.DataFrame({"path": files})
    for c, name in enumerate(classes):
        frame[f"prob_{name}"] = probs[:, c]
    frame["predicted"] = [classes[i] for i in probs.argmax(axis=1)]
    frame["confidence"] = probs.max(axis=1)
    out_csv = Path(out_csv)
    atomic_write_text(out_csv, frame.to_csv(index=False))
    return frame
