"""Classifier construction and backbone weight loading (no downloads)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.models.densenet import DenseNet

from crckd.errors import CheckpointError, ConfigError
from crckd.models import PRETRAINED_SOURCES, Classifier, build_model, load_backbone_weights

PYPI = "efficientnet_lite0_pypi"
TINY = "test_resnet"  # timm's 0.4M-parameter ResNet, for fast file round trips


def _outputs(model: torch.nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0", "densenet121"])
def test_build_model_shapes_and_zero_biases(backbone: str) -> None:
    model = build_model(backbone, num_classes=5, drop_rate=0.2)
    assert isinstance(model, Classifier)
    out = _outputs(model, torch.randn(2, 3, 32, 32))
    assert out.features.shape == (2, 128)
    assert out.logits.shape == (2, 5)
    assert model.bottleneck.in_features == model.backbone.num_features
    assert not model.bottleneck.bias.any()
    assert not model.classifier.bias.any()
    assert model.dropout.p == 0.2


def test_logits_are_linear_in_features() -> None:
    model = build_model("resnet18", num_classes=3, feat_dim=16)
    out = _outputs(model, torch.randn(2, 3, 32, 32))
    assert out.features.shape == (2, 16)
    torch.testing.assert_close(out.logits, model.classifier(out.features))


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match=r"'resnet-18'.*resnet18"):
        build_model("resnet-18", num_classes=3)


# --- named offline source -------------------------------------------------------------------


def test_pypi_source_maps_every_tensor_by_position() -> None:
    model = build_model("efficientnet_lite0", num_classes=4, pretrained=PYPI)
    random_init = timm.create_model("efficientnet_lite0", num_classes=0).state_dict()
    source = PRETRAINED_SOURCES[PYPI]
    file_tensors = list(torch.load(source.path(), map_location="cpu", weights_only=True).values())
    loaded = model.backbone.state_dict()
    assert len(file_tensors) == len(loaded) + len(source.classifier_keys)
    for (key, tensor), expected in zip(loaded.items(), file_tensors[: len(loaded)], strict=True):
        torch.testing.assert_close(tensor, expected, rtol=0, atol=0)
        if not key.endswith("num_batches_tracked"):
            assert not torch.equal(tensor, random_init[key]), key
    stem_bn = model.backbone.bn1
    assert not torch.allclose(stem_bn.running_mean, torch.zeros_like(stem_bn.running_mean))
    assert not torch.allclose(stem_bn.running_var, torch.ones_like(stem_bn.running_var))


def test_pypi_source_classifies_a_natural_image() -> None:
    """With the ImageNet classifier kept, Grace Hopper's portrait is a 'military uniform' (652)."""
    matplotlib = pytest.importorskip("matplotlib")
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        pytest.skip("matplotlib sample image not installed")
    net = timm.create_model("efficientnet_lite0", num_classes=1000)
    load_backbone_weights(net, "efficientnet_lite0", PYPI)
    image = np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC))
    source = PRETRAINED_SOURCES[PYPI]
    x = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1) / 255
    x = (x - torch.tensor(source.mean)[:, None, None]) / torch.tensor(source.std)[:, None, None]
    assert _outputs(net, x[None]).argmax().item() == 652


def test_pypi_source_rejects_other_backbones() -> None:
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        build_model("resnet18", num_classes=3, pretrained=PYPI)


# --- local files ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["plain", "wrapped", "safetensors"])
def test_local_state_dict_round_trip(tmp_path: Path, fmt: str) -> None:
    source = build_model(TINY, num_classes=3)
    state = source.backbone.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "backbone.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "backbone.pth"
        torch.save({"state_dict": state, "epoch": 3} if fmt == "wrapped" else state, path)
    model = build_model(TINY, num_classes=3, pretrained=str(path))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_outputs(model.backbone, x), _outputs(source.backbone, x))


def test_prefixed_and_partial_state_dict_loads_with_warning(tmp_path: Path) -> None:
    """A crckd Classifier checkpoint ('backbone.' prefix, extra head tensors) still fits."""
    source = build_model(TINY, num_classes=3)
    path = tmp_path / "classifier.pt"
    torch.save({"model": source.state_dict()}, path)
    model = build_model(TINY, num_classes=3)
    with pytest.warns(UserWarning, match="4 unexpected"):
        load_backbone_weights(model.backbone, TINY, str(path))
    for key, tensor in model.backbone.state_dict().items():
        torch.testing.assert_close(tensor, source.backbone.state_dict()[key])


def test_legacy_torchvision_densenet_names(tmp_path: Path) -> None:
    """Old torchvision DenseNet files name norm1 'norm.1'; they load into timm's DenseNet."""

    def tiny_densenet() -> torch.nn.Module:
        return DenseNet(growth_rate=8, block_config=(2, 2), num_classes=0)

    source = tiny_densenet()
    state = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
        for k, v in source.state_dict().items()
    }
    assert any(".norm.1." in k for k in state)
    path = tmp_path / "densenet-legacy.pth"
    torch.save(state, path)
    model = tiny_densenet()
    load_backbone_weights(model, "densenet121", str(path))
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(_outputs(model, x), _outputs(source, x))


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=r"nope\.pth"):
        build_model(TINY, num_classes=3, pretrained=str(missing))


def test_file_matching_nothing_or_conflicting_shapes(tmp_path: Path) -> None:
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(CheckpointError, match="no tensor name matches"):
        build_model(TINY, num_classes=3, pretrained=str(unrelated))
    conflicting = tmp_path / "conflicting.pth"
    torch.save({"conv1.0.weight": torch.zeros(8, 3, 3, 3)}, conflicting)
    with pytest.raises(CheckpointError, match=r"conv1\.0\.weight"):
        build_model(TINY, num_classes=3, pretrained=str(conflicting))


# --- timm library weights (pretrained=True) -------------------------------------------------


@pytest.fixture
def empty_hub_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)


@pytest.mark.usefixtures("empty_hub_cache")
def test_library_weights_fail_fast_when_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=f"cannot download.*{PYPI}"):
        build_model(TINY, num_classes=3, pretrained=True)
    assert time.monotonic() - start < 5


@pytest.mark.usefixtures("empty_hub_cache")
def test_library_weights_fail_fast_when_hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args, **kwargs):
        raise OSError("unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="unreachable"):
        build_model(TINY, num_classes=3, pretrained=True)
    assert time.monotonic() - start < 5


def test_library_weights_come_from_the_hub_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = timm.create_model(TINY, num_classes=1000)
    cached = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(cached))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(cached))
    model = build_model(TINY, num_classes=3, pretrained=True)
    torch.testing.assert_close(model.backbone.conv1[0].weight, reference.conv1[0].weight)
