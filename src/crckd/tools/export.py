"""Ship a student: ONNX or TorchScript export, a parity check on real images, a model card.

An exported model takes a float32 batch [N, 3, S, S] (RGB, resized to S x S, scaled to [0, 1],
then normalised with the card's mean and std) and returns class **probabilities** [N, C]
(softmax over the logits, in the card's class order): the same numbers `crckd predict` writes.
The model card (`<model file>.card.json`) sits next to the model; docs/results.md lists its keys.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from crckd import __version__
from crckd.data import Normalization, list_images, sample_root
from crckd.engine.inference import LoadedStudent, image_loader, load_student, predict_probs
from crckd.engine.metrics import SCALAR_METRICS
from crckd.engine.run_folder import RunFolder, atomic_write_text
from crckd.errors import CheckpointError, ConfigError, CrckdError

CARD_FORMAT = "crckd-model-card"
CARD_FORMAT_VERSION = 1
EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"

APTOS_TERMS = (
    "APTOS 2019 Blindness Detection (Kaggle competition data), "
    "https://www.kaggle.com/c/aptos2019-blindness-detection"
)


class ParityError(CrckdError):
    """The exported model's probabilities differ from PyTorch's by more than the tolerance."""


class Probabilities(nn.Module):
    """The student with softmax probabilities as its only output: what is exported."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).logits, dim=1)


@dataclass(frozen=True)
class ExportResult:
    """The exported model, its card, and the parity check it passed."""

    model: Path
    card: Path
    max_abs_diff: float
    num_images: int


# --- model cards ---------------------------------------------------------------------------


def card_path(model_path: str | Path) -> Path:
    """Where the model card of an exported model lives: `<model file>.card.json`."""
    path = Path(model_path)
    return path.with_name(path.name + ".card.json")


def read_model_card(model_path: str | Path) -> dict[str, Any]:
    """The model card next to an exported model; CheckpointError when absent or foreign."""
    path = card_path(model_path)
    if not path.is_file():
        raise CheckpointError(
            f"{model_path}: no model card {path.name} next to it (crckd export writes one)"
        )
    card = json.loads(path.read_text(encoding="utf-8"))
    if card.get("format") != CARD_FORMAT:
        raise CheckpointError(f"{path}: not a crckd model card (no '{CARD_FORMAT}' tag)")
    return card


def training_data(dataset: str) -> dict[str, str]:
    """Name, licence and citation of the data a model was trained on."""
    if dataset == "ham10000":
        licence_text = (sample_root() / "LICENSE.txt").read_text(encoding="utf-8")
        citation = " ".join(licence_text.split("Citation:", 1)[1].split())
        return {
            "dataset": "HAM10000",
            "licence": "CC BY-NC-SA 4.0 (non-commercial use only, attribution, share alike)",
            "licence_url": "https://creativecommons.org/licenses/by-nc-sa/4.0/",
            "citation": citation,
        }
    if dataset == "aptos":
        return {
            "dataset": "APTOS 2019",
            "licence": "Kaggle competition rules: non-commercial use only",
            "citation": APTOS_TERMS,
        }
    return {
        "dataset": dataset,
        "licence": "unknown: user-supplied data; record its licence here before sharing",
        "citation": "",
    }


def _test_metrics(checkpoint: Path) -> dict[str, Any] | None:
    """Scalar and per-class test metrics from the run's metrics.json, which describe best.pt."""
    run = RunFolder(checkpoint.resolve().parent.parent)
    if checkpoint.resolve() != run.best_checkpoint.resolve() or not run.metrics.is_file():
        return None
    metrics = json.loads(run.metrics.read_text(encoding="utf-8"))
    kept = {key: metrics.get(key) for key in (*SCALAR_METRICS, "num_samples", "per_class")}
    return {"source": str(run.metrics), "split": metrics.get("split", "test"), **kept}


def model_card(
    student: LoadedStudent,
    checkpoint: Path,
    model_file: Path,
    fmt: str,
    parity: dict[str, Any],
) -> dict[str, Any]:
    """The model card of an exported student (format in docs/results.md)."""
    config = student.config
    mean, std = student.normalization
    size = student.image_size
    return {
        "format": CARD_FORMAT,
        "format_version": CARD_FORMAT_VERSION,
        "model_file": model_file.name,
        "model_format": fmt,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "channels": "RGB",
            "preprocessing": f"resize to {size}x{size} (bilinear), scale to [0, 1], then "
            "(x - mean) / std per channel",
        },
        "output": {"name": OUTPUT_NAME, "kind": "probabilities", "shape": ["batch", "classes"]},
        "classes": list(student.classes),
        "image_size": size,
        "normalization": {"mean": list(mean), "std": list(std)},
        "backbone": config["model"]["backbone"],
        "method": config["method"]["name"],
        "training_data": training_data(config["data"]["dataset"]),
        "test_metrics": _test_metrics(checkpoint),
        "parity": parity,
        "source_checkpoint": str(checkpoint),
        "crckd_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


