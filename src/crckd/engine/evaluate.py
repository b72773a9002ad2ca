"""Inference with a trained student: probabilities, evaluation of a checkpoint, prediction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from crckd.data import (
    ImageTable,
    Normalization,
    eval_transform,
    list_images,
    load_split,
    load_table,
    split_indices,
)
from crckd.engine.checkpoint import load_checkpoint
from crckd.engine.data import make_loader
from crckd.engine.metrics import classification_metrics, per_class_table, resolve_kappa_weights
from crckd.engine.precision import Precision
from crckd.engine.run_folder import RunFolder, atomic_write_text
from crckd.errors import CheckpointError, ConfigError, DataError
from crckd.models import Classifier, build_model, input_normalization


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; other names are checked, not trusted."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device name") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but no CUDA device is available")
    return device


@dataclass(frozen=True)
class Outputs:
    """What a model gives on a whole loader, in loader order."""

    features: np.ndarray  # [N, feat_dim] bottleneck features
    probs: np.ndarray  # [N, C] softmax probabilities
    labels: np.ndarray  # [N] labels (-1 when unlabelled)


@torch.no_grad()
def run_model(
    model: Classifier,
    loader: DataLoader,
    device: torch.device,
    *,
    desc: str = "predict",
    progress: bool = True,
    precision: Precision | None = None,
) -> Outputs:
    """Features, probabilities and labels of `model` in eval mode over `loader`."""
    precision = precision or Precision(device)
    was_training = model.training
    model.eval()
    features, probs, labels = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if progress else True):
        with precision.autocast():
            output = model(precision.images(batch["image"]))
        features.append(output.features.float().cpu())
        probs.append(torch.softmax(output.logits.float(), dim=1).cpu())
        labels.append(batch["label"])
    model.train(was_training)
    if not labels:  # an empty shard: a DDP rank with no image of a split smaller than the ranks
        features.append(torch.zeros(0, model.bottleneck.out_features))
        probs.append(torch.zeros(0, model.classifier.out_features))
        labels.append(torch.zeros(0, dtype=torch.long))
    return Outputs(*(torch.cat(parts).numpy() for parts in (features, probs, labels)))


def predict_probs(
    model: Classifier,
    loader: DataLoader,
    device: torch.device,
    *,
    desc: str = "predict",
    progress: bool = True,
    precision: Precision | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities [N, C] and labels [N] of the student in eval mode."""
    outputs = run_model(model, loader, device, desc=desc, progress=progress, precision=precision)
    return outputs.probs, outputs.labels


def image_loader(
    paths: list[str],
    labels: np.ndarray | None,
    image_size: int,
    normalization: Normalization,
    batch_size: int,
) -> DataLoader:
    """An in-order evaluation loader of image files (resize and normalise, no augmentation),
    in this process: what eval, predict, report, explain and export feed a model."""
    return make_loader(
        paths,
        labels,
        eval_transform(image_size, normalization),
        batch_size=batch_size,
        shuffle=False,
        num_workers=0,
    )


def table_loader(
    table: ImageTable, positions: np.ndarray, student: LoadedStudent, batch_size: int
) -> DataLoader:
    """An evaluation loader over `positions` of `table`, transformed as `student` expects."""
    frame = table.frame.iloc[positions]
    return image_loader(
        frame["path"].tolist(),
        frame["label"].to_numpy(),
        student.image_size,
        student.normalization,
        batch_size,
    )


@dataclass(frozen=True)
class LoadedStudent:
    """A student rebuilt from a checkpoint with what is needed to feed it."""

    model: Classifier
    classes: tuple[str, ...]
    image_size: int
    normalization: Normalization
    config: dict[str, Any]


def load_student(checkpoint: str | Path, device: torch.device | None = None) -> LoadedStudent:
    """Rebuild the student of a crckd checkpoint (best.pt or last.pt), in eval mode."""
    state = load_checkpoint(checkpoint)
    config = state["config"]
    classes = tuple(state["classes"])
    model = build_model(
        config["model"]["backbone"],
        len(classes),
        pretrained=False,
        feat_dim=config["model"]["feat_dim"],
    )
    try:
        model.load_state_dict(state["student"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{checkpoint}: student weights do not fit the model ({exc})"
        ) from None
    model.to(device or torch.device("cpu")).eval()
    normalization = input_normalization(config["model"]["backbone"], config["model"]["pretrained"])
    return LoadedStudent(model, classes, int(config["data"]["image_size"]), normalization, config)


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
    """Metrics of a checkpoint on a dataset folder, written to `out_dir/metrics.json`.

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
    from crckd.engine.export import is_exported, load_exported  # export imports this module

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
