"""Inference with a trained student: device choice, model loading, running a model over images.

What the training runtime and the after-training tools (crckd.tools) both use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from crckd.data import ImageTable, Normalization, eval_transform
from crckd.engine.checkpoint import load_checkpoint
from crckd.engine.data import make_loader
from crckd.engine.precision import Precision
from crckd.errors import CheckpointError, ConfigError
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