# --- running exported models ---------------------------------------------------------------


@dataclass(frozen=True)
class ExportedModel:
    """An exported student read back with its card; `probs` mirrors `predict_probs`."""

    path: Path
    card: dict[str, Any]
    forward: Callable[[np.ndarray], np.ndarray]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.card["classes"])

    @property
    def image_size(self) -> int:
        return int(self.card["image_size"])

    @property
    def normalization(self) -> Normalization:
        norm = self.card["normalization"]
        return tuple(norm["mean"]), tuple(norm["std"])

    def probs(self, loader: DataLoader, progress: bool = True) -> np.ndarray:
        """Probabilities [N, C] for every batch of `loader`."""
        return _batched(self.forward, loader, f"predict ({self.path.name})", progress)


def _batched(
    forward: Callable[[np.ndarray], np.ndarray], loader: DataLoader, desc: str, progress: bool
) -> np.ndarray:
    batches = tqdm(loader, desc=desc, leave=False, disable=None if progress else True)
    return np.concatenate([forward(batch["image"].numpy()) for batch in batches])


def _runner(path: Path, fmt: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a float32 batch to probabilities, by onnxruntime or TorchScript (CPU)."""
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise CrckdError("ONNX models need onnxruntime: pip install 'crckd[export]'") from None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {INPUT_NAME: x.astype(np.float32)})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still shipped
        module = torch.jit.load(str(path), map_location="cpu")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x).float()).numpy()

    return run


def load_exported(path: str | Path) -> ExportedModel:
    """An exported model (ONNX or TorchScript) and the model card next to it."""
    path = Path(path)
    card = read_model_card(path)
    if not path.is_file():
        raise CheckpointError(f"exported model not found: {path}")
    if card["output"]["kind"] != "probabilities":
        raise CheckpointError(f"{path}: the card says it outputs {card['output']['kind']!r}")
    return ExportedModel(path, card, _runner(path, card["model_format"]))


def is_exported(path: str | Path) -> bool:
    """True for an exported model: an .onnx file, or any file with a model card beside it."""
    return Path(path).suffix.lower() == ".onnx" or card_path(path).is_file()


# --- export --------------------------------------------------------------------------------


def _write_model(model: nn.Module, example: torch.Tensor, path: Path, fmt: str) -> None:
    if fmt == "onnx":
        try:
            import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
        except ImportError:
            raise CrckdError(
                "ONNX export needs onnx and onnxscript: pip install 'crckd[export]'"
            ) from None
        if not {"dynamo", "external_data"} <= set(inspect.signature(torch.onnx.export).parameters):
            raise CrckdError(
                f"ONNX export needs a newer torch (tested with 2.14; this is {torch.__version__})"
            )
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still shipped
        torch.jit.save(torch.jit.trace(model, example), str(path))


def export_student(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    fmt: str = "onnx",
    images: Sequence[str | Path] | None = None,
    max_images: int = 64,
    tolerance: float = 1e-4,
    batch_size: int = 16,
    progress: bool = True,
) -> ExportResult:
    """Export the student of `checkpoint` (on the CPU) and check it against PyTorch.

    The check runs both on up to `max_images` real images (`images`, default: the shipped
    HAM10000 sample); the model is written to `out` (default: next to the checkpoint) only when
    the largest absolute difference of the probabilities is at most `tolerance`.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    checkpoint = Path(checkpoint)
    student = load_student(checkpoint, torch.device("cpu"))
    target = Path(out) if out is not None else checkpoint.with_suffix(EXPORT_FORMATS[fmt])
    files = [str(p) for p in list_images(images or [sample_root()])[:max_images]]
    loader = image_loader(files, None, student.image_size, student.normalization, batch_size)
    reference, _ = predict_probs(student.model, loader, torch.device("cpu"), progress=progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp")
    try:
        example = torch.zeros(2, 3, student.image_size, student.image_size)
        _write_model(Probabilities(student.model).eval(), example, staging, fmt)
        exported = _batched(_runner(staging, fmt), loader, f"check {fmt}", progress)
        diff = float(np.abs(exported - reference).max())
        if not diff <= tolerance:
            raise ParityError(
                f"exported {fmt} model differs from PyTorch by {diff:.2e} > {tolerance:.0e} "
                f"(max absolute difference of the probabilities on {len(files)} images)"
            )
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    parity = {
        "reference": "PyTorch (crckd predict_probs)",
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "num_images": len(files),
        "images": [str(p) for p in images] if images else "the shipped HAM10000 sample",
    }
    card = card_path(target)
    atomic_write_text(
        card, json.dumps(model_card(student, checkpoint, target, fmt, parity), indent=2) + "\n"
    )
    return ExportResult(target, card, diff, len(files))
