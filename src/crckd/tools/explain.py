"""Grad-CAM overlays of a student's decision (the `grad-cam` package, MIT licence).

The target layer defaults to the last spatial feature map of the backbone family; `layer`
accepts any module name of the model (``backbone.layer3``, or ``layer3`` for short).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from crckd.data import list_images, open_rgb
from crckd.engine.inference import image_loader, load_student, resolve_device
from crckd.engine.run_folder import atomic_write_text
from crckd.errors import ConfigError, CrckdError
from crckd.models import Classifier

BACKBONE = "backbone"


class LogitsOnly(nn.Module):
    """The classifier with logits as its only output, as grad-cam expects."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def _last_child(backbone: nn.Module, name: str) -> str:
    return f"{name}.{len(getattr(backbone, name)) - 1}"


# timm class name -> the backbone's last spatial feature map (before global pooling).
_FAMILY_LAYERS = {
    "ResNet": lambda b: "layer4",
    "DenseNet": lambda b: "features.norm5",
    "EfficientNet": lambda b: "bn2",  # also timm's MobileNetV2, MNASNet, EfficientNet-Lite
    "MobileNetV3": lambda b: _last_child(b, "blocks"),  # its conv_head comes after pooling
    "ConvNeXt": lambda b: _last_child(b, "stages"),
}


def default_layer(model: Classifier) -> str:
    """The Grad-CAM layer for the model's backbone family; else its last Conv2d module."""
    backbone = model.backbone
    family = _FAMILY_LAYERS.get(type(backbone).__name__)
    if family is not None:
        return f"{BACKBONE}.{family(backbone)}"
    convs = [name for name, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(backbone).__name__} has no Conv2d layer: pass --layer")
    return f"{BACKBONE}.{convs[-1]}"


def layer_choices(model: Classifier, depth: int = 2) -> list[str]:
    """Module names down to `depth` levels below the backbone: the list an error shows."""
    return [
        f"{BACKBONE}.{name}"
        for name, _ in model.backbone.named_modules()
        if name and name.count(".") < depth
    ]


def resolve_layer(model: Classifier, name: str | None) -> tuple[str, nn.Module]:
    """The named module (the default layer when `name` is None); ConfigError listing valid ones."""
    if name is None:
        name = default_layer(model)
    modules = dict(model.named_modules())
    for candidate in (name, f"{BACKBONE}.{name}"):
        if candidate and candidate in modules:
            return candidate, modules[candidate]
    close = difflib.get_close_matches(name, list(modules), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"--layer {name!r} is not a module of this model.{hint} Valid layers include: "
        f"{', '.join(layer_choices(model))} (any name from model.named_modules() works)"
    )


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a [h, w] map in [0, 1] (resized to the image) as a jet heat map over the image."""
    heat = Image.fromarray(np.uint8(np.clip(cam, 0, 1) * 255)).resize(image.size, Image.BILINEAR)
    colour = colormaps["jet"](np.asarray(heat) / 255.0)[..., :3]
    blended = (1 - alpha) * np.asarray(image, dtype=np.float64) / 255 + alpha * colour
    return Image.fromarray(np.uint8(np.clip(blended, 0, 1) * 255))


def _overlay_names(files: Sequence[Path]) -> list[str]:
    """<stem>_gradcam.png, numbered where two images share a stem."""
    names, seen = [], set()
    for path in files:
        name, k = f"{path.stem}_gradcam.png", 1
        while name in seen:
            name, k = f"{path.stem}_{k}_gradcam.png", k + 1
        seen.add(name)
        names.append(name)
    return names


def explain_images(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    layer: str | None = None,
    target_class: str | None = None,
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Grad-CAM overlay PNG (at each image's own size) for every image under `images`.

    The map explains `target_class` when given, else each image's predicted class. Writes
    `out_dir/<stem>_gradcam.png` and `out_dir/explain.csv` (path, overlay, predicted,
    confidence, explained, layer); returns that table.
    """
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        raise CrckdError(
            "explain needs the grad-cam package: pip install 'crckd[explain]'"
        ) from None
    torch_device = resolve_device(device)
    student = load_student(checkpoint, torch_device)
    layer_name, module = resolve_layer(student.model, layer)
    if target_class is not None and target_class not in student.classes:
        raise ConfigError(f"--class {target_class!r} is not one of {list(student.classes)}")
    files = list_images(images)
    loader = image_loader(
        [str(f) for f in files], None, student.image_size, student.normalization, batch_size
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names, rows = _overlay_names(files), []
    with GradCAM(model=LogitsOnly(student.model), target_layers=[module]) as cam:
        for batch in tqdm(loader, desc="grad-cam", leave=False, disable=None if progress else True):
            x = batch["image"].to(torch_device)
            with torch.no_grad():
                probs = torch.softmax(student.model(x).logits.float(), dim=1).cpu()
            targets = (
                probs.argmax(dim=1).tolist()
                if target_class is None
                else [student.classes.index(target_class)] * len(x)
            )
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
            for i, index in enumerate(batch["index"].tolist()):
                overlay(open_rgb(files[index]), maps[i]).save(out / names[index])
                top = int(probs[i].argmax())
                rows.append(
                    {
                        "path": str(files[index]),
                        "overlay": names[index],
                        "predicted": student.classes[top],
                        "confidence": float(probs[i, top]),
                        "explained": student.classes[targets[i]],
                        "layer": layer_name,
                    }
                )
    table = pd.DataFrame(rows)
    atomic_write_text(out / "explain.csv", table.to_csv(index=False))
    return table
